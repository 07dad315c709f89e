# shellcheck shell=bash
# Sourced by the scripts of deploy/ that start daemons which outlive them.
# close_inherited_files: close every descriptor but 0-2 in this (sub)shell. A daemon that inherits a
# file, such as the lock of `flock LOCK script` (an e2e run's), holds it for its whole life: every
# later `flock LOCK` waits forever (seen: munged, restarted by a benchmark under the lock).
close_inherited_files() {
    local fd
    for fd in /proc/"$BASHPID"/fd/*; do
        fd=${fd##*/}
        if ((fd > 2)); then
            eval "exec $fd>&-" 2>/dev/null || true
        fi
    done
}
