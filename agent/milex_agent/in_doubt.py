"""The jobs of a submission whose sbatch got no answer, looked up by comment until found or proven absent.

A call that got no answer may still have been accepted. The job is looked up by its comment, with
back-off while the controller is silent; a lookup that finds it gives its id, and one that misses it
proves it absent only once it is conclusive (see `milex_agent.controller`): the submission then
submits it again, with the same key and comment.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from concurrent.futures import Future

from milex_agent.controller import ControllerWatch, LookupBackoff
from milex_agent.scheduler.base import Scheduler
from milex_common.errors import SchedulerError, SchedulerUnavailable
from milex_common.model import Job

Found = dict[str, str]  # job ids by comment
# Runs the lookup now, or on a worker (a submission's Dispatch).
LookupDispatch = Callable[[Callable[[], Found]], Future[Found]]
log = logging.getLogger("milex_agent")


class InDoubt:
    """The jobs of one submission in doubt, by name (each with its comment), and their lookup."""

    def __init__(
        self, scheduler: Scheduler, watch: ControllerWatch, dispatch: LookupDispatch, bundle: str
    ) -> None:
        self.scheduler, self.watch, self.dispatch, self.bundle = scheduler, watch, dispatch, bundle
        self.jobs: dict[str, tuple[Job, str]] = {}
        self.comments: dict[str, str] = {}  # the comment each job was last sent with, by name
        self.looking: tuple[Future[Found], float] | None = None  # a lookup, and when it started
        self.backoff = LookupBackoff(watch)
        self.last_silence: BaseException | None = None

    def __len__(self) -> int:
        return len(self.jobs)

    def __iter__(self) -> Iterator[str]:
        return iter(self.jobs)

    def __contains__(self, name: object) -> bool:
        return name in self.jobs

    @property
    def waiting_for_controller(self) -> bool:
        """Whether jobs are in doubt while the controller does not answer."""
        return bool(self.jobs) and self.watch.silent

    def recall(self, job: Job, comment: str) -> None:
        """An earlier attempt never learnt whether `job` was accepted: look it up at once."""
        self.jobs[job.name] = (job, comment)
        self.backoff.next_at = self.watch.clock()

    def sent(self, job: Job, comment: str) -> None:
        """A call submitting `job` with `comment` is out: `job` is no longer in doubt (until it goes
        unanswered)."""
        self.discard(job.name)
        self.comments[job.name] = comment

    def unanswered(self, job: Job, error: SchedulerUnavailable) -> bool:
        """The call submitting `job` got no answer: it is in doubt, looked up by the comment it was
        sent with, after a back-off. False when it has no comment to look it up by."""
        self.watch.unanswered()
        comment = self.comments.get(job.name, "")
        if not comment:
            return False
        self.jobs[job.name] = (job, comment)
        self.last_silence = error
        log.warning("job %s of %s is in doubt (%s); looking it up", job.name, self.bundle, error)
        self.backoff.failed()
        return True

    def discard(self, name: str) -> None:
        """`name` is no longer in doubt (submitted again, or its id known)."""
        self.jobs.pop(name, None)

    def settle(self, accept: Callable[[list[tuple[Job, str]]], None]) -> list[Job]:
        """Apply the lookup that finished, if any: `accept` the jobs it found (each with its id; they
        leave the doubt); the jobs it proves absent, in the order they fell in doubt (they leave it too)."""
        if self.looking is None or not self.looking[0].done():
            return []
        (future, started), self.looking = self.looking, None
        found = self.backoff.outcome(future)
        if isinstance(found, SchedulerError):  # still no answer
            log.info("looking up %d job(s) in doubt: %s", len(self.jobs), found)
            self.last_silence = found
            return []
        accepted = [(job, found[comment]) for job, comment in self.jobs.values() if comment in found]
        if accepted:
            accept(accepted)
            for job, _ in accepted:
                self.discard(job.name)
        if not self.jobs or not self.watch.conclusive(started):
            return []
        absent = [job for job, _ in self.jobs.values()]
        self.jobs.clear()
        return absent

    def look_up(self) -> SchedulerUnavailable | None:
        """Start a lookup when one is due; the failure to stop with once the controller has been silent
        for longer than the agent retries."""
        if not self.jobs or self.looking is not None:
            return None
        if self.watch.given_up():
            return SchedulerUnavailable(
                f"the scheduler has not answered for {self.watch.retry_for:.0f} s "
                f"({self.last_silence}); gave up."
            )
        if self.backoff.due:
            comments = [comment for _, comment in self.jobs.values()]
            started = self.watch.clock()
            self.looking = (self.dispatch(lambda: self.scheduler.lookup(comments)), started)
        return None

    def next_event_in(self) -> float:
        """Seconds until a lookup is to be applied or started."""
        if self.looking is not None:
            return 0.0 if self.looking[0].done() else math.inf
        if self.jobs:
            return max(0.0, self.backoff.next_at - self.watch.clock())
        return math.inf
