"""Section 4: from a job's state change in SLURM to the event arriving at a watching client.

Each job writes a timestamp when it starts and just before it ends (`date +%s.%N`, same clock
as the client's: one host); a client following the agent's events notes when RUNNING and
COMPLETED arrive. The agent runs with its default poll interval and back-off. The ends include
SLURM's own completion work (epilog, job record) before `squeue` reports COMPLETED.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from bench.modes import Mode
from bench.stats import summarize
from bench.world import DEFAULT_POLL, MACHINE, Laptop, Ledger

WAIT_SLACK = 60.0


class EventLog:
    """Every event a client receives, with the time it arrived, from a background thread."""

    def __init__(self) -> None:
        from milex.config.file import load_config
        from milex.machine.endpoint import connect
        from milex.machine.settings import client_version

        self.machine = load_config().machine(MACHINE)
        with connect(self.machine) as connection:
            self.since = connection.hello(client_version()).last_seq
        self.arrivals: dict[tuple[str, str], float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        from milex.watch import follow_events

        for event in follow_events(self.machine, self.since, heartbeat=0.5):
            if event is not None:
                self.arrivals.setdefault((event.job_id, event.state.value), time.time())
            if self.stop.is_set():
                return

    def wait_for(self, job_ids: list[str], state: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any((job_id, state) not in self.arrivals for job_id in job_ids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {state} event for some of {job_ids} within {timeout:.0f} s")
            time.sleep(0.05)


def measure(laptop: Laptop, ledger: Ledger, mode: Mode) -> dict:
    events = EventLog()
    latencies: dict[str, list[float]] = {"RUNNING": [], "COMPLETED": []}
    lone: list[float] = []
    try:
        for number, wave in enumerate(mode.status_waves):
            _wave(events, ledger, laptop.node.marks, f"w{number}", wave, latencies)
        for number, duration in enumerate(mode.lone_jobs):
            found: dict[str, list[float]] = {"RUNNING": [], "COMPLETED": []}
            _wave(events, ledger, laptop.node.marks, f"lone{number}", [duration], found)
            lone += found["COMPLETED"]
    finally:
        events.stop.set()
    return {
        "poll": f"agent defaults: {DEFAULT_POLL[0]:g} s, doubling to {DEFAULT_POLL[1]:g} s while nothing changes",  # noqa: E501
        "running": {**summarize(latencies["RUNNING"]), "samples": latencies["RUNNING"]},
        "completed": {**summarize(latencies["COMPLETED"]), "samples": latencies["COMPLETED"]},
        "lone_completed": {**summarize(lone), "samples": lone, "durations": mode.lone_jobs},
    }


def _wave(
    events: EventLog,
    ledger: Ledger,
    marks: Path,
    tag: str,
    durations: list[float],
    out: dict[str, list[float]],
) -> None:
    import milex
    from milex_common.model import Job

    jobs = []
    for index, duration in enumerate(durations):
        mark = marks / f"{tag}-{index}"
        steps = [f"date +%s.%N > {mark}.start", f"sleep {duration}", f"date +%s.%N > {mark}.end"]
        jobs.append(Job(name=f"{tag}-{index}", script="true", pre_commands=steps))
    submission = milex.submit(jobs, bundle=f"bench-status-{tag}", machine=MACHINE)
    job_ids = [submission.jobs[job.name].job_id for job in jobs]
    ledger.add(job_ids)
    events.wait_for(job_ids, "COMPLETED", max(durations) + WAIT_SLACK)
    for index, job_id in enumerate(job_ids):
        for state, suffix in (("RUNNING", "start"), ("COMPLETED", "end")):
            arrival = events.arrivals.get((job_id, state))
            mark = marks / f"{tag}-{index}.{suffix}"
            if arrival is not None and mark.exists():  # a job seen only once it had ended has no RUNNING
                out[state].append(arrival - float(mark.read_text()))
