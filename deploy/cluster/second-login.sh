#!/usr/bin/env bash
# second-login.sh - a second login node of a test cluster whose clusters/NAME.env names one
# (SECOND_LOGIN_NAME, SECOND_LOGIN_PREFIX): a host of its own (network namespace, hostname, mounts,
# PIDs, /tmp, an sshd with a host key of its own) on the cluster's side of the node, sharing the
# node's /home (a bind mount standing in for NFS) and its munged. SLURM's commands there reach the
# node's slurmctld and slurmdbd over the link; no SLURM daemon runs on it. With the node, it is what
# a round-robin name leads to (tests/e2e/test_login_nodes.py).
#
# Usage: second-login.sh up NAME | down NAME | exec NAME [--user USER] COMMAND...
#
# `up` is idempotent, needs the cluster up (up.sh NAME), and leaves login.env, known_hosts and
# ssh_config in /var/run/milex-test-NAME/second. The host reaches it through the node, which
# forwards between its two links (only in the node's namespace; the host's own forwarding is
# untouched). down.sh NAME takes it down first.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh source-path=SCRIPTDIR
. "$HERE/common.sh"
# shellcheck source=../close-inherited.sh source-path=SCRIPTDIR
. "$HERE/../close-inherited.sh"
ACTION=${1:?usage: second-login.sh up|down|exec NAME}
cluster_settings "${2:?usage: second-login.sh up|down|exec NAME}"
shift 2
[[ $(id -u) -eq 0 ]] || die "run as root (namespaces, chroot)"
[[ -n ${SECOND_LOGIN_NAME:-} ]] || die "clusters/$CLUSTER_NAME.env names no second login node"
LOG_NAME=$SECOND_LOGIN_NAME
L2=$STATE/second
L2_NETNS=$NETNS-b
L2_ADDR=$SECOND_LOGIN_PREFIX.2
NODE_SIDE_ADDR=$SECOND_LOGIN_PREFIX.1
VETH_NODE_SIDE=${VETH}b-node # in the node's namespace
VETH_L2=${VETH}b-login       # in the second login node's
L2_INIT=milex-${VETH#mx}b-init
L2_PIDS=$L2/pids
L2_READY=$L2/upper/var/lib/milex-cluster/ready

l2_pid() { PID_DIR=$L2_PIDS recorded_pid "$@"; } # recorded_pid, for the second login node's processes

down() {
    local pid
    if pid=$(l2_pid init "$L2_INIT"); then
        kill -TERM "$pid"
        wait_gone "$pid" 20 || log "init still runs after 20 s"
    fi
    if pid=$(l2_pid unshare unshare); then
        wait_gone "$pid" 5 || { kill -KILL "$pid"; wait_gone "$pid" 10 || die "unshare $pid survived SIGKILL"; }
    fi
    rm -f "$L2_PIDS"/*.pid
    ip route del "$SECOND_LOGIN_PREFIX.0/30" 2>/dev/null || true
    [[ ! -e /run/netns/$L2_NETNS ]] || ip netns del "$L2_NETNS" # its end of the veth pair goes with it
    if [[ -e /run/netns/$NETNS ]]; then
        ip -n "$NETNS" link del "$VETH_NODE_SIDE" 2>/dev/null || true
    fi
    rm -f "$L2_READY"
}

write_root() {
    local root=0:0 node_conf=$STATE/upper/etc/slurm/slurm.conf
    UPPER=$L2/upper
    install -d -m 0755 "$UPPER" "$L2/work" "$L2/merged"
    put 0755 "$root" "/usr/local/sbin/$L2_INIT" <"$HERE/init.sh"
    printf 'ROLE=login\nNODE_NAME=%s\nNODE_ADDR=%s\nCLUSTER_NAME=%s\nLIBMARIADB_FROM=\n' \
        "$SECOND_LOGIN_NAME" "$L2_ADDR" "$CLUSTER_NAME" | put 0600 "$root" /etc/milex-cluster.env
    # The node's slurm.conf, with accounting reached over the link (the node's says localhost).
    sed -e "s/^AccountingStorageHost=.*/AccountingStorageHost=$NODE_ADDR/" "$node_conf" |
        put 0644 "$root" /etc/slurm/slurm.conf
    sed -e "s/^ListenAddress .*/ListenAddress $L2_ADDR/" "$STATE/upper/etc/ssh/sshd_config.d/milex.conf" |
        { cat; echo "HostKey /etc/ssh/ssh_host_ed25519_key"; } | put 0644 "$root" /etc/ssh/sshd_config.d/milex.conf
    [[ -s $L2/host_key ]] || ssh-keygen -q -t ed25519 -N '' -C "$SECOND_LOGIN_NAME" -f "$L2/host_key"
    put 0600 "$root" /etc/ssh/ssh_host_ed25519_key <"$L2/host_key"
    put 0644 "$root" /etc/ssh/ssh_host_ed25519_key.pub <"$L2/host_key.pub"
    printf '127.0.0.1 localhost\n%s %s\n%s %s\n' "$NODE_ADDR" "$NODE_NAME" "$L2_ADDR" "$SECOND_LOGIN_NAME" |
        put 0644 "$root" /etc/hosts
    upper_dirs /var/lib # milex-cluster/ is made at run time: not in the root
    install -d -m 0755 "$UPPER/var/lib/milex-cluster/node-munge"
    rm -f "$L2_READY" "$L2/upper/var/lib/milex-cluster/failed"
}

start_network() {
    ip netns add "$L2_NETNS"
    ip link add "$VETH_NODE_SIDE" netns "$NETNS" type veth peer name "$VETH_L2" netns "$L2_NETNS"
    ip -n "$NETNS" addr add "$NODE_SIDE_ADDR/30" dev "$VETH_NODE_SIDE"
    ip -n "$NETNS" link set "$VETH_NODE_SIDE" up
    ip -n "$L2_NETNS" addr add "$L2_ADDR/30" dev "$VETH_L2"
    ip -n "$L2_NETNS" link set "$VETH_L2" up
    ip -n "$L2_NETNS" link set lo up
    ip -n "$L2_NETNS" route add default via "$NODE_SIDE_ADDR"
    ip netns exec "$NETNS" sysctl -q -w net.ipv4.ip_forward=1
    ip route replace "$SECOND_LOGIN_PREFIX.0/30" via "$NODE_ADDR"
}

start_init() {
    local node_init=$1
    (
        close_inherited_files
        # shellcheck disable=SC2016  # expanded by the inner sh
        # A copy of the node's mount namespace, where its root is mounted at STATE/merged: a bind
        # mount's source must be in the namespace that makes it.
        exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 setsid \
            ip netns exec "$L2_NETNS" nsenter --target "$node_init" --mount -- \
            unshare --mount --uts --pid --fork --kill-child \
            sh -c 'mount -t overlay overlay -o "lowerdir=$0,upperdir=$1/upper,workdir=$1/work" "$1/merged" &&
                mount --bind "$3/home" "$1/merged/home" &&
                mount --bind "$3/run/munge" "$1/merged/var/lib/milex-cluster/node-munge" &&
                exec chroot "$1/merged" "/usr/local/sbin/$2"' "$ROOT" "$L2" "$L2_INIT" "$STATE/merged" \
            </dev/null >"$L2/console.log" 2>&1
    ) &
    record_init "$!" "$L2_INIT" "$L2_PIDS" "$L2/console.log" "the second login node's init"
}

wait_ready() {
    local deadline=$((SECONDS + 60))
    until [[ -s $L2_READY ]]; do
        if [[ -s $L2/upper/var/lib/milex-cluster/failed ]] || ! l2_pid init "$L2_INIT" >/dev/null ||
            ((SECONDS >= deadline)); then
            tail -n 30 "$L2/upper/var/log/milex-cluster-init.log" "$L2/console.log" >&2 || true
            die "the second login node did not get ready"
        fi
        sleep 0.2
    done
}

write_access() {
    printf '%s %s\n' "$L2_ADDR" "$(cut -d' ' -f1,2 "$L2/host_key.pub")" >"$L2/known_hosts"
    cat >"$L2/login.env" <<ENV
MILEX_LOGIN_NODE=$SECOND_LOGIN_NAME
MILEX_LOGIN_HOST=$L2_ADDR
MILEX_LOGIN_KNOWN_HOSTS=$L2/known_hosts
MILEX_INIT_PID=$(<"$L2_PIDS/init.pid")
ENV
}

in_second() { # in_second [--user USER] COMMAND...: as in_cluster, on the second login node
    local user=root home=/root pid
    if [[ ${1:-} == --user ]]; then
        user=$2 home=/home/$2
        shift 2
    fi
    pid=$(l2_pid init "$L2_INIT") || die "$SECOND_LOGIN_NAME is not running (second-login.sh up $CLUSTER_NAME)"
    # shellcheck disable=SC2016  # expanded by the inner sh
    nsenter --target "$pid" --mount --uts --pid --net --root --wd -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        LC_ALL=C.UTF-8 setpriv --reuid="$user" --regid="$user" --init-groups \
        env HOME="$home" USER="$user" LOGNAME="$user" SHELL=/bin/bash PATH=/usr/local/bin:/usr/bin:/bin \
        LC_ALL=C.UTF-8 sh -c 'cd "$HOME" && exec "$@"' sh "$@"
}

case $ACTION in
    down)
        down
        log "down"
        ;;
    exec) in_second "$@" ;;
    up)
        node_init=$(recorded_pid init "$INIT_NAME") || die "$CLUSTER_NAME is not running (deploy/cluster/up.sh $CLUSTER_NAME)"
        install -d -m 0700 "$L2" "$L2_PIDS"
        exec {L2_LOCK}>"$L2/.lock"
        flock -w 120 "$L2_LOCK" || die "another second-login.sh holds $L2/.lock"
        if l2_pid init "$L2_INIT" >/dev/null && [[ -s $L2_READY ]] && in_second sinfo --noheader >/dev/null 2>&1; then
            log "up ($L2_ADDR)"
            exit 0
        fi
        down
        ROOT=$("$HERE/build-root.sh" "$CLUSTER_NAME")
        if [[ -d $L2/upper && $(cat "$L2/root.stamp" 2>/dev/null) != "$(<"$ROOT/.milex-cluster-build")" ]]; then
            rm -rf --one-file-system "$L2/upper" "$L2/work"
        fi
        cp "$ROOT/.milex-cluster-build" "$L2/root.stamp"
        write_root
        start_network
        start_init "$node_init"
        wait_ready
        write_access
        log "up ($L2_ADDR): ssh -i $(<"$STATE/client_key_path") -o UserKnownHostsFile=$L2/known_hosts $LOGIN_USER@$L2_ADDR"
        ;;
    *) die "usage: second-login.sh up|down|exec NAME" ;;
esac
