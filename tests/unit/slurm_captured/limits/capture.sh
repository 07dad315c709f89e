#!/usr/bin/env bash
# capture.sh - what SLURM prints about the limits on how many jobs a user may have, and its refusals
# when one is reached, on a test cluster of deploy/cluster/ (as root on the host, under the e2e lock):
#   flock /tmp/milex-e2e.lock tests/unit/slurm_captured/limits/capture.sh cluster1 OUTDIR
# Sets limits on milex-login's association (account physics) and on QOS normal with sacctmgr, and
# clears them again on exit, whatever happens. Job ids differ run to run.
set -euo pipefail
CLUSTER=${1:?usage: capture.sh CLUSTER OUTDIR}
OUT=$(realpath "${2:-.}")
mkdir -p "$OUT"
EXEC=$(dirname "$(realpath "$0")")/../../../../deploy/cluster/exec.sh
USER_=milex-login
admin() { "$EXEC" "$CLUSTER" "$@"; }
user() { "$EXEC" "$CLUSTER" --user "$USER_" "$@"; }
clear_limits() {
    user scancel --user="$USER_" || true
    admin sacctmgr -i modify user "$USER_" where account=physics set MaxSubmitJobs=-1 >/dev/null || true
    admin sacctmgr -i modify account physics set GrpSubmitJobs=-1 >/dev/null || true
    admin sacctmgr -i modify qos normal set MaxSubmitJobsPerUser=-1 MaxSubmitJobsPerAccount=-1 GrpSubmitJobs=-1 >/dev/null || true
}
trap clear_limits EXIT
assoc_mgr() { user scontrol show assoc_mgr users="$USER_" flags=assoc,qos; }
# wait_assoc PATTERN: until slurmctld's association manager shows PATTERN (a grep -E pattern).
wait_assoc() {
    for _ in $(seq 100); do assoc_mgr | grep -Eq "$1" && return 0; sleep 0.1; done
    echo "slurmctld never showed $1" >&2
    return 1
}
wait_gone() {  # until it no longer shows PATTERN
    for _ in $(seq 100); do assoc_mgr | grep -Eq "$1" || return 0; sleep 0.1; done
    echo "slurmctld still shows $1" >&2
    return 1
}
# try NAME SBATCH-OPTIONS...: an sbatch as the user; NAME.stderr, NAME.stdout and NAME.rc kept.
try() {
    local name=$1
    shift
    local rc=0
    user sbatch --parsable --output=/dev/null "$@" >"$OUT/$name.stdout" 2>"$OUT/$name.stderr" || rc=$?
    echo "$rc" >"$OUT/$name.rc"
    echo "$name: rc=$rc $(cat "$OUT/$name.stdout" "$OUT/$name.stderr" | tr '\n' ' ')"
}
used() { assoc_mgr | awk '/Account=physics UserName=milex-login/ { on = 1 } on && /MaxSubmitJobs=/ { match($0, /MaxSubmitJobs=[^ ]*/); print substr($0, RSTART, RLENGTH); exit }'; }
state() { user squeue --noheader --states=all --array --jobs="$1" --format=%T | sort -u | tr '\n' ' '; }
wait_state() {  # job, regex
    for _ in $(seq 300); do [[ $(state "$1") =~ $2 ]] && return 0; sleep 0.2; done
    echo "job $1 never matched $2 (now $(state "$1"))" >&2
    return 1
}

clear_limits
user scontrol show config >"$OUT/scontrol_show_config.txt"
user sinfo --version >"$OUT/version.txt"
assoc_mgr >"$OUT/assoc_mgr_none.txt"
user sacctmgr -n -P show assoc user="$USER_" format=Account,Partition,DefaultQOS,QOS >"$OUT/sacctmgr_assoc.txt"
user sacctmgr -n -P show qos format=Name,MaxSubmitPU,MaxSubmitPA,GrpSubmit >"$OUT/sacctmgr_qos_none.txt"

# ---- the association's MaxSubmitJobs, and how SLURM counts toward it
admin sacctmgr -i modify user "$USER_" where account=physics set MaxSubmitJobs=3 >/dev/null
wait_assoc "MaxSubmitJobs=3\("
echo "set MaxSubmitJobs=3: $(used)"
running=$(user sbatch --parsable --output=/dev/null --wrap 'sleep 60')
wait_state "$running" RUNNING
held=$(user sbatch --parsable --output=/dev/null --hold --wrap true)
echo "one running, one held pending: $(used)"
try sbatch_array2_over_assoc_max_submit --array=0-1 --hold --wrap true
echo "after a refused 2-task array: $(used)"
single=$(user sbatch --parsable --output=/dev/null --hold --wrap true)
echo "plus one more pending: $(used)"
assoc_mgr >"$OUT/assoc_mgr_max_submit_full.txt"
try sbatch_assoc_max_submit --wrap true
user scancel "$single" "$held"
for _ in $(seq 50); do [[ $(used) == "MaxSubmitJobs=3(1)" ]] && break; sleep 0.1; done
echo "cancelled the pending two: $(used)"
array=$(user sbatch --parsable --output=/dev/null --array=0-1 --hold --wrap true)
echo "a held 2-task array: $(used)"
user scancel "$array" "$running"
for _ in $(seq 50); do [[ $(used) == "MaxSubmitJobs=3(0)" ]] && break; sleep 0.1; done
echo "all cancelled: $(used)"
short=$(user sbatch --parsable --output=/dev/null --wrap 'sleep 2')
wait_state "$short" RUNNING
echo "a running 2 s job: $(used)"
wait_state "$short" "COMPLETED"
echo "once it COMPLETED: $(used)"
admin sacctmgr -i modify user "$USER_" where account=physics set MaxSubmitJobs=-1 >/dev/null
wait_gone "MaxSubmitJobs=3\\("

# ---- the account's GrpSubmitJobs (shared by its users)
admin sacctmgr -i modify account physics set GrpSubmitJobs=1 >/dev/null
wait_assoc "GrpSubmitJobs=1\("
held=$(user sbatch --parsable --output=/dev/null --hold --wrap true)
assoc_mgr >"$OUT/assoc_mgr_grp_submit.txt"
try sbatch_account_grp_submit --wrap true
user scancel "$held"
admin sacctmgr -i modify account physics set GrpSubmitJobs=-1 >/dev/null
wait_gone "GrpSubmitJobs=1\\("

# ---- QOS normal's MaxSubmitJobsPerUser, and MaxSubmitJobsPerAccount
admin sacctmgr -i modify qos normal set MaxSubmitJobsPerUser=1 >/dev/null
wait_assoc "MaxSubmitJobsPU=1\("
held=$(user sbatch --parsable --output=/dev/null --hold --wrap true)
assoc_mgr >"$OUT/assoc_mgr_qos_max_submit_pu.txt"
user sacctmgr -n -P show qos format=Name,MaxSubmitPU,MaxSubmitPA,GrpSubmit >"$OUT/sacctmgr_qos_max_submit_pu.txt"
try sbatch_qos_max_submit_pu --wrap true
user scancel "$held"
admin sacctmgr -i modify qos normal set MaxSubmitJobsPerUser=-1 MaxSubmitJobsPerAccount=1 GrpSubmitJobs=5 >/dev/null
wait_assoc "MaxSubmitJobsPA=1\("
held=$(user sbatch --parsable --output=/dev/null --hold --wrap true)
assoc_mgr >"$OUT/assoc_mgr_qos_max_submit_pa.txt"
user sacctmgr -n -P show qos format=Name,MaxSubmitPU,MaxSubmitPA,GrpSubmit >"$OUT/sacctmgr_qos_max_submit_pa.txt"
try sbatch_qos_max_submit_pa --wrap true
user scancel "$held"
admin sacctmgr -i modify qos normal set MaxSubmitJobsPerAccount=-1 GrpSubmitJobs=-1 >/dev/null

# ---- MaxArraySize, and refusals that are not limits
try sbatch_array_too_big --array=0-1000 --hold --wrap true
try sbatch_array_index_too_big --array=1000 --hold --wrap true
try sbatch_bad_account --account=nosuchaccount --wrap true
try sbatch_bad_partition --partition=nosuchpartition --wrap true
try sbatch_bad_qos --qos=nosuchqos --wrap true
try sbatch_bad_memory --mem=999999 --wrap true
