"""Section 1: the latency of submitting one job, for every method, at each round-trip time.

RTT 0 is loopback: the laptop reaches sshd directly, and raw `sbatch` on the node (the floor, which
does not cross the link) is measured there only, with the API called back to back as a diagnostic.
Each RTT above 0 puts a bench/relay.py process between the laptop and sshd, adding half the RTT to
every chunk each way; the laptop's configuration, known_hosts and tunnel switch to it.

At each RTT, each round runs every method still owed a sample, in a shuffled order, so that the
load others put on the machine falls on all methods alike. Jobs are cancelled every few rounds, so
the agent is not watching an ever longer queue.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
from bench.relay import Relay
from bench.stats import summarize
from bench.world import Laptop, Ledger

CANCEL_EVERY = 20  # rounds


class Method(Protocol):
    key: str
    label: str

    def sample(self) -> Sample: ...

    def close(self) -> None: ...


def measure(laptop: Laptop, ledger: Ledger, node: NodeTimer, mode: Mode) -> dict[str, dict]:
    """The rows of every method at each RTT, keyed by the RTT in milliseconds ("0", "20", ...)."""
    found = {}
    for rtt in mode.rtts_ms:
        with _link(laptop, rtt):
            if rtt == 0:
                rows = _at_rtt(laptop, ledger, [node], mode.latency_reps)
                rows["milex_api_burst"] = _row(
                    "Milex Python API, back to back (diagnostic)",
                    _burst(ledger, mode.latency_reps["milex_api"]),
                )
            else:
                rows = _at_rtt(laptop, ledger, [], mode.rtt_reps)
        ledger.cancel()
        found[str(rtt)] = rows
    return found


@contextmanager
def _link(laptop: Laptop, rtt_ms: int) -> Iterator[None]:
    """The laptop reaches sshd through a relay of `rtt_ms` (none at 0), and directly again after."""
    direct = laptop.port
    relay = Relay.start(("127.0.0.1", direct), delay_ms=rtt_ms / 2) if rtt_ms else None
    try:
        laptop.reach_through(relay.port if relay else direct)
        yield
    finally:
        laptop.reach_through(direct)
        if relay:
            relay.close()


def _at_rtt(laptop: Laptop, ledger: Ledger, floor: list[Method], reps: dict[str, int]) -> dict[str, dict]:
    methods: list[Method] = [*floor]  # each one is made over the link in use: they connect through it
    try:
        for connected in (FreshSsh, ControlMaster, ParamikoExec):  # one by one: each made is closed
            methods.append(connected(laptop))
        methods += [MilexApi(), MilexProtocol(), MilexRun(laptop), MilexCold(laptop)]
        samples: dict[str, list[float]] = {method.key: [] for method in methods}
        for method in methods:  # warm-up, not recorded: connections, tunnel, agent, page cache
            ledger.add(method.sample().job_ids)
        _rounds(methods, samples, ledger, reps)
    finally:
        for method in methods[len(floor) :]:  # the floor's timer lives for the whole run
            method.close()
    return {m.key: _row(m.label, samples[m.key]) for m in methods}


def _row(label: str, samples: list[float]) -> dict:
    return {"label": label, **summarize(samples), "samples": samples}


def _rounds(
    methods: list[Method], samples: dict[str, list[float]], ledger: Ledger, reps: dict[str, int]
) -> None:
    rng = random.Random(20240601)
    pending: list[str] = []
    for number in range(max(reps[m.key] for m in methods)):
        order = [m for m in methods if number < reps[m.key]]
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
