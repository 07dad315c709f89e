#!/usr/bin/env bash
# sshd-down.sh - stop the test OpenSSH servers started by sshd-up.sh.
#
# Only the listeners whose PIDs sshd-up.sh's servers recorded in the state dir
# are stopped (SIGTERM, then SIGKILL after 5 s), and only if that PID still runs
# sshd with our configuration; nothing is killed by name. Sessions already open
# end when their clients disconnect, as with any sshd. Running it when nothing
# is up is harmless and exits 0.
#
# Usage: sshd-down.sh [PORT...]   (no PORT: every server of the state dir)
#
# Environment: MILEX_SSHD_STATE (state dir, default /var/run/milex-test-sshd).

set -euo pipefail

STATE_DIR="${MILEX_SSHD_STATE:-/var/run/milex-test-sshd}"

log() { printf '[sshd-down %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

alive() {
    # A killed process stays a zombie until its parent (init, here) reaps it: that is not alive.
    kill -0 "$1" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

if [[ $# -gt 0 ]]; then
    PID_FILES=()
    for port in "$@"; do PID_FILES+=("$STATE_DIR/sshd-$port.pid"); done
else
    shopt -s nullglob
    PID_FILES=("$STATE_DIR"/sshd-*.pid)
fi

for pid_file in "${PID_FILES[@]}"; do
    [[ -f $pid_file ]] || continue
    conf="${pid_file%.pid}.conf"
    pid=$(<"$pid_file")
    if [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" &&
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "-f $conf"; then
        kill "$pid"
        for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
        if alive "$pid"; then
            log "sshd $pid ignored SIGTERM: sending SIGKILL"
            kill -9 "$pid"
        fi
        log "stopped sshd $pid ($conf)"
    fi
    rm -f "$pid_file"
done
