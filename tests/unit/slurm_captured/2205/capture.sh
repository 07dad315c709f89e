#!/usr/bin/env bash
# capture.sh - produce the fixture files of this folder from the test cluster (deploy/slurm-up.sh).
# Run under the e2e lock: flock /tmp/milex-e2e.lock tests/unit/slurm_captured/2205/capture.sh OUTDIR
# Job ids differ run to run; ids.txt maps each job's role to its id.
# Another cluster: SLURM_PREFIX is the command that runs a command line there (such as an ssh
# command; SLURM commands then run as its user, job scripts reach sbatch on stdin, jobs write to
# /tmp there), CLUSTER its name for `sbatch --clusters`, ACCOUNTING=1 adds sacct's and squeue
# --only-job-state's output and sacct's other JobID forms (../2411, ../2205acct).
set -euo pipefail
OUT=$(realpath "${1:-.}")
WORK=$(mktemp -d)
cd "$WORK"
FORMAT='JobID:0|,ArrayJobID:0|,State:0|,Reason:0|,exit_code:0|'  # as agent/milex_agent/scheduler/slurm/scheduler.py asks
CLUSTER=${CLUSTER:-milex}
on_cluster() {  # command and arguments, run on the cluster
    if [[ -n ${SLURM_PREFIX:-} ]]; then $SLURM_PREFIX "$(printf '%q ' "$@")"; else command "$@"; fi
}
for command in sbatch squeue scancel scontrol sacct grep awk; do
    eval "$command() { on_cluster $command \"\$@\"; }"
done
JOBOUT=$WORK
[[ -n ${SLURM_PREFIX:-} ]] && JOBOUT=/tmp
sb() {  # script, then sbatch's options
    local script=$1
    shift
    sbatch --parsable -o "$JOBOUT/%j.out" "$@" <"$script"
}
state() { squeue --noheader --array --states=all --jobs="$1" --Format=State:0 | sort -u | tr '\n' ' '; }
wait_for() {  # job id, regex the states of all its rows must match
    for _ in $(seq 600); do [[ $(state "$1") =~ $2 ]] && return 0; sleep 0.5; done
    echo "timed out waiting for $1 to match $2 (now: $(state "$1"))" >&2; return 1
}
squeue_rows() { squeue --noheader --array --states=all --jobs="$1" --Format="$FORMAT"; }

printf '#!/bin/sh\nexit 0\n' >ok.sh
printf '#!/bin/sh\nexit 3\n' >exit3.sh
printf '#!/bin/sh\nkill -9 $$\n' >selfkill.sh
printf '#!/bin/sh\nsleep 600\n' >sleep.sh
printf '#!/bin/sh\n[ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && exit 0\nsleep 600\n' >requeue.sh
cat >array.sh <<'SH'
#!/bin/sh
case "$SLURM_ARRAY_TASK_ID" in
    1) exit 5 ;;
    2) kill -9 $$ ;;
    3) sleep 600 ;;
esac
exit 0
SH

declare -A id
id[completed]=$(sb ok.sh)
id[exit3]=$(sb exit3.sh)
id[selfkill]=$(sb selfkill.sh)
id[pending]=$(sb ok.sh --hold)
id[cancelled]=$(sb sleep.sh)
id[scancel_kill]=$(sb sleep.sh)
id[requeued]=$(sb requeue.sh)
id[timeout]=$(sb sleep.sh --time=1)
id[array]=$(sb array.sh --array=0-3)
sbatch --parsable --clusters="$CLUSTER" -o /dev/null <ok.sh >sbatch_parsable_cluster.txt 2>&1 || true
printf '%s\n' "${id[completed]}" >sbatch_parsable.txt
for role in "${!id[@]}"; do echo "$role ${id[$role]}"; done | sort >ids.txt
cp sbatch_parsable.txt sbatch_parsable_cluster.txt ids.txt "$OUT"/

for role in cancelled scancel_kill requeued timeout; do wait_for "${id[$role]}" '^RUNNING $'; done
wait_for "${id[array]}" '^(COMPLETED |FAILED |RUNNING )+$'
# Nothing: slurmctld already forgot the job (MinJobAge; cluster1's 30 s pass while its 4 cores wait).
for role in completed exit3 selfkill; do wait_for "${id[$role]}" '^((COMPLETED|FAILED) )?$'; done
all=$(IFS=,; echo "${id[*]}")
squeue_rows "$all" >"$OUT/squeue_active.txt"
scontrol show job "${id[array]}" >"$OUT/scontrol_show_job_array_active.txt"

scancel "${id[cancelled]}"
scancel --signal=KILL "${id[scancel_kill]}"
scontrol requeue "${id[requeued]}"
scancel "${id[array]}_3"
wait_for "${id[requeued]}" '^(PENDING|REQUEUED|CONFIGURING|RUNNING) $'
squeue_rows "${id[requeued]}" >"$OUT/squeue_requeued.txt"
for role in cancelled scancel_kill requeued timeout array; do
    wait_for "${id[$role]}" '^((COMPLETED|FAILED|CANCELLED|TIMEOUT) )*$'
done
squeue_rows "$all" >"$OUT/squeue_finished.txt"
scancel "${id[pending]}"
wait_for "${id[pending]}" '^CANCELLED $'
squeue_rows "${id[pending]}" >"$OUT/squeue_pending_cancelled.txt"
for role in "${!id[@]}"; do
    scontrol show job "${id[$role]}" >>"$OUT/scontrol_show_job.txt" 2>&1 || true
done
squeue --noheader --jobs=999999 --Format="$FORMAT" >"$OUT/squeue_invalid_id.stdout" 2>"$OUT/squeue_invalid_id.stderr" \
    || echo "exit status $?" >>"$OUT/squeue_invalid_id.stderr"
scontrol show config >"$OUT/scontrol_show_config.txt"
capture_forms() {  # sacct's other JobID forms: a throttled array, a held array, a heterogeneous job
    declare -A form
    form[throttled]=$(sb sleep.sh --array=0-3%1)
    form[held_array]=$(sb ok.sh --array=0-3 --hold)
    # Its two components never start on a one-node cluster (Reason Resources): it is seen pending.
    form[hetjob]=$(sbatch --parsable -o "$JOBOUT/%j.out" -n1 --mem=100 : -n1 --mem=100 <exit3.sh)
    for role in "${!form[@]}"; do echo "$role ${form[$role]}"; done | sort >"$OUT/ids_forms.txt"
    wait_for "${form[throttled]}" '^PENDING RUNNING $'
    local forms
    forms=$(IFS=,; echo "${form[*]}")
    forms_rows() { sacct --noheader --parsable2 --allocations --format=JobID,State,ExitCode --jobs="$forms"; }
    for _ in $(seq 120); do [[ $(forms_rows) =~ RUNNING ]] && break; sleep 0.5; done
    forms_rows >"$OUT/sacct_forms_active.txt"
    scancel "${form[throttled]}" "${form[held_array]}" "${form[hetjob]}"
    for role in "${!form[@]}"; do wait_for "${form[$role]}" '^CANCELLED $'; done
    for _ in $(seq 120); do [[ $(forms_rows) =~ (PENDING|RUNNING) ]] || break; sleep 0.5; done
    forms_rows >"$OUT/sacct_forms_cancelled.txt"
}
if [[ -n ${ACCOUNTING:-} ]]; then
    squeue --only-job-state --noheader --array --states=all --jobs="$all" --Format="$FORMAT" \
        >"$OUT/squeue_only_job_state.txt" 2>"$OUT/squeue_only_job_state.stderr" \
        || { echo "exit status $?" >>"$OUT/squeue_only_job_state.stderr"; rm "$OUT/squeue_only_job_state.txt"; }
    [[ -s $OUT/squeue_only_job_state.stderr ]] || rm "$OUT/squeue_only_job_state.stderr"  # 24.05+: refused before
    sacct_rows() { sacct --noheader --parsable2 --format=JobID,State,ExitCode --jobs="$all" "$@"; }
    for _ in $(seq 120); do  # slurmdbd learns of the jobs' ends a moment after slurmctld
        [[ $(sacct_rows --allocations) =~ (PENDING|RUNNING|REQUEUED) ]] || break
        sleep 0.5
    done
    sacct_rows --allocations >"$OUT/sacct_allocations.txt"
    sacct_rows >"$OUT/sacct_steps.txt"
    capture_forms
    echo "captured into $OUT (work dir $WORK)"
    exit 0
fi
sacct --noheader --parsable2 --allocations --format=JobID,State,ExitCode --jobs="$all" \
    >"$OUT/sacct_disabled.stdout" 2>"$OUT/sacct_disabled.stderr" || echo "exit status $?" >>"$OUT/sacct_disabled.stderr"
jobcomp=$(scontrol show config | awk '$1 == "JobCompLoc" {print $3}')
sleep 1  # slurmctld writes the log line after the job's end is known to squeue
grep -E "^JobId=($(IFS='|'; echo "${id[*]}")|$(( ${id[array]} + 1 ))|$(( ${id[array]} + 2 ))|$(( ${id[array]} + 3 )))( |$)" "$jobcomp" \
    >"$OUT/jobcomp.log"
echo "captured into $OUT (work dir $WORK)"
