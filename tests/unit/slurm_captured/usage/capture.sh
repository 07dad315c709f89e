#!/usr/bin/env bash
# capture.sh - sacct's usage fields (what milex_agent.scheduler.slurm.usage asks) for jobs that use known
# amounts of memory and CPU, on a test cluster with accounting, over ssh as its login user.
# Usage: tests/unit/slurm_captured/usage/capture.sh 1|2 OUTDIR   (cluster1: 22.05, cluster2: 24.11)
set -euo pipefail
cluster=$1
out=${2:-.}
mkdir -p "$out"
slurm() { ssh -F "/var/run/milex-test-cluster$cluster/ssh_config" "cluster$cluster-login" "$@"; }
FORMAT=JobID,State,Elapsed,TotalCPU,MaxRSS,ReqMem,AllocCPUS,NNodes,Timelimit
# A job script whose python touches $1 MB, spins the CPU $2 seconds, then holds the memory $3 seconds
# (sbatch reads it on stdin; the ssh hop would split a --wrap command's quoting).
hog() {
    printf '#!/bin/bash\npython3 -c "%s" %s\n' \
        'import sys,time; mb,spin,hold=map(float,sys.argv[1:4]); b=bytearray(int(mb*2**20))
for i in range(0,len(b),4096): b[i]=1
end=time.time()+spin
while time.time()<end: pass
time.sleep(hold)' "$*"
}
job() { local args=$1; shift; hog $args | slurm sbatch --parsable "$@" | cut -d';' -f1; }
memory=$(job "200 2 4" --job-name=memory --mem=500M --cpus-per-task=2 --time=00:05:00 --acctg-freq=task=1)
perCPU=$(job "100 0 3" --job-name=percpu --mem-per-cpu=300M --cpus-per-task=1 --time=10 --acctg-freq=task=1)
array=$(job '$((100*(SLURM_ARRAY_TASK_ID+1))) 1 3' --job-name=array --array=0-1 --mem=400M --time=00:02:00 \
    --acctg-freq=task=1)
failed=$(job "0 0 0; exit 3" --job-name=failed --time=1)
unlimited=$(job "0 0 0" --job-name=unlimited --time=UNLIMITED || true)
printf 'memory %s\npercpu %s\narray %s\nfailed %s\nunlimited %s\n' "$memory" "$perCPU" "$array" "$failed" "$unlimited" \
    > "$out/ids.txt"
ids=$memory,$perCPU,$array,$failed${unlimited:+,$unlimited}
sleep 3
slurm sacct --noheader --parsable2 --format=$FORMAT --jobs="$ids" > "$out/sacct_usage_running.txt"
while slurm squeue --noheader --jobs="$ids" 2>/dev/null | grep -q .; do sleep 2; done
sleep 5
slurm sacct --noheader --parsable2 --format=$FORMAT --jobs="$ids" > "$out/sacct_usage.txt"
slurm sacct --noheader --parsable2 --format=$FORMAT --jobs=999999 > "$out/sacct_usage_unknown.txt"
slurm sacct --version > "$out/sacct_version.txt"
