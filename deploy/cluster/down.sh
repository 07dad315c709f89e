#!/usr/bin/env bash
# down.sh - stop a test cluster that up.sh started, by the pids and names up.sh recorded:
# SIGTERM to the cluster's init (which stops its daemons and kills what is left in its PID
# namespace), SIGKILL to unshare after MILEX_TEST_CLUSTER_STOP_TIMEOUT seconds (60) if it is still
# there (its child, process 1, dies with it, and the namespace's processes with that), then the
# veth pair and the network namespace. The overlay mount lives in the cluster's own mount namespace
# and goes with it. Harmless when nothing runs.
#
# Usage: down.sh NAME [--purge]   --purge also deletes the state dir: the cluster's database, job state,
#                                 logs and home directories start afresh (the cached root stays).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh source-path=SCRIPTDIR
. "$HERE/common.sh"

PURGE=0
NAME=
for arg in "$@"; do
    case $arg in
        --purge) PURGE=1 ;;
        -h | --help)
            sed -n '2,/^set /s/^# \{0,1\}//p' "$0" | sed '$d'
            exit 0
            ;;
        -*) die "unknown argument: $arg" ;;
        *)
            [[ -z $NAME ]] || die "one cluster at a time (got $NAME and $arg)"
            NAME=$arg
            ;;
    esac
done
cluster_settings "${NAME:?usage: down.sh NAME [--purge]}"
[[ $(id -u) -eq 0 ]] || die "run as root"
[[ -d $STATE ]] || { log "no state dir $STATE; nothing to stop"; exit 0; }
# up.sh calls this with the lock already held.
[[ ${MILEX_TEST_CLUSTER_LOCKED:-} == 1 ]] || lock_state

if [[ -n ${SECOND_LOGIN_NAME:-} ]]; then # first: it holds the node's /home and munge socket
    "$HERE/second-login.sh" down "$CLUSTER_NAME"
fi
if init_pid=$(recorded_pid init "$INIT_NAME"); then
    log "stopping the cluster (init pid $init_pid)"
    kill -TERM "$init_pid"
    wait_gone "$init_pid" "$STOP_TIMEOUT" || log "init still runs after ${STOP_TIMEOUT}s"
fi
if unshare_pid=$(recorded_pid unshare unshare); then
    wait_gone "$unshare_pid" 5 || {
        log "killing unshare (pid $unshare_pid) and with it the cluster's PID namespace"
        kill -KILL "$unshare_pid"
        wait_gone "$unshare_pid" 10 || die "unshare $unshare_pid survived SIGKILL"
    }
fi
rm -f "$PID_DIR/init.pid" "$PID_DIR/unshare.pid"

if [[ -s $STATE/names ]]; then
    # shellcheck source=/dev/null
    . "$STATE/names" # NETNS VETH_HOST as up.sh created them
    if ip link show "$VETH_HOST" >/dev/null 2>&1; then
        ip link del "$VETH_HOST"
    fi
    if netns_exists; then
        ip netns del "$NETNS"
    fi
    rm -f "$STATE/names"
fi
rm -f "$READY_FILE" "$FAILED_FILE"
log "$CLUSTER_NAME is down"
if ((PURGE)); then
    rm -rf --one-file-system "$STATE"
    log "deleted $STATE"
fi
