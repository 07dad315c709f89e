# common.sh - settings and helpers shared by deploy/cluster/up.sh and down.sh (sourced, not run):
# the state dir, the names and addresses of the second test cluster, and how its recorded
# processes are recognised.
# shellcheck shell=bash disable=SC2034  # the settings are used by the scripts that source this

STATE=${MILEX_CLUSTER2_STATE:-/var/run/milex-test-cluster2}
NETNS=${MILEX_CLUSTER2_NETNS:-milex-cluster2}
# A /30 of its own: the host's end of the veth pair is .1, the cluster (its login node) is .2.
NET_PREFIX=${MILEX_CLUSTER2_NET:-10.77.0}
HOST_ADDR=$NET_PREFIX.1
NODE_ADDR=$NET_PREFIX.2
VETH_HOST=${MILEX_CLUSTER2_VETH:-mxc2-host}
VETH_NODE=mxc2-node
NODE_NAME=login2
CLUSTER_NAME=cluster2
LOGIN_USER=milex-login
ACCOUNTS="physics chemistry"
INIT_NAME=milex-c2-init
STOP_TIMEOUT=${MILEX_CLUSTER2_STOP_TIMEOUT:-60}

PID_DIR=$STATE/pids
UPPER=$STATE/upper # the overlay's writable layer: the cluster's changes to its root, logs included
READY_FILE=$UPPER/var/lib/milex-cluster2/ready
FAILED_FILE=$UPPER/var/lib/milex-cluster2/failed

log() { printf '[cluster2 %s %s] %s\n' "${0##*/}" "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

# recorded_pid NAME COMM: the pid recorded as NAME if that process still runs under command name
# COMM (so a pid reused by another process is never taken for ours); fails otherwise.
recorded_pid() {
    local file=$PID_DIR/$1.pid pid
    [[ -s $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]] || return 1
    printf '%s\n' "$pid"
}

netns_exists() { [[ -e /run/netns/$NETNS ]]; }

lock_state() {
    # 0700: the upper layer holds the login node's files (homes, job output); no host user reads them.
    install -d -m 0700 "$STATE" "$PID_DIR"
    exec {STATE_LOCK}>"$STATE/.lock"
    flock -w 300 "$STATE_LOCK" || die "another up.sh/down.sh holds $STATE/.lock"
}

# in_cluster COMMAND...: run COMMAND in the cluster's namespaces and root, as root.
in_cluster() {
    local pid
    pid=$(recorded_pid init "$INIT_NAME") || die "the cluster's init is not running"
    nsenter --target "$pid" --mount --uts --pid --net --root --wd -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LC_ALL=C.UTF-8 "$@"
}
