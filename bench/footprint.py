"""Section 5: the agent's resident memory with many tracked jobs, and its restart from the journal.

A local agent (this host, no SSH) is given a journal filled through the Journal API, then started
with `milex-agent run --dir`; restart time is from spawning it to its first hello answer. Job ids
are above SLURM's MaxJobId, so squeue knows none of them: the `completed` variant is what an
agent holds after a month of work (nothing left to poll); the `unfinished` variant makes every
poll ask squeue about all of them (then the job-completion log, as for jobs SLURM forgot).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.load import cpu_seconds, install_wrappers, process_memory, read_calls
from bench.modes import Mode
from bench.world import BIN

FAKE_ID_BASE = 70_000_000  # above MaxJobId (67,043,328): never a real job
VARIANTS = ("empty", "completed", "unfinished")


def measure(mode: Mode) -> dict:
    root = Path(tempfile.mkdtemp(prefix="milex-bench-agent-"))
    try:
        wrappers = root / "bin"
        wrappers.mkdir()
        results = {}
        for variant in VARIANTS:
            jobs = 0 if variant == "empty" else mode.footprint_jobs
            log = root / f"{variant}-calls.log"
            install_wrappers(wrappers, log)
            results[variant] = _variant(root / variant, jobs, variant == "completed", wrappers, log, mode)
        results["poll_cost"] = poll_cost(root / "poll", mode.poll_sizes)
        return results
    finally:
        shutil.rmtree(root, ignore_errors=True)


def poll_cost(directory: Path, sizes: tuple[int, ...]) -> dict:
    """Seconds the agent's SLURM status query takes for N jobs that squeue knows, and how it grows.

    A fake `squeue` first on PATH prints N pending jobs in the agent's own format, so only Milex's
    side is timed (running, reading and parsing squeue): no cluster holds that many jobs for a test.
    """
    from milex_agent.scheduler.slurm.scheduler import SlurmScheduler

    directory.mkdir()
    seconds = {}
    path = os.environ["PATH"]
    os.environ["PATH"] = f"{directory}{os.pathsep}{path}"
    try:
        for size in sizes:
            rows = directory / f"rows-{size}"
            fields = ("PENDING", "JobHeldUser", "0")
            rows.write_text(
                "".join(
                    f"{FAKE_ID_BASE + i:<256}|{FAKE_ID_BASE + i:<256}|"
                    + "".join(f"{field:<256}|" for field in fields)
                    + "\n"
                    for i in range(size)
                )
            )
            version = 'if [ "$1" = --version ]; then exec echo "slurm 22.05.8"; fi'
            (directory / "squeue").write_text(f"#!/bin/sh\n{version}\nexec cat {rows}\n")
            (directory / "squeue").chmod(0o755)
            job_ids = [str(FAKE_ID_BASE + i) for i in range(size)]
            scheduler = SlurmScheduler()
            scheduler.states(job_ids[:1])  # it learns the SLURM version once: a poll after that is timed
            start = time.perf_counter()
            states = scheduler.states(job_ids)
            seconds[size] = time.perf_counter() - start
            assert len(states) == size
    finally:
        os.environ["PATH"] = path
    small, large = min(sizes), max(sizes)
    exponent = math.log(seconds[large] / seconds[small]) / math.log(large / small)
    return {
        "seconds": seconds,
        "exponent": exponent,
        "at_10000": seconds[large] * (10_000 / large) ** exponent,
    }


def fill(directory: Path, jobs: int, *, finished: bool) -> float:
    """Journal `jobs` submitted jobs (COMPLETED if `finished`) through the Journal API; seconds taken."""
    from milex_agent.journal import Journal
    from milex_common.model import JobState, JobStatus
    from milex_common.protocol import TrackedJob

    start = time.perf_counter()
    journal = Journal(directory / "journal.sqlite")
    bundle = "bench-footprint_20240101000000"
    keys = []
    for index in range(jobs):
        key, stem = f"{bundle}/j{index:05d}/fill", f"{directory}/slurm/{bundle}_j{index:05d}"
        job = TrackedJob(
            key=key,
            bundle=bundle,
            name=f"j{index:05d}",
            job_id="",
            state=JobState.SUBMITTED,
            script=f"{stem}.sh",
            stdout=f"{stem}-%j.out",
            stderr=f"{stem}-%j.err",
        )
        journal.begin(job, scheduler="slurm", machine_path=str(directory))
        journal.submitted(key, str(FAKE_ID_BASE + index))
        keys.append(key)
    if finished:
        completed = JobStatus(job_id="", state=JobState.COMPLETED, exit_code=0)
        journal.update((key, completed) for key in keys)
    journal.close()
    return time.perf_counter() - start


@contextmanager
def spawned_agent(
    argv: list[str], env: dict[str, str], directory: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`milex-agent run` on `directory` (its output in agent.out there), once its socket exists: the
    process and the socket; stopped (SIGTERM) on leaving."""
    from milex_common.agent_layout import socket_path

    socket = socket_path(directory)
    with open(directory / "agent.out", "wb") as output:
        agent = subprocess.Popen(argv, env=env, stdout=output, stderr=output)
    try:
        while not socket.exists():
            if agent.poll() is not None:
                raise RuntimeError(f"the agent exited: {(directory / 'agent.out').read_text()[-2000:]}")
            time.sleep(0.002)
        yield agent, socket
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(60)


def _variant(directory: Path, jobs: int, finished: bool, wrappers: Path, log: Path, mode: Mode) -> dict:
    from milex.machine.settings import client_version
    from milex_common.connection import AgentConnection

    fill_seconds = fill(directory, jobs, finished=finished)
    env = {**os.environ, "PATH": f"{wrappers}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}"}
    argv = [
        str(BIN / "milex-agent"),
        "run",
        "--dir",
        str(directory),
        "--poll-interval",
        "2",
        "--max-interval",
        "30",
    ]
    began, wall = time.perf_counter(), time.time()
    with spawned_agent(argv, env, directory) as (agent, socket):
        with AgentConnection(f"ipc://{socket}", timeout=120) as connection:
            connection.hello(client_version())
        to_hello = time.perf_counter() - began
        time.sleep(mode.footprint_settle)  # the first poll has run
        cpu_before = cpu_seconds(agent.pid)
        time.sleep(mode.footprint_cpu_window)
        cpu = (cpu_seconds(agent.pid) - cpu_before) / mode.footprint_cpu_window
        memory = process_memory(agent.pid)
    squeue = [call for call in read_calls(log) if call.name == "squeue"]
    return {
        "jobs": jobs,
        "fill_seconds": fill_seconds,
        "start_to_hello_seconds": to_hello,
        "start_to_first_poll_done_seconds": squeue[0].end - wall if squeue else None,
        "squeue_calls": len(squeue),
        "squeue_seconds": [call.end - call.start for call in squeue],
        "cpu_fraction_while_idle": cpu,
        "memory_mb": memory,
    }
