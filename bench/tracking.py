"""Section 9: an agent tracking 10,000 to 100,000 unfinished jobs, and how each cost grows with N.

A local agent (`milex-agent run --dir`, no SSH) is given a journal filled through the Journal API
with N jobs all PENDING, and a fake `squeue` first on its PATH that prints a row for each (so
squeue "knows" them all, as a cluster would; no test controller holds 100,000 jobs: MaxJobCount)
and logs each call. The fake prints the first job RUNNING: the agent's first poll after the
restart records exactly one event, and a client saying hello sees its number go up, which times
the first poll from the spawn. Then, with a fixed poll interval, the fake's log gives the squeue
calls per interval; the agent's CPU and resident memory are read at the end. Last, the cost of
one status poll (read the journal, run and parse squeue, record) is timed in this process, step
by step, on the same journal (the agent stopped).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench.footprint import spawned_agent
from bench.growth import exponent, per_unit
from bench.load import cpu_seconds, install_wrappers, process_memory, read_calls
from bench.modes import Mode
from bench.world import BIN

if TYPE_CHECKING:
    from milex_common.protocol import TrackedJob

FAKE_ID_BASE = 70_000_000  # above MaxJobId (67,043,328): never a real job
BUNDLE = "bench-tracking_20240101000000"
CHUNK = 5000  # jobs per journal transaction while filling
FAKE_SQUEUE = """#!/bin/bash
# Milex bench: a squeue that knows every job of the journal (rows in {rows}); logs each call.
[[ $1 == --version ]] && exec echo "slurm 22.05.8"
start=$EPOCHREALTIME
cat {rows}
echo "$start $EPOCHREALTIME squeue 0 0" >> {log}
"""


def measure(mode: Mode) -> dict:
    root = Path(tempfile.mkdtemp(prefix="milex-bench-tracking-"))
    try:
        sizes = {n: _size(root / str(n), n, mode) for n in mode.tracking_sizes}
    finally:
        shutil.rmtree(root, ignore_errors=True) if not os.environ.get("KEEP") else None
    growth = {}
    for name, read in (
        ("memory_mb", lambda row: row["memory_mb"]["VmRSS"]),
        ("start_to_hello_seconds", lambda row: row["start_to_hello_seconds"]),
        ("start_to_first_poll_seconds", lambda row: row["start_to_first_poll_seconds"]),
        ("poll_seconds", lambda row: row["poll"]["total"]),
    ):
        costs = {n: read(row) for n, row in sizes.items()}
        growth[name] = {"exponent": exponent(costs), "per_job": per_unit(costs)}
    return {"interval": mode.tracking_interval, "window": mode.tracking_window, "sizes": sizes,
            "growth": growth}  # fmt: skip


def _size(directory: Path, jobs: int, mode: Mode) -> dict:
    directory.mkdir(parents=True)
    fill_seconds = fill(directory, jobs)
    bin_dir, log = directory / "bin", directory / "calls.log"
    bin_dir.mkdir()
    install_wrappers(bin_dir, log)  # sacct, scontrol, ... counted; squeue replaced by the fake
    fake_squeue(bin_dir, directory / "rows", log, jobs)
    path = f"{bin_dir}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}"
    agent = _agent(directory, {**os.environ, "PATH": path}, mode)
    agent["fill_seconds"] = fill_seconds
    agent["poll"] = poll_cost(directory, path, mode.tracking_polls)
    return agent


def fill(directory: Path, jobs: int) -> float:
    """Journal `jobs` jobs, submitted and PENDING, through the Journal API; seconds taken."""
    from milex_agent.journal import Journal
    from milex_common.model import JobState, JobStatus

    start = time.perf_counter()
    journal = Journal(directory / "journal.sqlite")
    for first in range(0, jobs, CHUNK):
        indices = range(first, min(first + CHUNK, jobs))
        tracked = [_tracked(directory, index) for index in indices]
        journal.begin_many(tracked, scheduler="slurm", machine_path=str(directory))
        ids = [str(FAKE_ID_BASE + index) for index in indices]
        journal.submitted_many([(job.key, job_id) for job, job_id in zip(tracked, ids, strict=True)])
        pending = JobStatus(job_id="", state=JobState.PENDING, reason="JobHeldUser")
        journal.update((job.key, pending) for job in tracked)
    journal.close()
    return time.perf_counter() - start


def _tracked(directory: Path, index: int) -> TrackedJob:
    from milex_common.model import JobState
    from milex_common.protocol import TrackedJob

    name = f"j{index:06d}"
    stem = f"{directory}/slurm/{BUNDLE}_{name}"
    return TrackedJob(key=f"{BUNDLE}/{name}/fill", bundle=BUNDLE, name=name, job_id="",
                      state=JobState.SUBMITTED, script=f"{stem}.sh", stdout=f"{stem}-%j.out",
                      stderr=f"{stem}-%j.err")  # fmt: skip


def fake_squeue(bin_dir: Path, rows: Path, log: Path, jobs: int) -> None:
    """A squeue printing, as the agent's format asks, every job PENDING but the first (RUNNING)."""
    with rows.open("w") as out:
        for index in range(jobs):
            job_id = FAKE_ID_BASE + index
            state, reason = ("RUNNING", "None") if index == 0 else ("PENDING", "JobHeldUser")
            out.write(f"{job_id}|{job_id}|{state}|{reason}|0|N/A|\n")
    squeue = bin_dir / "squeue"
    squeue.write_text(FAKE_SQUEUE.format(rows=rows, log=log))
    squeue.chmod(0o755)


def _agent(directory: Path, env: dict[str, str], mode: Mode) -> dict:
    """Spawn the agent on the journal: its first answer, its first poll, then a window of polls."""
    from milex.machine.settings import client_version
    from milex_common.connection import AgentConnection

    interval = str(mode.tracking_interval)
    argv = [str(BIN / "milex-agent"), "run", "--dir", str(directory),
            "--poll-interval", interval, "--max-interval", interval]  # fmt: skip
    with sqlite3.connect(directory / "journal.sqlite") as journal:
        filled = journal.execute("SELECT MAX(seq) FROM events").fetchone()[0]
    began = time.perf_counter()
    with spawned_agent(argv, env, directory) as (agent, socket):
        with AgentConnection(f"ipc://{socket}", timeout=120) as connection:
            last_seq = connection.hello(client_version()).last_seq
            to_hello = time.perf_counter() - began
            while last_seq == filled:  # the first poll's one event (it may come before the hello)
                last_seq = connection.hello(client_version()).last_seq
                if time.perf_counter() - began > 300:
                    raise RuntimeError("the agent's first poll recorded no event in 300 s")
                time.sleep(0.005)
            to_first_poll = time.perf_counter() - began
        start, cpu = time.time(), cpu_seconds(agent.pid)
        time.sleep(mode.tracking_window)
        end, cpu = time.time(), cpu_seconds(agent.pid) - cpu
        memory = process_memory(agent.pid)
    calls = [call for call in read_calls(directory / "calls.log") if start <= call.start < end]
    squeue = [call for call in calls if call.name == "squeue"]
    intervals = (end - start) / mode.tracking_interval
    return {
        "jobs": len((directory / "rows").read_text().splitlines()),
        "start_to_hello_seconds": to_hello,
        "start_to_first_poll_seconds": to_first_poll,
        "squeue_per_interval": len(squeue) / intervals,
        "other_commands": len(calls) - len(squeue),
        "cpu_fraction": cpu / (end - start),
        "memory_mb": memory,
    }


def poll_cost(directory: Path, path: str, rounds: int) -> dict[str, float]:
    """Seconds of one status poll in this process, by step (median of `rounds` after a first one):
    `plan` reads the unfinished jobs from the journal, `query` runs squeue and parses its rows,
    `apply` records what changed (nothing: the poll hands the journal none)."""
    from milex_agent.journal import Journal
    from milex_agent.poller import Poller
    from milex_agent.state import SchedulerCache

    saved = os.environ["PATH"]
    os.environ["PATH"] = path
    journal = Journal(directory / "journal.sqlite")
    try:
        poller = Poller(journal, SchedulerCache())
        poller.poll()  # it learns squeue's version once; the first job's change is recorded
        steps: dict[str, list[float]] = {"plan": [], "query": [], "apply": [], "total": []}
        for _ in range(rounds):
            began = time.perf_counter()
            plan = poller.plan()
            planned = time.perf_counter()
            updates = poller.query(plan)
            queried = time.perf_counter()
            events = poller.apply(updates)
            applied = time.perf_counter()
            assert not events and not updates  # nothing changed: the journal is not even asked
            for step, seconds in (("plan", planned - began), ("query", queried - planned),
                                  ("apply", applied - queried), ("total", applied - began)):  # fmt: skip
                steps[step].append(seconds)
    finally:
        journal.close()
        os.environ["PATH"] = saved
    return {step: statistics.median(samples) for step, samples in steps.items()}
