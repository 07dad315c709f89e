"""The journal as a submission ledger: each idempotency key is submitted at most once."""

from __future__ import annotations

from collections.abc import Sequence

from milex.agent.journal import Journal
from milex.agent.scheduler.base import Scheduler
from milex.agent.submission import IN_DOUBT, SubmittedJob
from milex.common.errors import MilexError
from milex.common.model import Job, JobState
from milex.common.protocol import SubmitBundle, TrackedJob


def comment_of(key: str) -> str:
    """The sbatch comment that carries an idempotency key with its job."""
    return f"milex:{key}"


class JournalLedger:
    """Records intent before sbatch and ids after, so a retry or a restart never submits twice."""

    def __init__(self, journal: Journal, request: SubmitBundle, scheduler: Scheduler) -> None:
        self.journal = journal
        self.request = request
        self.scheduler = scheduler

    def key(self, job: Job) -> str:
        if job.name not in self.request.keys:
            raise MilexError(f"the submit request has no idempotency key for job {job.name!r}.")
        return self.request.keys[job.name]

    def known(self, job: Job) -> str | None:
        tracked = self.journal.find(self.key(job))
        if tracked is None:
            return None
        if not tracked.job_id:  # an earlier attempt was cut short: the submission looks it up
            return IN_DOUBT
        return tracked.job_id

    def comment(self, job: Job) -> str:
        return comment_of(self.key(job))

    def begin(self, planned: Sequence[tuple[Job, SubmittedJob]]) -> list[str]:
        bundle = self.request.bundle.stem
        tracked = [
            TrackedJob(key=self.key(job), bundle=bundle, name=job.name, job_id="", state=JobState.SUBMITTED,
                       script=files.script, stdout=files.stdout, stderr=files.stderr)
            for job, files in planned
        ]  # fmt: skip
        settings = self.request.settings
        self.journal.begin_many(tracked, scheduler=settings.scheduler, machine_path=settings.path)
        return [comment_of(job.key) for job in tracked]

    def accepted(self, submitted: Sequence[tuple[Job, SubmittedJob]]) -> None:
        self.journal.submitted_many([(self.key(job), files.job_id) for job, files in submitted])

    def refused(self, job: Job) -> None:
        self.journal.forget(self.key(job))
