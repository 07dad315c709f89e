#!/usr/bin/env bash
# capture.sh - an array's rows task by task, as the agent's poll and accounting print them, from a
# namespaced test cluster (deploy/cluster/up.sh), over ssh as its login user.
# Usage: tests/unit/slurm_captured/tasks/capture.sh 1|2 OUTDIR   (cluster1: 22.05, cluster2: 24.11)
# The array: 0-9%3, tasks 3 and 7 exit 2, the others sleep 3 s; ids.txt holds its id.
set -euo pipefail
n=$1
OUT=$(realpath "${2:-.}")
mkdir -p "$OUT"
on_cluster() { ssh -F "/var/run/milex-test-cluster$n/ssh_config" "cluster$n-login" "$(printf '%q ' "$@")"; }
FORMAT='JobID:0|,ArrayJobID:0|,State:0|,Reason:0|,exit_code:0|,ArrayTaskID:0|'  # as poll.py asks
script='#!/bin/sh
case "$SLURM_ARRAY_TASK_ID" in 3|7) exit 2 ;; esac
sleep 3'
id=$(printf '%s\n' "$script" | on_cluster sbatch --parsable -o /dev/null --array=0-9%3)
echo "array $id" >"$OUT/ids.txt"
squeue_rows() { on_cluster squeue --noheader --array --states=all --jobs="$id" --Format="$FORMAT" "$@"; }
sacct_rows() { on_cluster sacct --noheader --parsable2 --allocations --format=JobID,State,ExitCode --jobs="$id"; }
for _ in $(seq 120); do  # some tasks ended, some running, some not started yet
    rows=$(squeue_rows)
    [[ $rows =~ RUNNING && $rows =~ PENDING && $rows =~ (COMPLETED|FAILED) ]] && break
    sleep 0.5
done
squeue_rows >"$OUT/squeue_active.txt"
on_cluster squeue --noheader --states=all --jobs="$id" --Format="$FORMAT" >"$OUT/squeue_active_no_array.txt"
squeue_rows --only-job-state >"$OUT/squeue_only_job_state.txt" 2>/dev/null || rm "$OUT/squeue_only_job_state.txt"
sacct_rows >"$OUT/sacct_active.txt"
for _ in $(seq 240); do [[ $(squeue_rows) =~ (RUNNING|PENDING) ]] || break; sleep 0.5; done
squeue_rows >"$OUT/squeue_finished.txt"
for _ in $(seq 120); do [[ $(sacct_rows) =~ (RUNNING|PENDING) ]] || break; sleep 0.5; done
sacct_rows >"$OUT/sacct_finished.txt"
echo "captured into $OUT"
