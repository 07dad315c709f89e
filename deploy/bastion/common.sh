# common.sh - settings shared by deploy/bastion/'s scripts (sourced, not run): the test world's two
# bastion hosts, the links between them and cluster1's login node, and the second factor they ask.
# shellcheck shell=bash disable=SC2034  # the settings are used by the scripts that source this

BASTION_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../cluster/common.sh source-path=SCRIPTDIR
. "$BASTION_HERE/../cluster/common.sh"

BEHIND=cluster1 # the cluster whose login node gets a listener reachable only through the bastions
BSTATE=/var/run/milex-test-bastion
LOG_NAME=bastion
BASTIONS="a b"
# The chain laptop -> a -> b -> login node: one /30 per link, none routed anywhere else. The host
# has an address on the first link only; forwarding is off in every namespace, so b and the login
# node's bastion-side address are out of the laptop's reach.
NETNS_a=milex-bastion-a
NETNS_b=milex-bastion-b
ADDR_a=10.77.2.2          # a, on the link to the host (the host's end: 10.77.2.1, veth mxba-host)
ADDR_b=10.77.2.6          # b, on the link to a (a's end: 10.77.2.5, veth mxab-a / mxab-b)
LOGIN_SIDE_ADDR=10.77.2.10 # the login node, on the link to b (b's end: 10.77.2.9, veth mxb1-b / mxb1-node)
HOST_ADDR_A=10.77.2.1
A_TO_B=10.77.2.5
B_TO_LOGIN=10.77.2.9
# sshd asks PAM for the service named as it was run: each bastion, and the login node's bastion-side
# listener, runs sshd through a symlink of this name, whose PAM stack is pam_google_authenticator.
PAM_SERVICE_a=milex-bastion-a
PAM_SERVICE_b=milex-bastion-b
LOGIN_SIDE_SERVICE=milex-login-mfa
LOGIN_SIDE_DIR=/etc/milex-mfa # in the login node's root: its config, pid file and TOTP secrets
GA_MODULE=/lib/x86_64-linux-gnu/security/pam_google_authenticator.so

# alive PID: PID runs and is not a zombie.
alive() { kill -0 "$1" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]; }

# bastion_pid NAME: the pid of bastion NAME's sshd, if it runs; fails otherwise.
bastion_pid() {
    local file=$BSTATE/$1/sshd.pid pid
    [[ -s $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$BSTATE/$1/sshd_config" || return 1
    printf '%s\n' "$pid"
}
