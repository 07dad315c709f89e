#!/usr/bin/env bash
# capture_max_job_count.sh - what sbatch does when slurmctld holds MaxJobCount jobs (as root on the
# host, under the e2e lock; restarts the cluster twice):
#   flock /tmp/milex-e2e.lock tests/unit/slurm_captured/limits/capture_max_job_count.sh cluster1 OUTDIR
# Starts the cluster from a copy of deploy/cluster/ whose slurm.conf adds MaxJobCount=60, fills it with
# held jobs, keeps what sbatch prints (a first try cut after 10 s, then one left to run to its end),
# and starts the cluster again from deploy/cluster/ as it is, whatever happens.
set -euo pipefail
CLUSTER=${1:?usage: capture_max_job_count.sh CLUSTER OUTDIR}
OUT=$(realpath "${2:-.}")
mkdir -p "$OUT"
DEPLOY=$(realpath "$(dirname "$(realpath "$0")")/../../../../deploy/cluster")
COPY=$(mktemp -d)
cp -a "$DEPLOY/." "$COPY/"
echo "MaxJobCount=60" >>"$COPY/slurm.conf.in"
restore() {
    "$DEPLOY/down.sh" "$CLUSTER" >/dev/null 2>&1 || true
    "$DEPLOY/up.sh" "$CLUSTER" >/dev/null 2>&1 || echo "restarting $CLUSTER failed: run deploy/cluster/up.sh $CLUSTER" >&2
    rm -rf "$COPY"
}
trap restore EXIT
"$DEPLOY/down.sh" "$CLUSTER" >/dev/null
"$COPY/up.sh" "$CLUSTER" >"$COPY.up.log" 2>&1 || { cat "$COPY.up.log" >&2; exit 1; }
user() { "$DEPLOY/exec.sh" "$CLUSTER" --user milex-login "$@"; }
user scontrol show config | grep -E "^MaxJobCount" >"$OUT/max_job_count_config.txt"
# fill NAME: held jobs until an sbatch does not return within 10 s; what it printed is NAME.*.
fill() {
    local i rc start
    for i in $(seq 70); do
        rc=0
        start=$SECONDS
        timeout 10 "$DEPLOY/exec.sh" "$CLUSTER" --user milex-login sbatch --parsable --hold --output=/dev/null \
            --wrap true >"$OUT/$1.stdout" 2>"$OUT/$1.stderr" || rc=$?
        [[ $rc == 0 ]] && continue
        echo "$rc" >"$OUT/$1.rc"
        echo "$1: submission $i: rc=$rc after $((SECONDS - start)) s: $(cat "$OUT/$1".std* | tr '\n' ' ')"
        return 0
    done
}
# whole NAME: one sbatch left to its end.
whole() {
    local rc=0 start=$SECONDS
    user sbatch --parsable --hold --output=/dev/null --wrap true >"$OUT/$1.stdout" 2>"$OUT/$1.stderr" || rc=$?
    echo "$rc" >"$OUT/$1.rc"
    echo "$1: rc=$rc after $((SECONDS - start)) s" | tee "$OUT/$1.seconds"
}
finished() { "$DEPLOY/exec.sh" "$CLUSTER" squeue -h --states=all -o %T | grep -vc PENDING || true; }
# Full while slurmctld still remembers finished jobs (those of before the restart): room frees as
# it forgets them (MinJobAge), and the waiting sbatch gets in.
fill sbatch_max_job_count_first
echo "finished jobs remembered: $(finished)" >"$OUT/sbatch_max_job_count_freed.remembered"
whole sbatch_max_job_count_freed
# Full of held jobs only: no room frees, and sbatch gives up.
for _ in $(seq 120); do [[ $(finished) == 0 ]] && break; sleep 1; done
fill sbatch_max_job_count_held
whole sbatch_max_job_count
user scancel --user=milex-login || true
