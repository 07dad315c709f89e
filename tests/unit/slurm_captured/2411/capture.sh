#!/usr/bin/env bash
# capture.sh - produce the fixture files of this folder from the SLURM 24.11 cluster with accounting
# (deploy/cluster/up.sh), over ssh as its login user, with 2205's script.
# Usage: tests/unit/slurm_captured/2411/capture.sh OUTDIR
set -euo pipefail
here=$(dirname "$(realpath "$0")")
SLURM_PREFIX="ssh -F /var/run/milex-test-cluster2/ssh_config cluster2-login" CLUSTER=cluster2 ACCOUNTING=1 \
    exec "$here/../2205/capture.sh" "${1:-.}"
