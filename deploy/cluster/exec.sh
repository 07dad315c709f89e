#!/usr/bin/env bash
# exec.sh - run a command on a running test cluster's node (its namespaces and root), as root or as a
# user of the login node with a login environment (HOME, USER, LOGNAME, SHELL, PATH; in HOME), stdin,
# stdout and stderr passed through; exits with the command's status. For test harnesses and admins:
#   deploy/cluster/exec.sh cluster1 sacctmgr -n -P list associations
#   deploy/cluster/exec.sh cluster1 --user milex-login sbatch --parsable --wrap hostname
#   deploy/cluster/exec.sh cluster1 sh -c 'kill -STOP $(pidof slurmctld)'
#
# Usage: exec.sh NAME [--user USER] COMMAND...   Needs root.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh source-path=SCRIPTDIR
. "$HERE/common.sh"
cluster_settings "${1:?usage: exec.sh NAME [--user USER] COMMAND...}"
shift
[[ $(id -u) -eq 0 ]] || die "run as root (nsenter)"
user=()
if [[ ${1:-} == --user ]]; then
    user=(--user "${2:?exec.sh: --user needs a user name}")
    shift 2
fi
(($#)) || die "usage: exec.sh NAME [--user USER] COMMAND..."
in_cluster "${user[@]}" "$@"
