#!/usr/bin/env bash
# up.sh - the test world's bastion hosts: two jump hosts, a and b, each a network namespace of its
# own with its own sshd and host key, chained laptop -> a (10.77.2.2) -> b (10.77.2.6) -> cluster1's
# login node (10.77.2.10, a second address of the login node on a link of its own to b, which the
# host has no route to). Every hop asks a second factor after the key: a TOTP code checked by
# Debian's pam_google_authenticator (one secret per hop, each code good once). The login node's
# listener on that address is a second sshd of the login node, started inside its namespaces.
#
# Usage: up.sh        (after deploy/cluster/up.sh cluster1; deploy/setup.sh runs both)
#
# Idempotent: what runs is left alone, what is missing (a link gone with a restarted cluster1, an
# sshd that died) is made again. Needs root. On success the state dir /var/run/milex-test-bastion
# holds bastion.env (addresses and secret files, for tests), ssh_config (Host bastion-a, bastion-b,
# cluster1-behind) and known_hosts. deploy/bastion/down.sh undoes it all.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh source-path=SCRIPTDIR
. "$HERE/common.sh"
# shellcheck source=../close-inherited.sh source-path=SCRIPTDIR
. "$HERE/../close-inherited.sh"

[[ $(id -u) -eq 0 ]] || die "run as root (namespaces, sshd)"
[[ -f $GA_MODULE ]] || die "$GA_MODULE is missing: apt-get install libpam-google-authenticator (deploy/setup.sh does)"
install -d -m 0755 "$BSTATE"
exec {BASTION_LOCK}>"$BSTATE/.lock"
flock -w 300 "$BASTION_LOCK" || die "another up.sh/down.sh holds $BSTATE/.lock"

cluster_settings "$BEHIND" # STATE, NETNS, INIT_NAME... of the cluster behind the bastions; in_cluster
LOG_NAME=bastion
recorded_pid init "$INIT_NAME" >/dev/null || die "$BEHIND is not running: deploy/cluster/up.sh $BEHIND first"
CLIENT_KEY=$(<"$STATE/client_key_path")
LOGIN_KEY_LINE=$(cut -d' ' -f2- "$STATE/known_hosts")

# totp_file: a google-authenticator secret file on stdout: a fresh secret, each code good once
# (DISALLOW_REUSE), the codes of 15 minutes either side accepted (WINDOW_SIZE), not the usual
# 30 s: tests log in to a hop dozens of times a minute, each time with a code not used yet. No
# RATE_LIMIT for the same reason.
WINDOW='" WINDOW_SIZE 61'
totp_file() {
    printf '%s\n' "$(head -c 10 /dev/urandom | base32)"
    printf '%s\n" DISALLOW_REUSE\n" TOTP_AUTH\n' "$WINDOW"
}
# The sed script that gives a kept secret file this script's window, and forgets any clock skew the
# module learnt from codes outside it (it shifts the window: tests compute codes from the clock).
WINDOW_SED="s/^\" WINDOW_SIZE .*/$WINDOW/; /^\" RESETTING_TIME_SKEW/d; /^\" TIME_SKEW/d"

# pam_stack SECRET_PATTERN: the PAM service of an sshd that asks for a TOTP code after the key.
pam_stack() {
    cat <<PAM
# Written by deploy/bastion/up.sh: the second factor of Milex's test bastions, a TOTP code.
auth required pam_google_authenticator.so secret=$1 user=root
account required pam_permit.so
session required pam_permit.so
password required pam_deny.so
PAM
}

# sshd_conf ADDRESS DIR EXTRA: an sshd that wants the key, then the PAM code (keyboard-interactive).
sshd_conf() {
    cat <<CONF
# Written by deploy/bastion/up.sh.
ListenAddress $1
Port 22
PidFile $2/sshd.pid
UsePAM yes
PubkeyAuthentication yes
KbdInteractiveAuthentication yes
PasswordAuthentication no
AuthenticationMethods publickey,keyboard-interactive
PermitRootLogin no
AllowUsers $LOGIN_USER
LogLevel VERBOSE
MaxStartups 100:30:200
$3
CONF
}

bastion_files() {
    local name=$1 dir=$BSTATE/$1 service addr
    service=PAM_SERVICE_$name
    addr=ADDR_$name
    install -d -m 0755 "$dir"
    install -d -m 0700 "$dir/totp"
    [[ -f $dir/ssh_host_ed25519_key ]] || ssh-keygen -q -t ed25519 -N '' -C "milex-bastion-$name" -f "$dir/ssh_host_ed25519_key"
    [[ -s $dir/totp/$LOGIN_USER ]] || (umask 077 && totp_file >"$dir/totp/$LOGIN_USER")
    sed -i "$WINDOW_SED" "$dir/totp/$LOGIN_USER"
    pam_stack "$dir/totp/\${USER}" >"/etc/pam.d/${!service}"
    ln -sfn /usr/sbin/sshd "$BSTATE/${!service}"
    sshd_conf "${!addr}" "$dir" "HostKey $dir/ssh_host_ed25519_key
AuthorizedKeysFile $BSTATE/authorized_keys
AllowTcpForwarding yes
AllowStreamLocalForwarding no" >"$dir/sshd_config.new"
}

# The login user of the bastions is the host's milex-login (tests/e2e/sshd.py makes it the same way).
login_user() {
    id "$LOGIN_USER" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$LOGIN_USER"
    install -m 0644 "$CLIENT_KEY.pub" "$BSTATE/authorized_keys"
}

# veth NAME1 NETNS1 ADDR1 NAME2 NETNS2 ADDR2: a /30 link between two namespaces ("" is the host's).
veth() {
    local -a in1=() in2=() to1=() to2=()
    [[ -z $2 ]] || in1=(-n "$2") to1=(netns "$2")
    [[ -z $5 ]] || in2=(-n "$5") to2=(netns "$5")
    ip "${in1[@]}" link show "$1" >/dev/null 2>&1 && ip "${in2[@]}" link show "$4" >/dev/null 2>&1 && return 0
    ip "${in1[@]}" link del "$1" 2>/dev/null || true
    ip "${in2[@]}" link del "$4" 2>/dev/null || true
    ip link add "$1" "${to1[@]}" type veth peer name "$4" "${to2[@]}"
    ip "${in1[@]}" addr add "$3/30" dev "$1"
    ip "${in2[@]}" addr add "$6/30" dev "$4"
    ip "${in1[@]}" link set "$1" up
    ip "${in2[@]}" link set "$4" up
    log "link $1 ($3) <-> $4 ($6)"
}

network() {
    local name
    for name in $BASTIONS; do
        name=NETNS_$name
        [[ -e /run/netns/${!name} ]] || ip netns add "${!name}"
        ip -n "${!name}" link set lo up
    done
    # shellcheck disable=SC2153  # NETNS_a and NETNS_b are set in common.sh
    veth mxba-host "" "$HOST_ADDR_A" mxba-node "$NETNS_a" "$ADDR_a"
    veth mxab-a "$NETNS_a" "$A_TO_B" mxab-b "$NETNS_b" "$ADDR_b"
    veth mxb1-b "$NETNS_b" "$B_TO_LOGIN" mxb1-node "$NETNS" "$LOGIN_SIDE_ADDR"
}

start_bastion() {
    local name=$1 dir=$BSTATE/$1 service netns pid
    service=PAM_SERVICE_$name
    netns=NETNS_$name
    if pid=$(bastion_pid "$name"); then
        if cmp -s "$dir/sshd_config.new" "$dir/sshd_config"; then
            rm "$dir/sshd_config.new"
            return 0
        fi
        log "bastion $name: configuration changed, restarting its sshd"
        kill "$pid"
        for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
    fi
    mv "$dir/sshd_config.new" "$dir/sshd_config"
    "$BSTATE/${!service}" -t -f "$dir/sshd_config" || die "sshd rejects $dir/sshd_config"
    (close_inherited_files && exec ip netns exec "${!netns}" setsid "$BSTATE/${!service}" -D \
        -f "$dir/sshd_config" -E "$dir/sshd.log") </dev/null >/dev/null 2>&1 &
    log "bastion $name: sshd started in ${!netns}"
}

# The login node's bastion-side listener: a second sshd of the login node, inside its namespaces and
# root, on the address of its link to b only, with the same PAM code step. The PAM module is the
# host's (the same Debian release: the login node's root has no package index to install it from).
login_side() {
    local host_codename node_codename conf
    host_codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
    # shellcheck disable=SC2016  # expanded by the login node's sh
    node_codename=$(in_cluster sh -c '. /etc/os-release && echo "$VERSION_CODENAME"')
    [[ $host_codename == "$node_codename" ]] ||
        die "$BEHIND runs Debian $node_codename, the host $host_codename: the host's PAM module does not fit it"
    in_cluster sh -c "cat >$GA_MODULE.new && mv $GA_MODULE.new $GA_MODULE" <"$GA_MODULE"
    in_cluster install -d -m 0700 "$LOGIN_SIDE_DIR" "$LOGIN_SIDE_DIR/totp"
    pam_stack "$LOGIN_SIDE_DIR/totp/\${USER}" | in_cluster sh -c "cat >/etc/pam.d/$LOGIN_SIDE_SERVICE"
    in_cluster ln -sfn /usr/sbin/sshd "/usr/local/sbin/$LOGIN_SIDE_SERVICE"
    in_cluster sh -c "[ -s $LOGIN_SIDE_DIR/totp/$LOGIN_USER ]" ||
        totp_file | in_cluster sh -c "umask 077 && cat >$LOGIN_SIDE_DIR/totp/$LOGIN_USER"
    in_cluster sed -i "$WINDOW_SED" "$LOGIN_SIDE_DIR/totp/$LOGIN_USER"
    conf=$(sshd_conf "$LOGIN_SIDE_ADDR" "$LOGIN_SIDE_DIR" "Subsystem sftp /usr/lib/openssh/sftp-server")
    if in_cluster sh -c "kill -0 \$(cat $LOGIN_SIDE_DIR/sshd.pid 2>/dev/null) 2>/dev/null" &&
        [[ $(in_cluster cat "$LOGIN_SIDE_DIR/sshd_config") == "$conf" ]]; then
        return 0
    fi
    in_cluster sh -c "[ ! -s $LOGIN_SIDE_DIR/sshd.pid ] || kill \$(cat $LOGIN_SIDE_DIR/sshd.pid) 2>/dev/null; true"
    printf '%s\n' "$conf" | in_cluster sh -c "cat >$LOGIN_SIDE_DIR/sshd_config"
    (close_inherited_files && in_cluster "/usr/local/sbin/$LOGIN_SIDE_SERVICE" -f "$LOGIN_SIDE_DIR/sshd_config" \
        -E /var/log/$LOGIN_SIDE_SERVICE.log) </dev/null >/dev/null 2>&1 || die "the login node's bastion-side sshd did not start"
    log "$BEHIND's login node: sshd on $LOGIN_SIDE_ADDR (through the bastions only)"
}

# answers NETNS ADDR: wait until ADDR's sshd shows its banner, seen from NETNS ("" is the host).
answers() {
    local -a run=()
    [[ -z $1 ]] || run=(ip netns exec "$1")
    local deadline=$((SECONDS + 20))
    until "${run[@]}" ssh-keyscan -T 2 "$2" 2>/dev/null | grep -q ssh-ed25519; do
        ((SECONDS < deadline)) || die "no sshd answers on $2 (seen from ${1:-the host}); logs in $BSTATE"
        sleep 0.1
    done
}

# What a test or a user needs: an ssh config, known_hosts and a sourceable file.
write_client_files() {
    cat >"$BSTATE/ssh_config" <<CONFIG
Host bastion-a
    HostName $ADDR_a
    User $LOGIN_USER
    IdentityFile $CLIENT_KEY
    IdentitiesOnly yes
    UserKnownHostsFile $BSTATE/known_hosts
Host bastion-b
    HostName $ADDR_b
    User $LOGIN_USER
    IdentityFile $CLIENT_KEY
    IdentitiesOnly yes
    UserKnownHostsFile $BSTATE/known_hosts
    ProxyJump bastion-a
Host $BEHIND-behind
    HostName $LOGIN_SIDE_ADDR
    User $LOGIN_USER
    IdentityFile $CLIENT_KEY
    IdentitiesOnly yes
    UserKnownHostsFile $BSTATE/known_hosts
    ProxyJump bastion-a,bastion-b
CONFIG
    {
        printf '%s %s\n' "$ADDR_a" "$(cut -d' ' -f1,2 "$BSTATE/a/ssh_host_ed25519_key.pub")"
        printf '%s %s\n' "$ADDR_b" "$(cut -d' ' -f1,2 "$BSTATE/b/ssh_host_ed25519_key.pub")"
        printf '%s %s\n' "$LOGIN_SIDE_ADDR" "$LOGIN_KEY_LINE"
    } >"$BSTATE/known_hosts"
    cat >"$BSTATE/bastion.env" <<ENV
MILEX_BASTION_A=$ADDR_a
MILEX_BASTION_B=$ADDR_b
MILEX_BASTION_BEHIND=$BEHIND
MILEX_BASTION_LOGIN_ADDR=$LOGIN_SIDE_ADDR
MILEX_BASTION_USER=$LOGIN_USER
MILEX_BASTION_A_TOTP=$BSTATE/a/totp/$LOGIN_USER
MILEX_BASTION_B_TOTP=$BSTATE/b/totp/$LOGIN_USER
MILEX_BASTION_LOGIN_TOTP=$LOGIN_SIDE_DIR/totp/$LOGIN_USER
MILEX_BASTION_A_LOG=$BSTATE/a/sshd.log
MILEX_BASTION_B_LOG=$BSTATE/b/sshd.log
ENV
}

login_user
for name in $BASTIONS; do
    bastion_files "$name"
done
network
for name in $BASTIONS; do
    start_bastion "$name"
done
login_side
answers "" "$ADDR_a"
answers "$NETNS_a" "$ADDR_b"
answers "$NETNS_b" "$LOGIN_SIDE_ADDR"
write_client_files
log "up: laptop -> bastion-a $ADDR_a -> bastion-b $ADDR_b -> $BEHIND's login node $LOGIN_SIDE_ADDR" \
    "(ssh -F $BSTATE/ssh_config $BEHIND-behind; a TOTP code at each hop)"
