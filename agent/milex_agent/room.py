"""Room in a scheduler: how many tasks of ours it may still take, under its limits and the user's cap.

The cluster's limits are read from the scheduler (`Scheduler.limits`, on a worker: nothing is
submitted into a room until they are known); what it has of ours is counted from the journal at
each poll, and between polls by what each submission takes. A refusal for a limit the agent could
not read (`LimitReached`) closes the room until one of our jobs ends, or `LIMIT_RETRY` passes
(jobs of the user that Milex does not know may be what fills the limit).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from milex_agent.array_windows import window_size
from milex_agent.scheduler.base import Limits
from milex_common.errors import MilexError

RELEASE_PER_POLL = 100  # jobs that may go to a scheduler between two polls
LIMITS_FOR = 600.0  # seconds a reading of the cluster's limits is trusted
LIMITS_RETRY = 60.0  # seconds before a failed reading is tried again
LIMIT_RETRY = 60.0  # seconds the room stays closed after a LimitReached when none of ours can end
QUEUED_REASON = "in the agent's queue"
log = logging.getLogger("milex_agent")


@dataclass
class SchedulerRoom:
    """One scheduler's room for our tasks (one per scheduler group, shared by every submission)."""

    clock: Callable[[], float] = time.monotonic
    limits: Limits | None = None  # None until read once
    read_at: float = -math.inf
    reading: Future[Limits] | None = None
    used: int = 0  # tasks of ours the scheduler has (or may have: in doubt)
    budget: int = RELEASE_PER_POLL  # jobs that may still go before the next poll
    closed_until: tuple[int, float] | None = None  # after a LimitReached: (used below this, or this time)
    refusal: str = ""

    @property
    def ready(self) -> bool:
        """Whether the limits are known; takes a reading that has finished."""
        if self.reading is not None and self.reading.done():
            reading, self.reading = self.reading, None
            try:
                self.limits = reading.result()
                self.read_at = self.clock()
                log.info("scheduler limits: %s", self.limits)
            except Exception as error:  # submit without known limits; refusals still close the room
                if isinstance(error, MilexError):
                    log.warning("could not read the scheduler's limits: %s; trying again later", error)
                else:
                    log.exception("reading the scheduler's limits failed; trying again later")
                self.limits = self.limits or Limits()
                self.read_at = self.clock() - LIMITS_FOR + LIMITS_RETRY
        return self.limits is not None

    def read_when_due(self, read: Callable[[], Future[Limits]]) -> None:
        """Start reading the limits (`read` dispatches the call) unless a fresh reading is at hand."""
        if self.reading is None and self.clock() - self.read_at >= LIMITS_FOR:
            self.reading = read()

    def counted(self, used: int) -> None:
        """A poll counted what the scheduler has of ours: a new budget of jobs to release."""
        self.used, self.budget = used, RELEASE_PER_POLL

    def cap(self, user_cap: int | None) -> tuple[int | None, str]:
        """How many tasks of ours may be in the scheduler, and the limit that says so, in words."""
        limits = self.limits or Limits()
        caps = [(limits.max_submitted, limits.held_by)] if limits.max_submitted is not None else []
        if user_cap is not None:
            caps.append((user_cap, f"max_submitted={user_cap} in the machine's configuration"))
        return min(caps) if caps else (None, "")

    def closed(self) -> bool:
        """Whether a LimitReached still closes the room."""
        if self.closed_until is None:
            return False
        below, until = self.closed_until
        if self.used < below or self.clock() >= until:
            self.closed_until = None
            return False
        return True

    def refused(self, reason: str) -> None:
        # The refused job was counted: the scheduler holds one job of ours fewer than `used`.
        self.closed_until = (self.used - 1, self.clock() + LIMIT_RETRY)
        self.refusal = reason


@dataclass
class RequestRoom:
    """The room one request's submission sees: its scheduler's, under the machine's own cap. A
    release of queued jobs also spends the poll's budget (a client's own submission does not)."""

    room: SchedulerRoom
    user_cap: int | None
    release: bool = False
    held_by: str = QUEUED_REASON

    @property
    def ready(self) -> bool:
        return self.room.ready

    @property
    def array_window(self) -> int | None:
        limits = self.room.limits or Limits()
        cap, _ = self.room.cap(self.user_cap)
        return window_size(limits.max_array_size, cap)

    @property
    def full(self) -> bool:
        """Whether not one more task fits (known once ready): a release would submit nothing."""
        cap, _ = self.room.cap(self.user_cap)
        spent = self.release and self.room.budget < 1
        return spent or self.room.closed() or (cap is not None and self.room.used >= cap)

    def take(self, tasks: int) -> bool:
        room = self.room
        cap, limit = room.cap(self.user_cap)
        if room.closed():
            self.held_by = f"waiting for room: the cluster refused more jobs ({room.refusal})"
            return False
        if self.release and room.budget < 1:
            self.held_by = f"waiting for its turn: at most {RELEASE_PER_POLL} jobs go in per status poll"
            return False
        # A job bigger than the whole room goes alone, once nothing of ours is in the scheduler.
        if cap is not None and room.used + tasks > cap and room.used > 0:
            self.held_by = f"waiting for room: {room.used} task(s) of yours in the scheduler; {limit}"
            return False
        room.used += tasks
        room.budget -= self.release
        return True

    def refused(self, reason: str) -> None:
        self.room.refused(reason)
        self.held_by = f"waiting for room: the cluster refused more jobs ({reason})"
