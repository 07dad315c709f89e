"""Whether the scheduler's controller answers, and when a lookup that misses a job proves it absent.

A submission whose call got no answer (sbatch timed out, the controller was unreachable) may still
have been accepted: with slurmctld stopped, the request waits in the controller's listen queue and
is processed when it resumes, after sbatch has given up. A lookup by comment made right after the
controller answers again may therefore miss a job that is about to appear. So a lookup proves a job
absent only if it started `settle` seconds after the controller first answered again, and after the
last call that got no answer: by then every request queued during the silence has been processed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import TypeVar

from milex_common.errors import SchedulerError

T = TypeVar("T")

# Calls answered out of the order the controller took them in: at most one per submit worker.
OUT_OF_ORDER = 8
FIRST_DELAY = 1.0  # seconds before looking up again while the controller does not answer
MAX_DELAY = 10.0


class ControllerWatch:
    """The agent's view of its controller, shared by every submission and by recovery."""

    def __init__(self, settle: float, retry_for: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.settle, self.retry_for, self.clock = settle, retry_for, clock
        # Since the agent started, as if the controller had just come back: a call the previous
        # agent left unanswered is settled before any lookup proves its job absent.
        self.answering_since: float | None = clock()
        self.silent_since: float | None = None
        # Whether the jobs the controller accepted must be confirmed before anything new goes to it
        # (milex_agent.confirmation): set by a silence once `confirms` (the agent's server confirms).
        self.confirms = False
        self.confirm_due = False
        self.highest_ids: dict[str, int] = {}  # the highest job id each scheduler gave out, by name

    def suspect(self) -> None:
        """The controller may have restarted unseen (sbatch retries for a while while none runs: an
        answer that came slowly, an id lower than earlier ones, a dependency it does not know)."""
        self.confirm_due = self.confirm_due or self.confirms

    def accepted(self, scheduler: str, job_ids: Iterable[str]) -> None:
        """Ids the scheduler gave out: one well below an earlier one means its counter went back, as
        a controller restarted from older state does."""
        numbers = [int(job_id) for job_id in job_ids if job_id.isdecimal()]
        if not numbers:
            return
        highest = self.highest_ids.get(scheduler, 0)
        if min(numbers) <= highest - OUT_OF_ORDER:
            self.suspect()
        self.highest_ids[scheduler] = max(highest, *numbers)

    def unanswered(self) -> None:
        """A call got no answer: its outcome, and any lookup started so far, prove nothing; and the
        controller may be restarting from state saved before it accepted our latest jobs."""
        self.answering_since = None
        self.confirm_due = self.confirm_due or self.confirms
        if self.silent_since is None:
            self.silent_since = self.clock()

    def answered(self) -> None:
        """A call got the controller's answer (a job id, a refusal, a lookup)."""
        self.silent_since = None
        if self.answering_since is None:
            self.answering_since = self.clock()

    @property
    def silent(self) -> bool:
        return self.silent_since is not None

    def conclusive(self, started: float) -> bool:
        """Whether a lookup started at `started` (by `clock`) sees every job submitted so far."""
        return self.answering_since is not None and started >= self.answering_since + self.settle

    def settled_at(self) -> float:
        """When a lookup started will be conclusive, if the controller keeps answering."""
        return (self.answering_since if self.answering_since is not None else self.clock()) + self.settle

    def given_up(self) -> bool:
        """Whether the controller has been silent for longer than the agent retries."""
        return self.silent_since is not None and self.clock() - self.silent_since >= self.retry_for


class LookupBackoff:
    """When to look up in-doubt jobs next: soon, then less often while the controller is silent."""

    def __init__(self, watch: ControllerWatch) -> None:
        self.watch = watch
        self.delay = FIRST_DELAY
        self.next_at = watch.clock()

    @property
    def due(self) -> bool:
        return self.watch.clock() >= self.next_at

    def failed(self) -> None:
        self.next_at = self.watch.clock() + self.delay
        self.delay = min(self.delay * 2, MAX_DELAY)

    def answered(self) -> None:
        """Look again once a lookup can be conclusive."""
        self.delay = FIRST_DELAY
        self.next_at = max(self.watch.clock(), self.watch.settled_at())

    def outcome(self, lookup: Future[T]) -> T | SchedulerError:
        """What a finished `lookup` found, its answer (or silence) noted by the watch and this
        back-off; the scheduler's error when it got no answer, for the caller to tell."""
        try:
            found = lookup.result()
        except SchedulerError as error:
            self.watch.unanswered()
            self.failed()
            return error
        self.watch.answered()
        self.answered()
        return found
