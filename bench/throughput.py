"""Section 2: jobs per second for a whole bundle in one request, against loops of sbatch and of ssh.

While the independent bundle is submitted, a second client keeps saying hello to the agent: the
longest wait shows how long one big submission keeps the agent from answering anybody else.
"""

from __future__ import annotations

import subprocess
import threading
import time

from bench.methods import RAW, NodeTimer, held_job, parse_job_id
from bench.modes import Mode
from bench.stats import summarize
from bench.world import MACHINE, Laptop, Ledger


def measure(laptop: Laptop, ledger: Ledger, node: NodeTimer, mode: Mode) -> tuple[dict, list[str]]:
    """The section's results, and the ids of the independent Milex bundle (left pending for section 3)."""
    results: dict[str, dict] = {}
    for chain in (False, True):
        sample = node.loop(mode.raw_loop, chain=chain)
        ledger.add(sample.job_ids)
        results[f"raw_sbatch_loop{'_chain' if chain else ''}"] = _rate(
            f"raw `sbatch` loop on the node{', chained' if chain else ''}", mode.raw_loop, sample.seconds
        )
        ledger.cancel(sample.job_ids)
    start, ssh_ids = time.perf_counter(), []
    for _ in range(mode.ssh_loop):
        ssh_ids.append(
            parse_job_id(subprocess.run(laptop.ssh(RAW), capture_output=True, text=True, check=True).stdout)
        )
    results["ssh_fresh_loop"] = _rate("`ssh host sbatch` loop", mode.ssh_loop, time.perf_counter() - start)
    ledger.add(ssh_ids)
    ledger.cancel(ssh_ids)

    chain_ids = milex_bundle(results, ledger, mode.bundle, chain=True)
    ledger.cancel(chain_ids)
    probe = HelloProbe()
    with probe:
        independent = milex_bundle(results, ledger, mode.bundle, chain=False)
    results["milex_bundle"]["hello_during_submission"] = summarize(probe.samples)
    return results, independent


def _rate(label: str, jobs: int, seconds: float) -> dict:
    return {"label": label, "jobs": jobs, "seconds": seconds, "jobs_per_second": jobs / seconds}


def milex_bundle(results: dict, ledger: Ledger, size: int, *, chain: bool) -> list[str]:
    import milex

    jobs = []
    for index in range(size):
        job = held_job(f"j{index:04d}")
        if chain and index:
            job.dependencies = [f"j{index - 1:04d}"]  # type: ignore[attr-defined]
        jobs.append(job)
    name = "bench-chain" if chain else "bench-bundle"
    start = time.perf_counter()
    submission = milex.submit(jobs, bundle=name, machine=MACHINE)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    job_ids = [job.job_id for job in submission.jobs.values()]
    ledger.add(job_ids)
    label = f"Milex bundle of {size}{', chained' if chain else ''}, one request"
    results[f"milex_bundle{'_chain' if chain else ''}"] = {
        **_rate(label, size, seconds),
        "submitted": len(job_ids),
    }
    return job_ids


class HelloProbe:
    """Another client connecting (and saying hello), timed every 0.2 s while the context runs."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HelloProbe:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(300)

    def _run(self) -> None:
        from milex.config.file import load_config
        from milex.machine.endpoint import connect

        machine = load_config().machine(MACHINE)
        while not self.stop.is_set():
            start = time.perf_counter()
            with connect(machine, timeout=600):  # connecting says hello and waits for the answer
                pass
            self.samples.append(time.perf_counter() - start)
            self.stop.wait(0.2)
