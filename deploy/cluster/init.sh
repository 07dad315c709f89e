#!/bin/bash
# init.sh - process 1 of a test cluster's PID namespace (up.sh copies it into the cluster's root as
# /usr/local/sbin/milex-cN-init): mounts the kernel file systems, names the host, starts
# munged, MariaDB, slurmdbd, slurmctld, slurmd, cron and sshd, creates the accounting cluster, accounts
# and users, reaps every orphan (finished slurmstepds among them), and on SIGTERM stops the
# daemons in reverse order and kills what remains. Reads its settings from /etc/milex-cluster.env.
set -uo pipefail

# shellcheck source=/dev/null
. /etc/milex-cluster.env # NODE_NAME NODE_ADDR CLUSTER_NAME LOGIN_USER ACCOUNTS OTHER_USER OTHER_ACCOUNTS
# DB_PASSWORD LIBMARIADB_FROM, and ROLE=login on a second login node
READY=/var/lib/milex-cluster/ready
FAILED=/var/lib/milex-cluster/failed
LOG=/var/log/milex-cluster-init.log
STOP_TIMEOUT=15
# The libmariadb3 slurmdbd loads: the system's, or another suite's that build-root.sh unpacked (see
# clusters/*.env, LIBMARIADB_FROM).
MARIADB_LIBS=
if [[ -n $LIBMARIADB_FROM ]]; then
    MARIADB_LIBS=$(echo "/opt/$LIBMARIADB_FROM-libmariadb"/usr/lib/*-linux-gnu)
fi
declare -a NAMES=() PIDS=()

log() { printf '[init %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

fail() {
    log "ERROR: $*"
    printf '%s\n' "$*" >"$FAILED"
    stop_all
    exit 1
}

mount_kernel_fs() {
    mount -t proc proc /proc
    mount -t sysfs -o ro sysfs /sys
    mount -t tmpfs -o mode=0755,size=64m tmpfs /run
    mount -t tmpfs -o mode=0755,size=1m tmpfs /dev
    local spec name major minor
    for spec in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
        IFS=: read -r name major minor <<<"$spec"
        mknod -m 0666 "/dev/$name" c "$major" "$minor"
    done
    mkdir -m 0755 /dev/pts /dev/shm
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts /dev/pts
    ln -s pts/ptmx /dev/ptmx
    mount -t tmpfs -o mode=1777,size=64m tmpfs /dev/shm
    ln -s /proc/self/fd /dev/fd
    echo "$NODE_NAME" >/proc/sys/kernel/hostname
}

# start NAME COMMAND...: run a daemon in the foreground as a child of this init.
start() {
    local name=$1
    shift
    "$@" >>"/var/log/milex-cluster-$name.out" 2>&1 &
    NAMES+=("$name")
    PIDS+=("$!")
    log "started $name (pid $!)"
}

# wait_for WHAT COMMAND...: poll COMMAND for up to 60 s, giving up early if a daemon died.
wait_for() {
    local what=$1 deadline=$((SECONDS + 60)) i
    shift
    until "$@" >/dev/null 2>&1; do
        for i in "${!PIDS[@]}"; do
            kill -0 "${PIDS[i]}" 2>/dev/null || fail "${NAMES[i]} exited while waiting for $what"
        done
        ((SECONDS < deadline)) || fail "timed out waiting for $what"
        sleep 0.2
    done
    log "$what: ok"
}

stop_all() {
    local i deadline
    rm -f "$READY"
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[i]}" 2>/dev/null || continue
        deadline=$((SECONDS + STOP_TIMEOUT))
        while kill -0 "${PIDS[i]}" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 0.2
        done
        log "stopped ${NAMES[i]}"
    done
    kill -KILL -1 2>/dev/null # jobs, slurmstepds and whatever else is left in the namespace
    wait
}

sql_ready() { mariadb-admin --protocol=socket ping; }
dbd_ready() { sacctmgr -n -P list cluster format=cluster; }
ctld_ready() { scontrol ping | grep -q 'is UP'; }
node_ready() { [[ $(sinfo -h -n "$NODE_NAME" -o %T) == idle ]]; }

setup_database() {
    mariadb --protocol=socket <<SQL || fail "could not create the database user slurm"
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL
}

# add_user USER ACCOUNT...: USER in each ACCOUNT (the first is its default), unless it is already.
add_user() {
    local user=$1 account
    shift
    for account in "$@"; do
        grep -q "^$CLUSTER_NAME|$account|$user$" <<<"$have" ||
            sacctmgr -i add user "$user" account="$account" cluster="$CLUSTER_NAME" ||
            fail "add user $user to $account"
    done
}

# The accounting world: the cluster, the accounts, the login users in theirs.
setup_accounting() {
    local have account
    have=$(sacctmgr -n -P list associations format=cluster,account,user) || fail "sacctmgr list failed"
    grep -q "^$CLUSTER_NAME|root|" <<<"$have" || sacctmgr -i add cluster "$CLUSTER_NAME" ||
        fail "sacctmgr add cluster failed"
    for account in $ACCOUNTS; do
        grep -q "^$CLUSTER_NAME|$account|$" <<<"$have" ||
            sacctmgr -i add account "$account" cluster="$CLUSTER_NAME" || fail "add account $account"
    done
    # shellcheck disable=SC2086  # the lists of accounts are split into words
    add_user "$LOGIN_USER" $ACCOUNTS
    # shellcheck disable=SC2086
    add_user "$OTHER_USER" $OTHER_ACCOUNTS
    log "accounting: $(sacctmgr -n -P list associations format=account,user | tr '\n' ' ')"
}

main() {
    mount_kernel_fs
    install -d -m 0755 /var/lib/milex-cluster
    rm -f "$READY" "$FAILED"
    trap 'log "SIGTERM: stopping"; stop_all; log "stopped"; exit 0' TERM
    trap 'fail "SIGINT"' INT
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o mysql -g mysql -m 0755 /run/mysqld
    install -d -o slurm -g slurm -m 0755 /run/slurm /var/log/slurm /var/lib/slurm/slurmctld
    install -d -m 0755 /run/sshd /var/lib/slurm/slurmd

    start munged runuser -u munge -- /usr/sbin/munged --foreground
    wait_for munge sh -c 'munge -n | unmunge'
    start mariadb /usr/sbin/mariadbd --user=mysql --skip-networking
    wait_for mariadb sql_ready
    setup_database
    start slurmdbd env ${MARIADB_LIBS:+LD_LIBRARY_PATH="$MARIADB_LIBS"} /usr/sbin/slurmdbd -D
    wait_for slurmdbd dbd_ready
    setup_accounting
    start slurmctld /usr/sbin/slurmctld -D
    wait_for slurmctld ctld_ready
    start slurmd /usr/sbin/slurmd -D
    wait_for "node $NODE_NAME idle" node_ready
    serve_logins
}

# serve_logins: start cron (users' crontabs: the Milex agent's watchdog) and sshd, say ready, then reap
# until SIGTERM.
serve_logins() {
    start cron /usr/sbin/cron -f
    start sshd /usr/sbin/sshd -D -e
    wait_for sshd bash -c "exec 3<>/dev/tcp/$NODE_ADDR/22"
    date +%s >"$READY"
    log "ready"
    # Sleep in the background so SIGTERM is handled at once; bash reaps every exited child,
    # orphans reparented to process 1 included, whenever it gets SIGCHLD.
    while :; do
        sleep 3600 &
        wait $!
    done
}

# A second login node (second-login.sh; ROLE=login): no daemon of SLURM's own, only sshd. Its home is
# the node's (bind-mounted before the chroot), and so is munged, whose socket directory waits at
# /var/lib/milex-cluster/node-munge until /run exists.
login_main() {
    mount_kernel_fs
    install -d -m 0755 /var/lib/milex-cluster /run/munge /run/sshd
    rm -f "$READY" "$FAILED"
    trap 'log "SIGTERM: stopping"; stop_all; log "stopped"; exit 0' TERM
    mount --bind /var/lib/milex-cluster/node-munge /run/munge || fail "no munge socket of the node"
    wait_for "the node's munge" sh -c 'munge -n | unmunge'
    wait_for "the node's slurmctld" ctld_ready
    serve_logins
}

if [[ ${ROLE:-node} == login ]]; then
    login_main >>"$LOG" 2>&1
else
    main >>"$LOG" 2>&1
fi
