"""Schedulers behind one interface: `slurm` for clusters, `local` for machines without SLURM."""

from __future__ import annotations

from pathlib import Path

from milex_agent.scheduler.base import Scheduler
from milex_common.model import MachineSettings


def scheduler_group(kind: str, machine_path: str) -> tuple[str, str]:
    """Which scheduler instance serves a job: one SLURM for every machine path, one local
    scheduler per path (each keeps its own state directory)."""
    return (kind, machine_path if kind == "local" else "")


def scheduler_for(settings: MachineSettings) -> Scheduler:
    """The scheduler that backs the machine `settings` describes."""
    if settings.scheduler == "local":
        from milex_agent.scheduler.local.scheduler import LocalScheduler

        return LocalScheduler(Path(settings.path) / "local-jobs")
    from milex_agent.scheduler.slurm.scheduler import SlurmScheduler

    return SlurmScheduler()
