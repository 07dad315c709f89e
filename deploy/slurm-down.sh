#!/usr/bin/env bash
# slurm-down.sh - stop the single-node test cluster started by slurm-up.sh.
#
# Only processes whose PIDs slurm-up.sh recorded in the state directory are
# stopped (SIGTERM, then SIGKILL after a timeout); nothing is killed by name,
# so a munged or Slurm that someone else started is left alone. Running it
# when nothing is up is harmless and exits 0.
#
# Usage: slurm-down.sh [--cancel-jobs] [--purge]
#   --cancel-jobs  scancel all jobs first. Otherwise running jobs keep going
#                  (their slurmstepd survives slurmd) and are picked up again
#                  by the next slurm-up.sh.
#   --purge        afterwards delete the whole state dir (Slurm job state,
#                  spool, logs, jobcomp file), so the next slurm-up.sh starts
#                  from scratch with job ids from 1.
#
# Environment: MILEX_CLUSTER_STATE (state dir, default
# /var/run/milex-test-cluster), MILEX_CLUSTER_STOP_TIMEOUT (seconds between
# TERM and KILL, default 15).

set -euo pipefail

STATE_DIR="${MILEX_CLUSTER_STATE:-/var/run/milex-test-cluster}"
PID_DIR="$STATE_DIR/pids"
STOP_TIMEOUT="${MILEX_CLUSTER_STOP_TIMEOUT:-15}"

CANCEL_JOBS=0
PURGE=0
for arg in "$@"; do
    case $arg in
        --cancel-jobs) CANCEL_JOBS=1 ;;
        --purge) PURGE=1 ;;
        -h | --help)
            sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
            exit 0
            ;;
        *)
            echo "slurm-down.sh: unknown argument: $arg" >&2
            exit 2
            ;;
    esac
done

log() { printf '[slurm-down %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

[[ $(id -u) -eq 0 ]] || {
    log "ERROR: must run as root"
    exit 1
}

if [[ ! -d $STATE_DIR ]]; then
    log "no state dir $STATE_DIR; nothing to stop"
    exit 0
fi

# Same lock as slurm-up.sh, so we never tear down a cluster that is halfway
# through being started.
exec 9>"$STATE_DIR/.lock"
flock -w 300 9 || {
    log "ERROR: could not get $STATE_DIR/.lock"
    exit 1
}

# recorded_pid NAME: print the PID from NAME.pid if that process is alive and
# really is NAME (guards against PID reuse after a reboot/container restart).
recorded_pid() {
    local name=$1 pidfile="$PID_DIR/$1.pid" pid comm
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$name" ]] || return 1
    echo "$pid"
}

# stop_daemon NAME: TERM, wait up to STOP_TIMEOUT s, then KILL; remove PID file.
stop_daemon() {
    local name=$1 pid deadline
    if ! pid=$(recorded_pid "$name"); then
        if [[ -e $PID_DIR/$name.pid ]]; then
            log "$name: stale PID file, removing"
        fi
        rm -f "$PID_DIR/$name.pid"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    # The daemons are not our children (setsid in another shell), so `wait`
    # cannot be used; poll /proc instead.
    while [[ -e /proc/$pid ]] && ((SECONDS < deadline)); do
        sleep 0.1
    done
    if [[ -e /proc/$pid ]]; then
        log "$name did not exit within ${STOP_TIMEOUT}s, sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        while [[ -e /proc/$pid ]]; do sleep 0.1; done
    fi
    rm -f "$PID_DIR/$name.pid"
}

if ((CANCEL_JOBS)) && recorded_pid slurmctld >/dev/null; then
    # Needs slurmctld (and munge) still up, hence before stopping anything.
    log "cancelling all jobs"
    # As root, scancel may cancel every user's jobs; squeue lists them all.
    timeout 30 bash -c 'squeue -h -o %i | xargs -r scancel' || true
    # Give slurmd a moment to deliver the signals before it goes away.
    sleep 1
fi

# Reverse start order: slurmd first (so it can tell ctld it is going), then
# slurmctld (which saves job state on SIGTERM), munged last (both use it
# while shutting down).
stop_daemon slurmd
stop_daemon slurmctld
stop_daemon munged

if ((PURGE)); then
    # Only the directory we own; the lock fd is released as the script exits.
    log "purging $STATE_DIR"
    rm -rf -- "$STATE_DIR"
fi

log "cluster down"
