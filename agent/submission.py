"""Submit a bundle: render each job's script, write it under `slurm/`, submit in dependency order."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgspec

from milex.agent.scheduler.base import Scheduler
from milex.common.errors import SubmitError
from milex.common.files import atomic_write
from milex.common.model import Bundle, Job, MachineSettings
from milex.common.render import render_script, script_stem


class SubmittedJob(msgspec.Struct, kw_only=True):
    """A job the scheduler accepted: its name in the bundle, its scheduler id, and its script."""

    name: str
    job_id: str
    script: str


def submit_bundle(
    bundle: Bundle,
    settings: MachineSettings,
    scheduler: Scheduler,
    *,
    on_submitted: Callable[[SubmittedJob], None] = lambda job: None,
    comment_for: Callable[[Job], str] = lambda job: "",
) -> list[SubmittedJob]:
    """Submit every job of `bundle`, each after the jobs it depends on, wired by their real ids.

    Stops at the first refusal, so no job whose dependency failed to submit is submitted; the
    SubmitError names the jobs already submitted, which `on_submitted` saw one by one.
    """
    ordered = bundle.ordered_jobs()  # raises before anything is submitted
    slurm_dir = Path(settings.path) / "slurm"
    submitted: dict[str, SubmittedJob] = {}
    for job in ordered:
        stem = script_stem(bundle.stem, job.name)
        script = slurm_dir / f"{stem}.sh"
        atomic_write(script, render_script(job, settings, stem).encode(), mode=0o755)
        after = [submitted[dependency].job_id for dependency in job.dependencies]
        try:
            job_id = scheduler.submit(
                script,
                after=after,
                dependency_type=job.slurm.dependency_type,
                comment=comment_for(job),
            )
        except SubmitError as error:
            raise SubmitError(_refusal(bundle, job, submitted, ordered, str(error))) from None
        submitted[job.name] = SubmittedJob(name=job.name, job_id=job_id, script=str(script))
        on_submitted(submitted[job.name])
    return list(submitted.values())


def _refusal(
    bundle: Bundle,
    job: Job,
    submitted: dict[str, SubmittedJob],
    ordered: list[Job],
    message: str,
) -> str:
    done = ", ".join(f"{s.name} (job {s.job_id})" for s in submitted.values()) or "none"
    skipped = [j.name for j in ordered if j.name not in submitted and j is not job]
    return (
        f"job {job.name!r} of bundle {bundle.stem!r} was not submitted: {message}\n"
        f"Already submitted: {done}. Not submitted: {', '.join(skipped) or 'none'}."
    )
