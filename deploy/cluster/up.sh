#!/usr/bin/env bash
# up.sh - start a test cluster (clusters/NAME.env): its Debian suite's SLURM with slurmdbd accounting, on
# a single node that is also its login node, a host of its own: a network namespace (address
# NET_PREFIX.2, the host's end NET_PREFIX.1), its own hostname, mounts and PIDs, and the root file
# system of build-root.sh under an overlay whose writable layer is in the state dir (the cached root
# is never written to).
#
# Usage: up.sh NAME      (cluster1: Debian 12, SLURM 22.05; cluster2: Debian 13, SLURM 24.11)
#
# Idempotent: when the cluster runs, it prints its state and exits 0; remains of a stopped or
# failed one are torn down first (down.sh). Needs root. On success the state dir
# /var/run/milex-test-NAME holds login.env, ssh_config (Host NAME-login) and known_hosts.
#
# Environment (all optional):
#   MILEX_TEST_CLUSTER_AUTHORIZED_KEY  public key file the login users authorise; without it, up.sh
#                                      makes a key pair in the state dir (client_key)
#   MILEX_TEST_CLUSTER_CACHE           build-root.sh's cache            [/var/cache/milex-test-roots]
#   MILEX_TEST_CLUSTER_CPUS, _MEM_MB   what the node advertises         [8, 8000]
#   MILEX_TEST_CLUSTER_MIN_JOB_AGE     slurm.conf's MinJobAge (s)       [30]
#   MILEX_TEST_CLUSTER_TIMEOUT         seconds to wait for the cluster  [120]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh source-path=SCRIPTDIR
. "$HERE/common.sh"
# shellcheck source=../close-inherited.sh source-path=SCRIPTDIR
. "$HERE/../close-inherited.sh"
cluster_settings "${1:?usage: up.sh NAME}"
CPUS=${MILEX_TEST_CLUSTER_CPUS:-8}
MEM_MB=${MILEX_TEST_CLUSTER_MEM_MB:-8000}
# Finished jobs leave squeue MinJobAge to MinJobAge + min(60, max(10, MinJobAge)) s after their end
# (deploy/README.md): 30 to 60 s here.
MIN_JOB_AGE=${MILEX_TEST_CLUSTER_MIN_JOB_AGE:-30}
TIMEOUT=${MILEX_TEST_CLUSTER_TIMEOUT:-120}
T_START=$SECONDS

[[ $(id -u) -eq 0 ]] || die "run as root (namespaces, chroot)"

ssh_line() {
    printf 'ssh -i %s -o UserKnownHostsFile=%s %s@%s\n' "$(<"$STATE/client_key_path")" \
        "$STATE/known_hosts" "$LOGIN_USER" "$NODE_ADDR"
}

print_state() {
    in_cluster sinfo -N -o '%N %T %C %m' >&2
    in_cluster sacctmgr -n -P list associations format=cluster,account,user >&2
    log "login node: $(ssh_line)"
    log "or: ssh -F $STATE/ssh_config $CLUSTER_NAME-login; settings for tests in $STATE/login.env"
}

# fill: a template on stdin, its @NAME@ placeholders replaced.
fill() {
    sed -e "s/@CLUSTER_NAME@/$CLUSTER_NAME/g; s/@NODE_NAME@/$NODE_NAME/g; s/@NODE_ADDR@/$NODE_ADDR/g" \
        -e "s/@CPUS@/$CPUS/g; s/@MEM_MB@/$MEM_MB/g; s/@MIN_JOB_AGE@/$MIN_JOB_AGE/g" \
        -e "s/@LOGIN_USER@/$LOGIN_USER/g; s/@OTHER_USER@/$OTHER_USER/g; s/@DB_PASSWORD@/$DB_PASSWORD/g"
}

client_key() {
    local key=${MILEX_TEST_CLUSTER_AUTHORIZED_KEY:-}
    if [[ -z $key ]]; then
        key=$STATE/client_key.pub
        [[ -s $key ]] || ssh-keygen -q -t ed25519 -N '' -C "milex-$CLUSTER_NAME-client" -f "$STATE/client_key"
    fi
    [[ -s $key ]] || die "MILEX_TEST_CLUSTER_AUTHORIZED_KEY=$key: no such public key file"
    printf '%s\n' "${key%.pub}" >"$STATE/client_key_path"
    cat "$key"
}

# authorize USER: the client key in USER's authorized_keys.
authorize() {
    local owner
    owner=$(owner_of "$1")
    upper_dirs "/home/$1"
    install -d -m 0700 -o "${owner%:*}" -g "${owner#*:}" "$UPPER/home/$1/.ssh"
    client_key | put 0600 "$owner" "/home/$1/.ssh/authorized_keys"
}

write_config() {
    local slurm root=0:0
    slurm=$(owner_of slurm)
    [[ -s $STATE/db_password ]] || od -An -N12 -tx1 /dev/urandom | tr -d ' \n' >"$STATE/db_password"
    DB_PASSWORD=$(<"$STATE/db_password")
    install -d -m 0755 "$UPPER" "$STATE/work" "$STATE/merged"
    put 0755 "$root" "/usr/local/sbin/$INIT_NAME" <"$HERE/init.sh"
    put 0600 "$root" /etc/milex-cluster.env <<ENV
NODE_NAME=$NODE_NAME
NODE_ADDR=$NODE_ADDR
CLUSTER_NAME=$CLUSTER_NAME
LOGIN_USER=$LOGIN_USER
ACCOUNTS="$ACCOUNTS"
OTHER_USER=$OTHER_USER
OTHER_ACCOUNTS="$OTHER_ACCOUNTS"
DB_PASSWORD=$DB_PASSWORD
LIBMARIADB_FROM=$LIBMARIADB_FROM
ENV
    fill <"$HERE/slurm.conf.in" | put 0644 "$root" /etc/slurm/slurm.conf
    {
        printf '# cgroup.conf of %s, written by deploy/cluster/up.sh: CGROUP_PLUGIN of clusters/%s.env\n' \
            "$CLUSTER_NAME" "$CLUSTER_NAME"
        [[ -z $CGROUP_PLUGIN ]] || printf 'CgroupPlugin=%s\n' "$CGROUP_PLUGIN"
    } | put 0644 "$root" /etc/slurm/cgroup.conf
    fill <"$HERE/slurmdbd.conf.in" | put 0600 "$slurm" /etc/slurm/slurmdbd.conf
    fill <"$HERE/sshd_config.in" | put 0644 "$root" /etc/ssh/sshd_config.d/milex.conf
    printf '127.0.0.1 localhost\n%s %s\n' "$NODE_ADDR" "$NODE_NAME" | put 0644 "$root" /etc/hosts
    authorize "$LOGIN_USER"
    authorize "$OTHER_USER"
    rm -f "$READY_FILE" "$FAILED_FILE"
}

start_network() {
    if ip -4 -o addr show | grep -q " inet $NET_PREFIX\."; then
        die "$NET_PREFIX.0/30 is in use on this host; choose another in clusters/$CLUSTER_NAME.env"
    fi
    printf 'NETNS=%s\nVETH_HOST=%s\n' "$NETNS" "$VETH_HOST" >"$STATE/names"
    ip netns add "$NETNS"
    ip link add "$VETH_HOST" type veth peer name "$VETH_NODE" netns "$NETNS"
    ip addr add "$HOST_ADDR/30" dev "$VETH_HOST"
    ip link set "$VETH_HOST" up
    ip -n "$NETNS" addr add "$NODE_ADDR/30" dev "$VETH_NODE"
    ip -n "$NETNS" link set "$VETH_NODE" up
    ip -n "$NETNS" link set lo up
}

# The cluster's process 1 is the child of unshare; the overlay is mounted in the new mount
# namespace only, so it goes away with the cluster's last process.
start_init() {
    local unshare_pid init_pid
    (
        close_inherited_files
        # shellcheck disable=SC2016  # expanded by the inner sh
        exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 setsid \
            ip netns exec "$NETNS" unshare --mount --uts --pid --fork --kill-child \
            sh -c 'mount -t overlay overlay -o "lowerdir=$0,upperdir=$1/upper,workdir=$1/work" "$1/merged" &&
                exec chroot "$1/merged" "/usr/local/sbin/$2"' "$ROOT" "$STATE" "$INIT_NAME" \
            </dev/null >"$STATE/console.log" 2>&1
    ) &
    unshare_pid=$!
    record_init "$unshare_pid" "$INIT_NAME" "$PID_DIR" "$STATE/console.log" "the cluster's init"
    init_pid=$(<"$PID_DIR/init.pid")
    log "init runs as pid $init_pid (unshare $unshare_pid) in netns $NETNS"
}

wait_ready() {
    local deadline=$((SECONDS + TIMEOUT))
    until [[ -s $READY_FILE ]]; do
        if [[ -s $FAILED_FILE ]] || ! recorded_pid init "$INIT_NAME" >/dev/null || ((SECONDS >= deadline)); then
            tail -n 30 "$UPPER/var/log/milex-cluster-init.log" "$STATE/console.log" >&2 || true
            return 1
        fi
        sleep 0.2
    done
}

# A job submitted over ssh as the login user, if up.sh holds the private key; through the
# namespaces otherwise. Waits for sacct to report it COMPLETED.
smoke_job() {
    local key id state="" deadline=$((SECONDS + 30))
    key=$(<"$STATE/client_key_path")
    local -a run=(in_cluster runuser -u "$LOGIN_USER" --)
    if [[ -r $key ]]; then
        run=(ssh -F "$STATE/ssh_config" -o BatchMode=yes "$CLUSTER_NAME-login")
    fi
    id=$("${run[@]}" sbatch --parsable --output=/dev/null --wrap true) || return 1
    until [[ $state == COMPLETED ]]; do
        if [[ $state =~ ^(FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL) ]] || ((SECONDS >= deadline)); then
            log "smoke job $id: state '$state'"
            return 1
        fi
        sleep 0.2
        state=$("${run[@]}" sacct -n -X -P -j "$id" -o State)
    done
    log "smoke job $id COMPLETED (${run[0]}); sacct answers"
}

# What a test or a user needs to reach the login node: an ssh config entry (before the smoke job,
# which uses it) and a sourceable file (once the cluster is up).
write_ssh_config() {
    cat >"$STATE/ssh_config" <<CONFIG
Host $CLUSTER_NAME-login
    HostName $NODE_ADDR
    Port 22
    User $LOGIN_USER
    IdentityFile $(<"$STATE/client_key_path")
    IdentitiesOnly yes
    UserKnownHostsFile $STATE/known_hosts
    StrictHostKeyChecking yes
CONFIG
}

write_login_env() {
    local version
    version=$(in_cluster sinfo --version | awk '{ print $2 }')
    cat >"$STATE/login.env.new" <<ENV
MILEX_CLUSTER_NAME=$CLUSTER_NAME
MILEX_LOGIN_HOST=$NODE_ADDR
MILEX_LOGIN_PORT=22
MILEX_LOGIN_USER=$LOGIN_USER
MILEX_LOGIN_OTHER_USER=$OTHER_USER
MILEX_LOGIN_IDENTITY=$(<"$STATE/client_key_path")
MILEX_LOGIN_KNOWN_HOSTS=$STATE/known_hosts
MILEX_CLUSTER_ACCOUNTS="$ACCOUNTS"
MILEX_SLURM_VERSION=$version
MILEX_INIT_PID=$(<"$PID_DIR/init.pid")
ENV
    mv "$STATE/login.env.new" "$STATE/login.env"
}

lock_state
# Up means answering: a cluster whose processes run but whose munged or slurmctld died (a `pkill
# munged` on the host reaches into the namespace) is started again.
if recorded_pid unshare unshare >/dev/null && recorded_pid init "$INIT_NAME" >/dev/null && [[ -s $READY_FILE ]] &&
    in_cluster sinfo --noheader >/dev/null 2>&1; then
    log "$CLUSTER_NAME is up"
    print_state
    exit 0
fi
if recorded_pid unshare unshare >/dev/null || netns_exists || ip link show "$VETH_HOST" >/dev/null 2>&1; then
    log "remains of an earlier start: tearing them down first"
    MILEX_TEST_CLUSTER_LOCKED=1 "$HERE/down.sh" "$CLUSTER_NAME"
fi
ROOT=$("$HERE/build-root.sh" "$CLUSTER_NAME")
T_ROOT=$SECONDS
# An upper layer made over another build of the root would mix two installations: start afresh.
if [[ -d $UPPER && $(cat "$STATE/root.stamp" 2>/dev/null) != "$(<"$ROOT/.milex-cluster-build")" ]]; then
    log "the root was rebuilt: a fresh upper layer (database, job ids and homes start afresh)"
    rm -rf --one-file-system "$UPPER" "$STATE/work"
fi
cp "$ROOT/.milex-cluster-build" "$STATE/root.stamp"
write_config
printf '%s %s\n' "$NODE_ADDR" "$(cut -d' ' -f1,2 "$ROOT/etc/ssh/ssh_host_ed25519_key.pub")" >"$STATE/known_hosts"
started=0
trap '((started)) || { log "start failed: tearing down"; MILEX_TEST_CLUSTER_LOCKED=1 "$HERE/down.sh" "$CLUSTER_NAME"; }' EXIT
rm -f "$STATE/login.env" # written again once the cluster is up
write_ssh_config
start_network
start_init
wait_ready || die "the cluster did not become ready (logs in $UPPER/var/log)"
log "daemons up $((SECONDS - T_ROOT)) s after launch"
smoke_job || die "the smoke job failed"
# shellcheck disable=SC2034  # read by the EXIT trap
started=1
write_login_env
log "$CLUSTER_NAME up in $((SECONDS - T_START)) s ($((SECONDS - T_ROOT)) s from a built root)"
log "known_hosts line: $(<"$STATE/known_hosts")"
print_state
