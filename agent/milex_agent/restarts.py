"""A controller that restarted from its saved state: the jobs it accepted just before are confirmed by
their comment; those it forgot wait in the queue again, and the jobs submitted after them are re-pointed.

slurmctld writes its job state a few seconds after a change; killed in between, it comes back without
the jobs it accepted since, and hands their ids out again. So while a scheduler has accepted jobs of
ours within `save` seconds of the last time its controller was seen with the same boot time, the
agent reads the boot time every `every` seconds. A new one (or the first reading of a journal) puts in
question the jobs accepted since `save` seconds before the controller was last seen: their
submissions in progress start nothing new, and once the controller has settled (see
`milex_agent.controller`) they are looked up by comment. One found under another id gets that id; one
found nowhere waits in the queue again, to be submitted once more with the same key; the jobs of its
bundle submitted after it are re-pointed at its new id when the queue releases them
(`Scheduler.depend`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import msgspec

from milex_agent.controller import LookupBackoff
from milex_agent.ledger import comment_of
from milex_agent.scheduler import scheduler_group
from milex_agent.state import Agent
from milex_common.errors import SchedulerError
from milex_common.intervals import CONTROLLER_SAVE, RESTART_CHECK
from milex_common.model import JobState
from milex_common.protocol import SubmitBundle, TrackedJob

log = logging.getLogger("milex_agent")
Group = tuple[str, str]  # (scheduler kind, machine path), as the journal keeps them
LOST = "the controller restarted and forgot this job; it waits to be submitted again"


@dataclass
class Confirmation:
    """The jobs a restarted controller may have forgotten, and the lookup of their comments."""

    group: Group
    boot: str
    seen_at: float  # wall clock: when the controller was seen with `boot`
    jobs: list[TrackedJob]
    looking: tuple[Future[dict[str, str]], float] | None = None  # the lookup, and when it started


class RestartWatch:
    """Reads each controller's boot time while it may still forget jobs of ours; confirms them after
    a restart. Stepped from the server's loop; its scheduler calls run on workers."""

    def __init__(
        self,
        agent: Agent,
        *,
        save: float = CONTROLLER_SAVE,
        every: float = RESTART_CHECK,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.agent, self.save, self.every, self.wall = agent, save, every, wall
        self.next_at = agent.controller.clock()
        self.reading: tuple[Future[dict[Group, str]], float] | None = None
        self.confirming: Confirmation | None = None
        self.backoff = LookupBackoff(agent.controller)

    def next_event_in(self) -> float:
        clock = self.agent.controller.clock()
        if self.confirming is not None:
            looking = self.confirming.looking
            if looking is not None:
                return 0.0 if looking[0].done() else math.inf
            return max(0.0, self.backoff.next_at - clock)
        if self.reading is not None:
            return 0.0 if self.reading[0].done() else math.inf
        return max(0.0, self.next_at - clock)

    def step(self) -> set[Group]:
        """Read boot times when due, confirm what a restart put in question; the scheduler groups
        (`scheduler_group`) found restarted just now, whose submissions must start nothing new."""
        if self.confirming is not None:
            self._confirm(self.confirming)
            return set()
        if self.reading is None and self.agent.controller.clock() >= self.next_at:
            self.next_at = self.agent.controller.clock() + self.every
            groups = self._unconfirmed()
            if groups:
                started = self.wall()
                self.reading = (self.agent.dispatch(lambda: self._boot_times(groups)), started)
        if self.reading is None or not self.reading[0].done():
            return set()
        (future, started), self.reading = self.reading, None
        try:
            boots = future.result()
        except SchedulerError as error:  # read again at the next turn: a silence proves nothing
            log.info("reading the controller's boot time: %s", error)
            return set()
        return self._compare(boots, started)

    def _unconfirmed(self) -> list[Group]:
        """The schedulers that accepted jobs of ours since `save` before their controller was last seen."""
        journal = self.agent.journal
        groups = []
        for group, accepted in journal.last_accepted().items():
            seen = journal.controller(*group)
            if seen is None or accepted >= seen[1] - self.save:
                groups.append(group)
        return groups

    def _boot_times(self, groups: list[Group]) -> dict[Group, str]:
        return {group: self.agent.schedulers(*group).boot_time() for group in groups}

    def _compare(self, boots: dict[Group, str], started: float) -> set[Group]:
        journal, restarted = self.agent.journal, set()
        for group, boot in boots.items():
            seen = journal.controller(*group)
            if not boot or (seen is not None and seen[0] == boot):
                journal.saw_controller(*group, boot, started)
                continue
            since = seen[1] - self.save if seen is not None else 0.0
            jobs = journal.accepted_since(*group, since)
            if seen is not None:
                log.warning(
                    "the controller of %s restarted (booted %s, was %s): confirming the %d job(s) "
                    "accepted since %s by their comments",
                    group[0], boot, seen[0], len(jobs), time.strftime("%H:%M:%S", time.localtime(since)),
                )  # fmt: skip
                restarted.add(scheduler_group(*group))
            self.agent.controller.restarted()
            self.backoff.answered()
            self.confirming = Confirmation(group, boot, started, jobs)
            break  # one scheduler at a time; the others are read again at the next turn
        return restarted

    def _confirm(self, confirming: Confirmation) -> None:
        """Look up the jobs in question when due; apply a lookup that finished, once conclusive."""
        if confirming.looking is None:
            if self.backoff.due:
                comments = [comment_of(job.key) for job in confirming.jobs]
                scheduler = self.agent.schedulers(*confirming.group)
                started = self.agent.controller.clock()
                confirming.looking = (self.agent.dispatch(lambda: scheduler.lookup(comments)), started)
            return
        future, started = confirming.looking
        if not future.done():
            return
        confirming.looking = None
        found = self.backoff.outcome(future)
        if isinstance(found, SchedulerError):
            log.info("confirming jobs after a controller restart: %s", found)
            return
        watch = self.agent.controller
        if not watch.conclusive(started):
            return  # a request queued before the restart may still appear: look again
        self._apply(confirming, found)
        self.agent.journal.saw_controller(*confirming.group, confirming.boot, confirming.seen_at)
        self.confirming = None
        self.agent.poller.nudge()

    def _apply(self, confirming: Confirmation, found: dict[str, str]) -> None:
        journal, moved = self.agent.journal, []
        for job in confirming.jobs:
            now = journal.find(job.key)
            if now is None or now.state is JobState.QUEUED or now.job_id != job.job_id:
                continue  # settled meanwhile (submitted again, or looked up as in doubt)
            job_id = found.get(comment_of(job.key))
            if job_id is None:
                journal.lost([job.key], LOST)
                log.warning("job %s (was %s) was lost in a controller restart; it goes again", job.key,
                            job.job_id or "in doubt")  # fmt: skip
                moved.append(job.key)
            elif job_id != job.job_id:
                journal.submitted(job.key, job_id)
                log.info("job %s is job %s since the controller restarted", job.key, job_id)
                moved.append(job.key)
        journal.mark_repoint(self._dependents(moved))

    def _dependents(self, moved: list[str]) -> list[str]:
        """The keys of the jobs that depend on these in their bundle (their submit requests kept)."""
        dependents: list[str] = []
        for key in moved:
            body = self.agent.journal.request_of(key)
            if body is None:
                continue
            request = msgspec.msgpack.decode(body, type=SubmitBundle)
            names = [name for name, k in request.keys.items() if k == key]
            for job in request.bundle.jobs.values():
                if job.name in request.keys and any(name in job.dependencies for name in names):
                    dependents.append(request.keys[job.name])
        return dependents
