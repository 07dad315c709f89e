"""Section 1: the latency of submitting one job, for every method, interleaved round by round.

Each round runs every method still owed a sample, in a shuffled order, so that the load others put
on the machine falls on all methods alike. Jobs are cancelled every few rounds, so the agent is
not watching an ever longer queue.
"""

from __future__ import annotations

import random
import time
from typing import Protocol

from bench.methods import (
    ControlMaster,
    FreshSsh,
    MilexApi,
    MilexCold,
    MilexProtocol,
    MilexRun,
    NodeTimer,
    ParamikoExec,
    Sample,
)
from bench.modes import Mode
from bench.stats import summarize
from bench.world import Laptop, Ledger

CANCEL_EVERY = 20  # rounds


class Method(Protocol):
    key: str
    label: str

    def sample(self) -> Sample: ...

    def close(self) -> None: ...


def measure(laptop: Laptop, ledger: Ledger, node: NodeTimer, mode: Mode) -> dict:
    methods: list[Method] = [
        node,
        FreshSsh(laptop),
        ControlMaster(laptop),
        ParamikoExec(laptop),
        MilexApi(),
        MilexProtocol(),
        MilexRun(laptop),
        MilexCold(laptop),
    ]
    samples: dict[str, list[float]] = {method.key: [] for method in methods}
    try:
        for method in methods:  # warm-up, not recorded: connections, tunnel, agent, page cache
            ledger.add(method.sample().job_ids)
        _rounds(methods, samples, ledger, mode)
        burst = _burst(ledger, mode.latency_reps["milex_api"])
    finally:
        for method in methods[1:]:
            method.close()
    ledger.cancel()
    results = {
        m.key: {"label": m.label, **summarize(samples[m.key]), "samples": samples[m.key]} for m in methods
    }
    results["milex_api_burst"] = {
        "label": "Milex Python API, back to back (diagnostic)",
        **summarize(burst),
        "samples": burst,
    }
    return results


def _rounds(methods: list[Method], samples: dict[str, list[float]], ledger: Ledger, mode: Mode) -> None:
    rng = random.Random(20240601)
    pending: list[str] = []
    for number in range(max(mode.latency_reps.values())):
        order = [m for m in methods if number < mode.latency_reps[m.key]]
        rng.shuffle(order)
        for method in order:
            sample = method.sample()
            samples[method.key].append(sample.seconds)
            ledger.add(sample.job_ids)
            pending += sample.job_ids
            time.sleep(0.02)  # a pause between submissions, as a person or a script doing work would make
        if (number + 1) % CANCEL_EVERY == 0:
            ledger.cancel(pending)
            pending = []


def _burst(ledger: Ledger, count: int) -> list[float]:
    """The API called in a tight loop, as a script submitting jobs one by one would."""
    api = MilexApi()
    seconds = []
    for _ in range(count):
        sample = api.sample()
        seconds.append(sample.seconds)
        ledger.add(sample.job_ids)
    return seconds
