"""Section 7: a bundle of jobs of known length through the agent's queue, against the ideal and no cap.

N independent jobs of length L (`sleep`) go through `milex-run` with `max_submitted=C` on the
machine; the wall time runs from `milex-run`'s start to the last job's end as SLURM records it
(the job-completion log's EndTime, truncated to the second). Side by side in the same run: the
ideal, ceil(N/C) * L (the cap full at all times); the same bundle through `milex-run` with no
cap; and the same jobs all submitted at once by `sbatch` on the node (four at a time, as the
agent does), so that SLURM itself holds them. The node advertises exactly C CPUs during the
section (the cluster is restarted with `MILEX_CLUSTER_CPUS=C` if it has another count, and put
back after), so no alternative runs more than C jobs at once: the node is as narrow as the cap,
never narrower, and "no cap" is SLURM's own queue at the same width. `max_submitted` counts
every job of ours in SLURM, so the section first cancels the run's jobs so far (the load
section leaves held ones) and waits until the agent has seen them end.

Each job also writes `date +%s.%N` when it starts and ends (one host, one clock). With at most C
jobs at once, the i-th job to start after the first C took the slot of the i-th job to end: the
*refill* (that start less that end) is the time a free slot stays empty. For the queue it is
split by the agent's journal (event times) into three steps: the end *seen* by a poll (COMPLETED
recorded), the job taking the slot *released* (its sbatch answered, after that poll), and
*started* by SLURM (sbatch's answer to the job's first line).

Where the time goes (full run, 1,000 jobs of 2 s, cap 100, 2 cores shared): the queue took 2.6x
the ideal and 1.5x SLURM's own queue; a refill took 3.0 s (median) against 1.1 to 1.4 s without
the agent's queue. Of it:

1. seen, 1.0 s (p95 2.3 s): SLURM's completion, then the agent's next status poll, every
   `POLL_INTERVAL` (2 s) while states change; while nothing changes the interval doubles up to
   `MAX_POLL_INTERVAL` (10 s), so jobs longer than a few intervals wait up to 10 s for release;
2. released, 1.1 s (p95 1.5 s), of which only about 0.2 s is sbatch (100 calls, four at a time,
   ~7 ms each here; 50 to 500 ms each on a production controller: 1.2 to 12 s per 100). The
   rest is the agent's loop: the releases a poll starts are made after the loop stepped its
   submissions, and nothing wakes it for them, so they wait for its next turn, up to 1 s (the
   loop's longest sleep). With a wake-up after the release (an experiment, not committed) this
   step fell to 0.21 s (p95 0.80 s) and the queue's wall time from 52 s to 42 s (2.1x the ideal,
   1.1x no cap); in the quick run from 0.91 s to 0.03 s, and 3.3x to 1.9x the ideal.
   `RELEASE_PER_POLL` (100) also bounds a release: a cap above 100 is never refilled in one
   poll, and a bundle without any cap goes in 100 jobs per poll too;
3. started, 0.8 s: SLURM's scheduling and the node's launch of 100 jobs on 2 cores (the same
   for every alternative).

Whole waves also lock onto the poll: a wave released just after a poll ends L + launch later,
and waits for the first poll after that, so a wave costs the poll intervals that cover L and
the launch, plus the release, rather than L. What would lower it: waking the loop for the releases a poll
starts (above); polling again soon after the queue's running jobs are due to end, and not
backing off while jobs wait in the queue; a release budget as large as the room; and, where
the cluster's limits allow (`MaxSubmitJobs` above `MaxJobs`), submitting a few jobs past the
running cap, so SLURM starts the next at once.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from bench.login_node import LoginNode
from bench.modes import Mode
from bench.stats import summarize
from bench.world import DEFAULT_POLL, MACHINE, Laptop, Ledger

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
SUBMITTERS = 4  # sbatch calls at once for the jobs submitted all at once (as the agent's bundle)
RAW_SUBMIT = """
import concurrent.futures, json, subprocess, sys
count, length, marks = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def submit(i):
    steps = f"date +%s.%N > {marks}/raw-{i}.start; sleep {length}; date +%s.%N > {marks}/raw-{i}.end"
    out = subprocess.run(["sbatch", "--parsable", "--mem=10M", "--job-name=bench-queue-raw", "--chdir=/",
                          "--output=/dev/null", "--wrap", steps], capture_output=True, text=True, check=True)
    return out.stdout.strip().split(";")[0]
with concurrent.futures.ThreadPoolExecutor(int(sys.argv[4])) as pool:
    print(json.dumps(list(pool.map(submit, range(count)))))
"""


def measure(laptop: Laptop, ledger: Ledger, mode: Mode) -> dict:
    count, cap, length = mode.queue_jobs, mode.queue_cap, mode.queue_length
    ideal = math.ceil(count / cap) * length
    runs: dict[str, dict] = {}
    _quiet(laptop.node, ledger)  # the cap counts every job of ours in SLURM, earlier sections' too
    with node_cpus(cap):
        for tag, label, run in (
            (
                "queue",
                f"`milex-run`, max_submitted={cap}",
                lambda: _milex_run(laptop, ledger, "queue", mode, cap),
            ),
            ("uncapped", "`milex-run`, no cap", lambda: _milex_run(laptop, ledger, "uncapped", mode, None)),
            ("raw", f"`sbatch` of all {count} at once on the node", lambda: _raw(laptop, ledger, mode)),
        ):
            start, job_ids = run()
            runs[tag] = {"label": label, **_timeline(laptop.node, tag, start, job_ids, cap)}
            if tag == "queue":  # the others have no refill of the agent's own
                runs[tag]["steps"] = _steps(laptop.node, laptop.node.marks, tag, cap)
    for run in runs.values():
        run["over_ideal"] = run["wall"] / ideal
        run["overhead_per_wave"] = (run["wall"] - ideal) / math.ceil(count / cap)
    return {
        "jobs": count,
        "cap": cap,
        "length": length,
        "ideal": ideal,
        "waves": math.ceil(count / cap),
        "poll": f"agent's poll: {DEFAULT_POLL[0]:g} s, doubling to {DEFAULT_POLL[1]:g} s while idle",
        "runs": runs,
        "queue_over_uncapped": runs["queue"]["wall"] / runs["uncapped"]["wall"],
        "queue_over_raw": runs["queue"]["wall"] / runs["raw"]["wall"],
    }


# ---- the node: exactly `cap` CPUs, so that no alternative runs more jobs at once than the cap --------


def _node() -> int:
    out = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0].rstrip("+"))


@contextlib.contextmanager
def node_cpus(cpus: int) -> Iterator[None]:
    """The test cluster's node advertises `cpus` CPUs inside the context (restarted if need be)."""
    before = _node()
    if before != cpus:
        _restart(cpus)
    try:
        yield
    finally:
        if before != cpus:
            _restart(before)


def _restart(cpus: int) -> None:
    env = {**os.environ, "MILEX_CLUSTER_CPUS": str(cpus)}
    for script in ("slurm-down.sh", "slurm-up.sh"):
        subprocess.run([str(DEPLOY / script)], env=env, capture_output=True, check=True, timeout=300)


# ---- the alternatives: each returns when its jobs have ended, with its start and its job ids --------


def _milex_run(
    laptop: Laptop, ledger: Ledger, tag: str, mode: Mode, cap: int | None
) -> tuple[float, list[str]]:
    from milex.config.file import load_config
    from milex.records import load_submissions, now_stamp, save_bundle
    from milex_common.model import Bundle, Job, SlurmOptions

    marks = laptop.node.marks
    jobs = {}
    for index in range(mode.queue_jobs):
        steps = [f"date +%s.%N > {marks}/{tag}-{index}.start", f"sleep {mode.queue_length}",
                 f"date +%s.%N > {marks}/{tag}-{index}.end"]  # fmt: skip
        jobs[f"j{index:04d}"] = Job(
            name=f"j{index:04d}", script="true", pre_commands=steps, slurm=SlurmOptions(mem="10M")
        )
    name = f"bench-queue-{tag}"
    jobs_dir = load_config().jobs_dir
    stem = save_bundle(jobs_dir, Bundle(name=name, created=now_stamp(), jobs=jobs)).stem
    _set_cap(laptop, cap)
    timeout = str(math.ceil(mode.queue_jobs / mode.queue_cap) * mode.queue_length * 3 + 120)
    start = time.time()
    try:
        laptop.milex("milex-run", name, "--machine", MACHINE, "--wait", "--timeout", timeout)
    finally:
        records = load_submissions(jobs_dir, stem)
        job_ids = [job.job_id for job in records[-1].jobs.values() if job.job_id] if records else []
        ledger.add(job_ids)
        _set_cap(laptop, None)
    return start, job_ids


def _set_cap(laptop: Laptop, cap: int | None) -> None:
    """`max_submitted` of the benchmark's machine (read by each `milex-run`)."""
    config = json.loads(laptop.config.read_text())
    config[MACHINE].pop("max_submitted", None)
    if cap is not None:
        config[MACHINE]["max_submitted"] = cap
    laptop.config.write_text(json.dumps(config, indent=4))


def _raw(laptop: Laptop, ledger: Ledger, mode: Mode) -> tuple[float, list[str]]:
    from bench.world import active

    argv = laptop.node.command("/usr/bin/python3", "-c", RAW_SUBMIT, str(mode.queue_jobs),
                               str(mode.queue_length), str(laptop.node.marks), str(SUBMITTERS))  # fmt: skip
    start = time.time()
    done = subprocess.run(argv, capture_output=True, text=True, cwd="/", timeout=600, check=True)
    job_ids: list[str] = json.loads(done.stdout)
    ledger.add(job_ids)
    deadline = time.monotonic() + math.ceil(mode.queue_jobs / mode.queue_cap) * mode.queue_length * 3 + 120
    while active(job_ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the {len(job_ids)} jobs submitted at once did not end in time")
        time.sleep(0.5)
    return start, job_ids


# ---- what happened: SLURM's record of each job's end, and the jobs' own clocks -----------------------


def _timeline(node: LoginNode, tag: str, start: float, job_ids: list[str], cap: int) -> dict:
    """Wall time from `start` to the last end SLURM recorded; refill delays from the jobs' marks."""
    marks = node.marks
    ended, strays = _slurm_ends(job_ids, node.uid)
    starts = sorted(float(path.read_text()) for path in marks.glob(f"{tag}-*.start"))
    ends = sorted(float(path.read_text()) for path in marks.glob(f"{tag}-*.end"))
    if len(ended) < len(job_ids) or len(ends) < len(job_ids):
        raise RuntimeError(
            f"{tag}: of {len(job_ids)} jobs, {len(ended)} ended in SLURM's completion log, "
            f"{len(ends)} wrote their end"
        )
    refill = [begun - freed for begun, freed in zip(starts[cap:], ends, strict=False)]
    return {
        "submitted": len(job_ids),
        "wall": max(ended) - start,
        "wall_marks": ends[-1] - start,
        "first_start": starts[0] - start,
        "refill": summarize(refill),
        "most_at_once": _most_at_once(starts, ends),
        "other_jobs": strays,  # jobs of ours in SLURM that the run does not know: submitted twice
    }


def _steps(node: LoginNode, marks: Path, tag: str, cap: int) -> dict:
    """A refill in three steps, from the agent's journal (its event times) and the jobs' marks:
    `seen` (a job's end to the poll that recorded it COMPLETED), `released` (that poll to the
    sbatch answer of the job taking its slot, paired in order as the refill is) and `started`
    (sbatch's answer to the job's first line: SLURM's scheduling and the node's launch)."""
    times = _journal_events(node, f"bench-queue-{tag}_")
    ended, begun, seen, started = [], [], [], []
    for name, events in times.items():
        index = int(name[1:])
        start, end = (float((marks / f"{tag}-{index}.{part}").read_text()) for part in ("start", "end"))
        seen.append(events["COMPLETED"] - end)
        started.append(start - events["SUBMITTED"])
        ended.append(events["COMPLETED"])
        begun.append(events["SUBMITTED"])
    released = [taken - freed for taken, freed in zip(sorted(begun)[cap:], sorted(ended), strict=False)]
    return {"seen": summarize(seen), "released": summarize(released), "started": summarize(started)}


def _quiet(node: LoginNode, ledger: Ledger, wait: float = 60.0) -> None:
    """Cancel this run's jobs so far, and wait until the agent's journal has none unfinished."""
    from milex_common.model import JobState

    ledger.cancel()
    journals = list(node.run_dir.rglob("journal.sqlite"))
    deadline = time.monotonic() + wait
    while journals:
        with contextlib.closing(sqlite3.connect(f"file:{journals[0]}?mode=ro", uri=True)) as db:
            states = [JobState(state) for (state,) in db.execute("SELECT state FROM jobs")]
        if all(state.finished for state in states):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the agent still tracks unfinished jobs after {wait:.0f} s")
        time.sleep(0.5)


def _journal_events(node: LoginNode, prefix: str) -> dict[str, dict[str, float]]:
    """{job name: {state: the first time the agent's journal recorded it}} for SUBMITTED and COMPLETED."""
    (path,) = node.run_dir.rglob("journal.sqlite")
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT jobs.name, events.state, MIN(events.time) FROM events JOIN jobs USING (key)"
            " WHERE jobs.bundle LIKE ? AND events.state IN ('SUBMITTED', 'COMPLETED')"
            " GROUP BY jobs.name, events.state",
            (prefix + "%",),
        ).fetchall()
    times: dict[str, dict[str, float]] = {}
    for name, state, moment in rows:
        times.setdefault(name, {})[state] = moment
    return {name: events for name, events in times.items() if len(events) == 2}


def _most_at_once(starts: list[float], ends: list[float]) -> int:
    """The most jobs running at once (from their marks): proves the cap held."""
    edges = sorted([(moment, 1) for moment in starts] + [(moment, -1) for moment in ends])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def _slurm_ends(job_ids: list[str], uid: int, wait: float = 30.0) -> tuple[list[float], int]:
    """The EndTime of each of `job_ids` in SLURM's job-completion log (epoch seconds, truncated to the
    second), and how many other jobs of user `uid` it has among their ids: a job submitted twice."""
    wanted = set(job_ids)
    lowest, highest = min(map(int, job_ids)), max(map(int, job_ids))
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    log = next(line.split("=", 1)[1].strip() for line in config.splitlines() if line.startswith("JobCompLoc"))
    deadline = time.monotonic() + wait
    while True:
        ends, strays = {}, 0
        for line in Path(log).read_text().splitlines():
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            if fields.get("JobId") in wanted:
                ends[fields["JobId"]] = datetime.fromisoformat(fields["EndTime"]).timestamp()
            elif fields.get("UserId", "").endswith(f"({uid})") and lowest < int(fields["JobId"]) < highest:
                strays += 1
        if len(ends) == len(wanted) or time.monotonic() > deadline:
            return list(ends.values()), strays
        time.sleep(0.5)
