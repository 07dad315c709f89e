# common.sh - settings and helpers shared by deploy/cluster/'s scripts (sourced, not run): the
# names, addresses and state dir of a test cluster, read from its definition in clusters/NAME.env,
# and how its recorded processes are recognised and entered.
# shellcheck shell=bash disable=SC2034  # the settings are used by the scripts that source this

CLUSTERS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/clusters
LOGIN_USER=milex-login # accounts physics and chemistry (its default: the first)
OTHER_USER=milex-other # a second user of the login node, account chemistry alone
ACCOUNTS="physics chemistry"
OTHER_ACCOUNTS="chemistry"
LOG_NAME=cluster

log() { printf '[%s %s %s] %s\n' "$LOG_NAME" "${0##*/}" "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

# cluster_settings NAME: the settings of cluster NAME (clusters/NAME.env, then what follows from them).
cluster_settings() {
    local name=$1 known=() file
    if [[ ! $name =~ ^[a-z][a-z0-9-]*$ || ! -f $CLUSTERS_DIR/$name.env ]]; then
        for file in "$CLUSTERS_DIR"/*.env; do
            file=${file##*/}
            known+=("${file%.env}")
        done
        die "no cluster '$name' (the clusters: ${known[*]})"
    fi
    # shellcheck source=clusters/cluster1.env source-path=SCRIPTDIR
    . "$CLUSTERS_DIR/$name.env" # SUITE NET_PREFIX NODE_NAME NETNS VETH CGROUP_PLUGIN LIBMARIADB_FROM
    CLUSTER_NAME=$name
    LOG_NAME=$name
    STATE=/var/run/milex-test-$name
    HOST_ADDR=$NET_PREFIX.1
    NODE_ADDR=$NET_PREFIX.2
    VETH_HOST=$VETH-host
    VETH_NODE=$VETH-node
    INIT_NAME=milex-${VETH#mx}-init # a command name of at most 15 characters: milex-c1-init
    STOP_TIMEOUT=${MILEX_TEST_CLUSTER_STOP_TIMEOUT:-60}
    PID_DIR=$STATE/pids
    UPPER=$STATE/upper # the overlay's writable layer: the cluster's changes to its root, logs included
    READY_FILE=$UPPER/var/lib/milex-cluster/ready
    FAILED_FILE=$UPPER/var/lib/milex-cluster/failed
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

# wait_gone PID SECONDS: wait until PID has exited; fails if it has not by then.
wait_gone() {
    local deadline=$((SECONDS + $2))
    while kill -0 "$1" 2>/dev/null; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# record_init UNSHARE_PID COMM PID_DIR CONSOLE WHAT: record unshare's pid and, once it runs under
# command name COMM, its child's (the namespace's process 1) in PID_DIR; dies showing CONSOLE if it
# has not within 10 s.
record_init() {
    local unshare_pid=$1 init_pid="" deadline=$((SECONDS + 10))
    printf '%s\n' "$unshare_pid" >"$3/unshare.pid"
    until [[ -n $init_pid ]] && [[ $(cat "/proc/$init_pid/comm" 2>/dev/null) == "$2" ]]; do
        ((SECONDS < deadline)) || { cat "$4" >&2; die "$5 did not start"; }
        sleep 0.1
        init_pid=$(cat "/proc/$unshare_pid/task/$unshare_pid/children" 2>/dev/null) || true
        init_pid=${init_pid%% *}
    done
    printf '%s\n' "$init_pid" >"$3/init.pid"
}

netns_exists() { [[ -e /run/netns/$NETNS ]]; }

lock_state() {
    # 0700: the upper layer holds the login node's files (homes, job output); no host user reads them.
    install -d -m 0700 "$STATE" "$PID_DIR"
    exec {STATE_LOCK}>"$STATE/.lock"
    flock -w 300 "$STATE_LOCK" || die "another up.sh/down.sh holds $STATE/.lock"
}

# in_cluster [--user USER] COMMAND...: run COMMAND in the cluster's namespaces and root, as root or
# as USER with a login environment (HOME, USER, LOGNAME, SHELL, PATH; in HOME). Returns its status.
in_cluster() {
    local pid user=root home=/root path=/usr/sbin:/usr/bin:/sbin:/bin
    if [[ ${1:-} == --user ]]; then
        user=${2:?in_cluster --user needs a user name}
        shift 2
        home=/home/$user
        path=/usr/local/bin:/usr/bin:/bin
    fi
    pid=$(recorded_pid init "$INIT_NAME") || die "$CLUSTER_NAME is not running (deploy/cluster/up.sh $CLUSTER_NAME)"
    # shellcheck disable=SC2016  # expanded by the inner sh
    nsenter --target "$pid" --mount --uts --pid --net --root --wd -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        LC_ALL=C.UTF-8 setpriv --reuid="$user" --regid="$user" --init-groups \
        env HOME="$home" USER="$user" LOGNAME="$user" SHELL=/bin/bash PATH="$path" LC_ALL=C.UTF-8 \
        sh -c 'cd "$HOME" && exec "$@"' sh "$@"
}

# Writing into a root through its overlay (ROOT: the cached root, UPPER: the writable layer).

# owner_of NAME: "uid:gid" of user NAME in the cluster's root.
owner_of() { awk -F: -v u="$1" '$1 == u { print $3 ":" $4 }' "$ROOT/etc/passwd"; }

# upper_dirs DIR: make DIR and its parents in the overlay's upper layer with the owner and mode they
# have in the root, as overlayfs shows a directory present in both layers with the upper's.
upper_dirs() {
    local rel=${1#/} path=""
    local -a parts
    IFS=/ read -ra parts <<<"$rel"
    for part in "${parts[@]}"; do
        path+=/$part
        [[ -d $UPPER$path ]] && continue
        install -d -o "$(stat -c %u "$ROOT$path")" -g "$(stat -c %g "$ROOT$path")" \
            -m "$(stat -c %a "$ROOT$path")" "$UPPER$path"
    done
}

# put MODE OWNER PATH: write stdin to PATH of the cluster's root (in the upper layer).
put() {
    upper_dirs "$(dirname "$3")"
    install -m "$1" -o "${2%:*}" -g "${2#*:}" /dev/stdin "$UPPER$3"
}
