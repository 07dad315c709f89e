"""The agent's status poll on SLURM 24.11 (the second test cluster): squeue with every field the agent
reads against `squeue --only-job-state`, and the second step that needs (every field of the jobs
whose state changed), side by side in one run.

    sudo .venv/bin/python -m bench.poll_query [--jobs 100,2000] [--others 3000] [--rounds 30]

Run from the repository root as root, with deploy/cluster/up.sh's cluster up; it takes a minute or
two. It submits `--others` held jobs as root (the jobs of other users a shared controller holds),
then for each size N, N held jobs as the login user; round after round in a shuffled order it runs
each query as that user on the login node (wall time and squeue's own CPU, timed there) while
reading slurmctld's CPU time from the host (its threads' schedstat, checked against /proc/PID/stat)
before and after each; then one block per query between `sdiag --reset` and `sdiag` for the
controller's RPCs and their average times. Every job it submitted is cancelled at the end (they
count against MaxJobCount until MinJobAge, 300 s there). Writes bench/results/poll_query.json, .md.

Result, 2026-11-25 (SLURM 24.11.5, 2 shared cores, 3,000 held jobs of root, 30 rounds); ratios to
`full`, the poll of every field, for the same N (wall median; slurmctld CPU per call):

    query                                   N=100: wall  slurmctld    N=2000: wall  slurmctld
    full (--jobs=ids; past 500, --me)         21.3 ms    8.9 ms         17.4 ms    7.5 ms
    state (--only-job-state --jobs=ids;          0.19      0.11            0.70      0.20
      past 500, every job's state)
    state, every id listed (N=2000)                 -         -            1.45      0.17
    changed: every field, 10 jobs, --me          0.30      0.32            1.00      0.98
    changed: the same listing the 10 ids         0.95      1.01            1.62      1.76
    changed: one job alone (--jobs=id)           0.26      0.27            0.31      0.30

So a poll where nothing changed costs slurmctld 0.11 to 0.20 of today's, one where a job changed
0.38 to 0.50, one where several changed 0.43 to 1.18; most polls see no change (a job changes state
two or three times in its life, and is polled every 0.5 to 10 s). A list of ids has slurmctld pack
every job record it holds, anyone's (REQUEST_JOB_INFO, 6.8 ms here), hence `--me` (the user's:
REQUEST_JOB_USER_INFO) for several changed jobs; `--only-job-state --me` lists nothing on 24.11.
Without the other user's jobs the gain is smaller (N=100: state 0.73 wall, 0.45 slurmctld), as the
full poll's cost grows with every job the controller holds and the state poll's only with ours.
The choice is made in agent/milex_agent/scheduler/slurm/poll.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.stats import ratio, summarize
from milex_agent.scheduler.slurm.poll import MAX_LISTED_JOBS, changed_query, full_query, state_query

STATE_DIR = Path(os.environ.get("MILEX_CLUSTER2_STATE", "/var/run/milex-test-cluster2"))
USER = "milex-login"
OUT = Path(__file__).parent / "results"
TICK = os.sysconf("SC_CLK_TCK")
# Runs on the login node as the user: one command per line of JSON in, its timings out.
RUNNER = """
import json, resource, subprocess, sys, time
for line in sys.stdin:
    argv = json.loads(line)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, cwd="/tmp")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(json.dumps({"wall": wall, "cpu": cpu, "rc": done.returncode, "stdout": done.stdout,
                      "stderr": done.stderr[-400:]}), flush=True)
"""
_RPC = re.compile(r"^\s*(\w+)\s+\(\s*\d+\)\s+count:(\d+)\s+ave_time:(\d+)\s+total_time:(\d+)")


def init_pid() -> int:
    return int((STATE_DIR / "pids" / "init.pid").read_text())


def in_cluster(*argv: str) -> list[str]:
    """`argv` run in the cluster's namespaces and root, as root (deploy/cluster/common.sh's in_cluster)."""
    namespaces = ["--mount", "--uts", "--pid", "--net", "--root", "--wd"]
    environment = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8"]
    return ["nsenter", "--target", str(init_pid()), *namespaces, "--", *environment, *argv]


def slurmctld_pid() -> int:
    """The cluster's slurmctld, seen from the host: the one in its init's PID namespace."""
    namespace = os.readlink(f"/proc/{init_pid()}/ns/pid")
    for entry in Path("/proc").iterdir():
        try:
            ours = os.readlink(entry / "ns/pid") == namespace
            if ours and (entry / "comm").read_text().strip() == "slurmctld":
                return int(entry.name)
        except (OSError, ValueError):
            continue
    sys.exit("bench: no slurmctld runs in the second cluster; start it with deploy/cluster/up.sh")


def cpu_seconds(pid: int) -> float:
    """CPU time of `pid`'s threads, in ns resolution (schedstat), where /proc/PID/stat counts 10 ms
    ticks; slurmctld 24.11 serves RPCs on long-lived worker threads, so none is lost with its thread.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that just ended
    return total / 1e9


def tick_seconds(pid: int) -> float:
    """utime + stime of the process (fields 14, 15 of proc(5)): a check on cpu_seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class LoginShell:
    """A process on the login node, as the user, that runs the commands it is sent."""

    def __init__(self) -> None:
        argv = in_cluster("runuser", "-u", USER, "--", "python3", "-u", "-c", RUNNER)
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, argv: list[str]) -> dict:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps(argv) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=30)


def queries(job_ids: list[str], changed: int) -> dict[str, list[str]]:
    """The agent's queries and the alternatives it did not choose: the poll of every field (all it
    makes before 24.05); the state-only poll, and past MAX_LISTED_JOBS the same listing every id;
    the second step, every field of `changed` jobs (with --me), the same listing them, and of one."""
    found = {"full": full_query(job_ids), "state": state_query(job_ids)}
    if len(job_ids) > MAX_LISTED_JOBS:
        found["state_listed"] = [*state_query(job_ids[:1])[:-1], f"--jobs={','.join(job_ids)}"]
    found["changed"] = changed_query(job_ids[:changed])
    found["changed_listed"] = [*changed_query(job_ids[:1])[:-1], f"--jobs={','.join(job_ids[:changed])}"]
    found["changed_one"] = changed_query(job_ids[:1])
    return found


def measure(shell: LoginShell, job_ids: list[str], rounds: int, changed: int) -> dict:
    commands = queries(job_ids, changed)
    ctld = slurmctld_pid()
    samples = {name: {"wall": [], "cpu": [], "ctld": []} for name in commands}
    rows: dict[str, int] = {}
    checks = (cpu_seconds(ctld), tick_seconds(ctld))
    for _ in range(rounds):
        for name in random.sample(list(commands), len(commands)):
            before = cpu_seconds(ctld)
            done = shell.run(commands[name])
            samples[name]["ctld"].append(cpu_seconds(ctld) - before)
            samples[name]["wall"].append(done["wall"])
            samples[name]["cpu"].append(done["cpu"])
            if done["rc"] != 0:
                sys.exit(f"bench: {name} failed: {done['stderr']}")
            rows[name] = len(done["stdout"].splitlines())
    threads, ticks = cpu_seconds(ctld) - checks[0], tick_seconds(ctld) - checks[1]
    print(f"bench: slurmctld CPU over the rounds: {threads:.3f} s by its threads, {ticks:.2f} s by ticks")
    rpcs = {name: rpc_block(shell, argv, rounds) for name, argv in commands.items()}
    return {
        name: {
            "argv": " ".join(argv)[:200],
            "rows": rows[name],
            "wall": summarize(samples[name]["wall"]),
            "squeue_cpu": summarize(samples[name]["cpu"]),
            "slurmctld_cpu_total": sum(samples[name]["ctld"]),
            "slurmctld_cpu_per_call": sum(samples[name]["ctld"]) / rounds,
            "rpcs": rpcs[name],
        }
        for name, argv in commands.items()
    }


def rpc_block(shell: LoginShell, argv: list[str], rounds: int) -> dict[str, dict[str, float]]:
    """slurmctld's RPC statistics over `rounds` runs of `argv` alone: per call, by message type."""
    subprocess.run(in_cluster("sdiag", "--reset"), check=True, capture_output=True)
    for _ in range(rounds):
        shell.run(argv)
    printed = subprocess.run(in_cluster("sdiag"), check=True, capture_output=True, text=True).stdout
    by_type = printed.partition("by message type")[2].partition("by user")[0]
    found = {}
    for line in by_type.splitlines():
        match = _RPC.match(line)
        if match and match[1] not in ("REQUEST_STATS_INFO", "REQUEST_RESET_STATS"):
            found[match[1]] = {"per_call": int(match[2]) / rounds, "ave_us": int(match[3])}
    return found


def held_jobs(count: int) -> list[str]:
    """A shell command that submits `count` held jobs and prints their ids."""
    sbatch = "sbatch --hold --parsable -J bench-poll -o /dev/null --wrap true"
    return ["sh", "-c", f"cd /tmp && for i in $(seq {count}); do {sbatch}; done"]


def submit_held(shell: LoginShell, count: int) -> list[str]:
    done = shell.run(held_jobs(count))
    job_ids = [line.split(";")[0] for line in done["stdout"].split()]
    if len(job_ids) != count:
        cancel(shell.run, job_ids)
        sys.exit(f"bench: submitted {len(job_ids)} of {count} jobs: {done['stderr']}")
    return job_ids


def submit_others(count: int) -> list[str]:
    """`count` held jobs of another user (root): records the controller holds, as on a shared cluster."""
    done = subprocess.run(in_cluster(*held_jobs(count)), capture_output=True, text=True, check=False)
    return [line.split(";")[0] for line in done.stdout.split()]


def cancel(run: Callable[[list[str]], object], job_ids: list[str]) -> None:
    for start in range(0, len(job_ids), 1000):
        run(["scancel", *job_ids[start : start + 1000]])


def as_root(argv: list[str]) -> None:
    subprocess.run(in_cluster(*argv), capture_output=True, check=False)


def report(results: dict) -> str:
    lines = [
        f"# The agent's poll on {results['slurm']}, {results['started']} (load {results['load']})",
        "",
        f"{results['records']} job records in slurmctld before submitting ours ({results['others']} of them "
        "another user's held jobs, as on a shared cluster); `changed` asks the full fields of "
        f"{results['changed']} jobs. Ratios are against `full` of the same N.",
        "",
        "| N | query | rows | wall median (ms) | x full | squeue CPU (ms) | slurmctld CPU/call (ms) | x full "
        "| RPCs per call (avg µs) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size, by_query in results["sizes"].items():
        full = by_query["full"]
        for name, row in by_query.items():
            rpcs = ", ".join(f"{kind} {v['per_call']:g} ({v['ave_us']})" for kind, v in row["rpcs"].items())
            wall_ratio = ratio(row["wall"]["median"], full["wall"]["median"])
            ctld_ratio = ratio(row["slurmctld_cpu_per_call"], full["slurmctld_cpu_per_call"])
            wall, squeue_cpu = row["wall"]["median"] * 1e3, row["squeue_cpu"]["median"] * 1e3
            lines.append(
                f"| {size} | {name} | {row['rows']} | {wall:.1f} | {wall_ratio or 0:.2f} | {squeue_cpu:.1f} "
                f"| {row['slurmctld_cpu_per_call'] * 1e3:.1f} | {ctld_ratio or 0:.2f} | {rpcs} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.poll_query", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="100,2000", help="comma-separated numbers of held jobs")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--others", type=int, default=3000, help="held jobs of another user meanwhile")
    parser.add_argument("--changed", type=int, default=10, help="jobs whose full fields the second step asks")
    options = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench: run as root (it enters the second cluster's namespaces)")
    shell = LoginShell()
    others = submit_others(options.others) if options.others else []
    records = len(shell.run(["squeue", "-h", "--states=all", "-o", "%i"])["stdout"].split())
    results: dict = {
        "started": time.strftime("%Y-%m-%d %H:%M"),
        "slurm": shell.run(["squeue", "--version"])["stdout"].strip(),
        "records": records,
        "others": len(others),
        "changed": options.changed,
        "sizes": {},
    }
    try:
        for size in (int(text) for text in options.jobs.split(",")):
            job_ids = submit_held(shell, size)
            try:
                results["sizes"][size] = measure(shell, job_ids, options.rounds, options.changed)
            finally:
                cancel(shell.run, job_ids)
    finally:
        cancel(as_root, others)
        results["load"] = " ".join(f"{value:.2f}" for value in os.getloadavg())
        shell.close()
    OUT.mkdir(exist_ok=True)
    (OUT / "poll_query.json").write_text(json.dumps(results, indent=1))
    (OUT / "poll_query.md").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
