"""Submit a bundle: render each job's script, write it under `slurm/`, submit in dependency order."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import msgspec

from milex.agent.scheduler.base import Scheduler
from milex.common.errors import SubmitError
from milex.common.files import atomic_write
from milex.common.model import Bundle, Job, MachineSettings
from milex.common.render import log_paths, render_script, script_stem


class SubmittedJob(msgspec.Struct, kw_only=True):
    """A job the scheduler accepted: its name in the bundle, its scheduler id, and its files."""

    name: str
    job_id: str
    script: str
    stdout: str = ""
    stderr: str = ""


class Ledger(Protocol):
    """Where submissions are remembered, so that a job is submitted at most once."""

    def known(self, job: Job) -> str | None:
        """The id `job` already has (from an earlier attempt), or None to submit it."""
        ...

    def begin(self, job: Job, planned: SubmittedJob) -> str:
        """Note the intent to submit `job` before asking the scheduler; returns its sbatch comment."""
        ...

    def accepted(self, job: Job, submitted: SubmittedJob) -> None: ...

    def refused(self, job: Job) -> None: ...


class NoLedger:
    """Remembers nothing: every call submits every job."""

    def known(self, job: Job) -> str | None:
        return None

    def begin(self, job: Job, planned: SubmittedJob) -> str:
        return ""

    def accepted(self, job: Job, submitted: SubmittedJob) -> None:
        pass

    def refused(self, job: Job) -> None:
        pass


def submit_bundle(
    bundle: Bundle, settings: MachineSettings, scheduler: Scheduler, ledger: Ledger | None = None
) -> list[SubmittedJob]:
    """Submit every job of `bundle`, each after the jobs it depends on, wired by their real ids.

    Stops at the first refusal, so no job whose dependency failed to submit is submitted; the
    SubmitError names the jobs already submitted, which the ledger saw one by one.
    """
    ledger = ledger or NoLedger()
    ordered = bundle.ordered_jobs()  # raises before anything is submitted
    submitted: dict[str, SubmittedJob] = {}
    for job in ordered:
        planned = _write_script(bundle, job, settings)
        job_id = ledger.known(job)
        if job_id is None:
            comment = ledger.begin(job, planned)
            after = [submitted[dependency].job_id for dependency in job.dependencies]
            try:
                job_id = scheduler.submit(
                    Path(planned.script),
                    after=after,
                    dependency_type=job.slurm.dependency_type,
                    comment=comment,
                )
            except SubmitError as error:
                ledger.refused(job)
                raise SubmitError(_refusal(bundle, job, submitted, ordered, str(error))) from None
            planned.job_id = job_id
            ledger.accepted(job, planned)
        planned.job_id = job_id
        submitted[job.name] = planned
    return list(submitted.values())


def _write_script(bundle: Bundle, job: Job, settings: MachineSettings) -> SubmittedJob:
    stem = script_stem(bundle.stem, job.name)
    script = Path(settings.path) / "slurm" / f"{stem}.sh"
    # Not fsynced: the journal, not this file, is what a restart relies on; it can be rendered again.
    atomic_write(script, render_script(job, settings, stem).encode(), mode=0o755, durable=False)
    stdout, stderr = log_paths(job, settings, stem)
    return SubmittedJob(name=job.name, job_id="", script=str(script), stdout=stdout, stderr=stderr)


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
