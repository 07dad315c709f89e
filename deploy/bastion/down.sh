#!/usr/bin/env bash
# down.sh - stop what deploy/bastion/up.sh started: the bastions' sshd (by their pid files), the login
# node's bastion-side sshd (inside it, if it still runs), the links and the bastions' namespaces.
# Harmless when nothing runs.
#
# Usage: down.sh [--purge]   --purge also deletes the state dir (host keys, TOTP secrets), the PAM
#                            services and the login node's bastion-side files.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh source-path=SCRIPTDIR
. "$HERE/common.sh"

PURGE=0
case ${1:-} in
    --purge) PURGE=1 ;;
    "") ;;
    *) die "usage: down.sh [--purge]" ;;
esac
[[ $(id -u) -eq 0 ]] || die "run as root"
[[ -d $BSTATE ]] || { log "no state dir $BSTATE; nothing to stop"; exit 0; }
exec {BASTION_LOCK}>"$BSTATE/.lock"
flock -w 300 "$BASTION_LOCK" || die "another up.sh/down.sh holds $BSTATE/.lock"

for name in $BASTIONS; do
    if pid=$(bastion_pid "$name"); then
        kill "$pid"
        for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
        log "bastion $name: sshd stopped"
    fi
done
cluster_settings "$BEHIND"
LOG_NAME=bastion
if recorded_pid init "$INIT_NAME" >/dev/null; then
    in_cluster sh -c "[ ! -s $LOGIN_SIDE_DIR/sshd.pid ] || kill \$(cat $LOGIN_SIDE_DIR/sshd.pid) 2>/dev/null; true"
    ip -n "$NETNS" link del mxb1-node 2>/dev/null || true
    if ((PURGE)); then
        in_cluster rm -rf "$LOGIN_SIDE_DIR" "/etc/pam.d/$LOGIN_SIDE_SERVICE" "/usr/local/sbin/$LOGIN_SIDE_SERVICE"
    fi
fi
ip link del mxba-host 2>/dev/null || true
for name in $BASTIONS; do
    netns=NETNS_$name
    [[ ! -e /run/netns/${!netns} ]] || ip netns del "${!netns}"
done
log "bastions are down"
if ((PURGE)); then
    for name in $BASTIONS; do
        service=PAM_SERVICE_$name
        rm -f "/etc/pam.d/${!service}"
    done
    rm -rf --one-file-system "$BSTATE"
    log "deleted $BSTATE"
fi
