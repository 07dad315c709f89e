"""Section 8: bundles of 1,000 to 10,000 jobs, and 1 to 50 clients watching at once; how each grows.

Bundles: each size N, chained (`afterok`) then independent, in one `milex.submit()` of held jobs,
each cancelled once timed (the largest independent one is left pending to be watched). Clients:
the agent is restarted with the logging SLURM wrappers first on its PATH and a fixed poll
interval, resuming that bundle; for each count of watching clients (separate processes,
bench/watcher.py), its squeue calls, slurmctld's RPCs from the account, its CPU and memory are
read over a window, then one more job is submitted and each client's arrival time of its first
event is noted (one host, one clock): how fast an event reaches them all.
"""

from __future__ import annotations

import itertools
import subprocess
import time

from bench.growth import exponent, per_unit
from bench.load import (
    Window,
    agent_memory,
    agent_pid,
    cpu_seconds,
    install_wrappers,
    read_calls,
    rpcs_by_user,
    start_watcher,
)
from bench.methods import MilexApi
from bench.modes import Mode
from bench.stats import summarize
from bench.throughput import milex_bundle
from bench.world import MACHINE, Laptop, Ledger

SHAPES = ("independent", "chain")


def measure(laptop: Laptop, ledger: Ledger, mode: Mode) -> dict:
    bundles, watched = _bundles(ledger, mode.scale_bundles)
    try:
        clients = _clients(laptop, ledger, watched, mode)
    finally:
        ledger.cancel(watched)
    return {"bundles": bundles, "clients": clients}


def _bundles(ledger: Ledger, sizes: tuple[int, ...]) -> tuple[dict, list[str]]:
    """Seconds and jobs/s of each bundle, the growth of its time with N; the ids of the largest
    independent bundle, left pending."""
    found: dict[str, dict[int, dict]] = {shape: {} for shape in SHAPES}
    kept: list[str] = []
    for size in sizes:
        for shape in ("chain", "independent"):
            rows: dict[str, dict] = {}
            job_ids = milex_bundle(rows, ledger, size, chain=shape == "chain")
            [row] = rows.values()
            found[shape][size] = row
            if shape == "independent" and size == max(sizes):
                kept = job_ids
            else:
                ledger.cancel(job_ids)
    growth = {}
    for shape, rows in found.items():
        seconds = {size: row["seconds"] for size, row in rows.items()}
        growth[shape] = {"exponent": exponent(seconds), "ms_per_job": _ms(per_unit(seconds))}
    return {"sizes": found, "growth": growth}, kept


def _ms(per_job: dict[int, float]) -> dict[int, float]:
    return {size: seconds * 1000 for size, seconds in per_job.items()}


def _clients(laptop: Laptop, ledger: Ledger, watched: list[str], mode: Mode) -> dict:
    interval = mode.load_interval
    install_wrappers(laptop.node.wrappers, laptop.node.calls_log, laptop.node)
    laptop.restart_remote(counted=True, poll=(interval, interval))
    try:
        laptop.milex("milex", "status", "--machine", MACHINE, "--json")  # the tunnel up, the agent serving
        time.sleep(3 * interval)  # a few polls: the cancelled bundles are seen
        counts = {count: _watched_by(laptop, ledger, count, mode) for count in mode.scale_clients}
    finally:
        laptop.restart_remote()  # back to the defaults, without wrappers
    growth = {}
    for name, read in (
        ("agent_cpu_fraction", lambda row: row["agent_cpu_fraction"]),
        ("agent_memory_mb", lambda row: row["agent_memory_mb"]["VmRSS"]),
        ("event_spread_seconds", lambda row: row["event_delay_seconds"].get("max")),
    ):
        costs = {count: read(row) for count, row in counts.items()}
        growth[name] = exponent(costs) if None not in costs.values() else None  # type: ignore[arg-type]
    return {"jobs_watched": len(watched), "poll_interval": interval, "window": mode.scale_window,
            "counts": counts, "growth": growth}  # fmt: skip


def _watched_by(laptop: Laptop, ledger: Ledger, count: int, mode: Mode) -> dict:
    """Count the agent's SLURM calls while `count` clients watch; then time one event to them all."""
    clients = [start_watcher(laptop) for _ in range(count)]
    try:
        for client in clients:
            assert client.stdout is not None
            if client.stdout.readline().strip() != "ready":
                raise RuntimeError(
                    f"a watching client failed: {client.stderr.read() if client.stderr else ''}"
                )
        pid = agent_pid(laptop.node)
        before, cpu = rpcs_by_user(laptop.node.name), cpu_seconds(pid)
        window = Window(start=time.time())
        time.sleep(mode.scale_window)
        window.end = time.time()
        after = rpcs_by_user(laptop.node.name)
        window.rpcs = None if before is None or after is None else after - before
        window.cpu_seconds = cpu_seconds(pid) - cpu
        memory = agent_memory(laptop.node)
        submitted = time.time()
        sample = MilexApi().sample()
        answered = time.time()
        ledger.add(sample.job_ids)
        time.sleep(max(2.0, 2 * mode.load_interval))  # its events reach every client
    finally:
        for client in clients:
            client.terminate()
    arrivals = [_first_event(client, sample.job_ids[0]) for client in clients]
    seconds = window.end - window.start
    calls = [call for call in read_calls(laptop.node.calls_log) if window.start <= call.start < window.end]
    intervals = seconds / mode.load_interval
    squeue = [call for call in calls if call.name == "squeue"]
    gaps = [later.start - earlier.start for earlier, later in itertools.pairwise(squeue)]
    return {
        "clients": count,
        "squeue_per_interval": len(squeue) / intervals,
        "commands_per_interval": len(calls) / intervals,
        "min_gap_between_squeue": min(gaps) if gaps else None,
        "slurm_rpcs_per_interval": None if window.rpcs is None else window.rpcs / intervals,
        "agent_cpu_fraction": window.cpu_seconds / seconds,
        "agent_memory_mb": memory,
        "submit_seconds": answered - submitted,
        "event_delay_seconds": summarize([arrival - answered for arrival in arrivals if arrival is not None]),
        "clients_without_the_event": sum(arrival is None for arrival in arrivals),
    }


def _first_event(client: subprocess.Popen[str], job_id: str) -> float | None:
    """When a watching client printed its first event of `job_id` (its lines: `SEQ JOB_ID STATE TIME`)."""
    output, _ = client.communicate(timeout=30)
    for line in output.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[1] == job_id:
            return float(fields[3])
    return None
