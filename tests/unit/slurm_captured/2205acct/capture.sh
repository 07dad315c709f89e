#!/usr/bin/env bash
# capture.sh - produce the fixture files of this folder from the SLURM 22.05 cluster with accounting
# (cluster1 of deploy/cluster/up.sh), over ssh as its login user, with 2205's script.
# Usage: tests/unit/slurm_captured/2205acct/capture.sh OUTDIR
set -euo pipefail
here=$(dirname "$(realpath "$0")")
SLURM_PREFIX="ssh -F /var/run/milex-test-cluster1/ssh_config cluster1-login" CLUSTER=cluster1 ACCOUNTING=1 \
    exec "$here/../2205/capture.sh" "${1:-.}"
