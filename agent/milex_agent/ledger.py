"""The journal as a submission ledger: each idempotency key is submitted at most once."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

from milex_agent.array_windows import WINDOW_MARK
from milex_agent.journal import Journal
from milex_agent.scheduler.base import Scheduler
from milex_agent.submission import IN_DOUBT, NOT_RUN, SubmittedJob
from milex_common.errors import MilexError, SubmitError
from milex_common.model import Job, JobState
from milex_common.protocol import SubmitBundle, TrackedJob


def comment_of(key: str) -> str:
    """The sbatch comment that carries an idempotency key with its job."""
    return f"milex:{key}"


class JournalLedger:
    """Records intent before sbatch and ids after, so a retry or a restart never submits twice."""

    def __init__(
        self, journal: Journal, request: SubmitBundle, scheduler: Scheduler, *, release: bool = False
    ) -> None:
        self.journal = journal
        self.request = request
        self.scheduler = scheduler
        # A release of queued jobs has no client to tell of a refusal: the jobs it stops stay in the
        # journal, settled with the reason (a client's own submission is answered, and keeps none).
        self.release = release

    def key(self, job: Job) -> str:
        """The job's idempotency key; a window of an array has its array's, with its offset."""
        name, mark, offset = job.name.partition(WINDOW_MARK)
        if name not in self.request.keys:
            raise MilexError(f"the submit request has no idempotency key for job {name!r}.")
        return f"{self.request.keys[name]}{mark}{offset}"

    def known(self, job: Job) -> str | None:
        standing = self.journal.standing(self.key(job))
        if standing is None or standing.state is JobState.QUEUED:
            return None
        if job.slurm.array and standing.window:
            return None  # to submit again: an array cut in windows is its windows, each known on its own
        if standing.job_id:
            return standing.job_id
        # No id: an earlier attempt was cut short (the submission looks it up), or it never ran.
        return NOT_RUN if standing.state.finished else IN_DOUBT

    def ended(self, job: Job) -> JobState | None:
        standing = self.journal.standing(self.key(job))
        return standing.state if standing is not None and standing.state.finished else None

    def batch(self) -> AbstractContextManager[None]:
        return self.journal.batch()

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
        part_of = {self.key(job): self.request.keys[job.name.partition(WINDOW_MARK)[0]]
                   for job, _ in planned if WINDOW_MARK in job.name}  # fmt: skip
        self.journal.begin_many(
            tracked, scheduler=settings.scheduler, machine_path=settings.path, part_of=part_of
        )
        return [comment_of(job.key) for job in tracked]

    def accepted(self, submitted: Sequence[tuple[Job, SubmittedJob]]) -> None:
        self.journal.submitted_many([(self.key(job), files.job_id) for job, files in submitted])

    def refused(self, job: Job, message: str) -> None:
        if self.release:
            self.journal.settle_unsubmitted(
                [self.key(job)], JobState.CANCELLED, f"never submitted: {message}"
            )
        else:
            self.journal.forget(self.key(job))

    def held(self, jobs: Sequence[Job], reason: str) -> None:
        self.journal.hold([self.key(job) for job in jobs], reason)

    def requeued(self, jobs: Sequence[Job], reason: str) -> None:
        self.journal.requeue([self.key(job) for job in jobs], reason)

    def window_size(self, job: Job) -> int:
        return self.journal.window_size(self.key(job))

    def split(self, job: Job, size: int, windows: Sequence[tuple[Job, int]]) -> None:
        self.journal.split(self.key(job), size, [(self.key(window), tasks) for window, tasks in windows])

    def dropped(self, jobs: Sequence[Job], failure: BaseException) -> None:
        keys = [self.key(job) for job in jobs]
        if not self.release:
            self.journal.drop_queued(keys)
        elif isinstance(failure, SubmitError):  # the bundle stops at a refusal, as a client's would
            reason = f"never submitted: the bundle stopped at a refusal ({failure})"
            self.journal.settle_unsubmitted(self.journal.still_queued(keys), JobState.CANCELLED, reason)
        else:  # the scheduler did not answer, or the agent failed: they go with a later release
            self.journal.hold(keys, f"in the agent's queue; the last release stopped: {failure}")

    def not_run(self, job: Job, reason: str) -> None:
        self.journal.settle_unsubmitted([self.key(job)], JobState.CANCELLED, reason)
