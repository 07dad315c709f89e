"""Confirming, when the controller may have restarted, that the jobs it accepted are still there.

slurmctld saves its state every few seconds: killed (`kill -9`, a crash, a node lost) and started
again, it has forgotten the jobs it accepted since its last save, and hands their ids out again.
sbatch hides a short restart (it retries to connect for up to MessageTimeout), so the agent checks
after any sign of one: a call without answer or a failed poll, an sbatch answer that came slowly, an
id below those given out before, a dependency the controller does not know, and its own start.

Nothing new goes to the scheduler until the check is done: the controller's boot time (one
`scontrol show config`); if it started after some accepted, unfinished jobs were begun, those are
looked up by comment (one squeue, and accounting for those that left it). A job it no longer has
loses its id in the journal (an id the agent kept would soon name another job) and waits in the
agent's queue, to be submitted again once, from its kept request; an accepted job that waits for a
lost one (an sbatch that reached the restarted controller with the lost job's id, which may name
another job now) is cancelled and queued again too. Submissions in progress for those requests stop
where they are and the queue takes over. Like the lookup of jobs in doubt (milex_agent.controller),
the check counts only once the controller has answered for a while: until then it is repeated.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import Future
from typing import TypeVar

import msgspec

from milex_agent.array_windows import WINDOW_MARK
from milex_agent.controller import LookupBackoff
from milex_agent.journal import Journal
from milex_agent.ledger import comment_of
from milex_agent.scheduler import scheduler_group
from milex_agent.state import Agent
from milex_common.errors import SchedulerError
from milex_common.protocol import SubmitBundle

log = logging.getLogger("milex_agent")
LOST_REASON = "lost by the scheduler's controller, restarted from older state; submitted again"
WRONG_DEPENDENCY_REASON = (
    "submitted while the scheduler's controller restarted, waiting for a job it had lost; cancelled "
    "and submitted again"
)
# The jobs with an id not seen to end: by scheduler group, then comment: (key, job id, when begun).
Accepted = dict[tuple[str, str], dict[str, tuple[str, str, float]]]
Booted = dict[tuple[str, str], float]  # when each scheduler group's controller last started
# A job begun up to this long after the controller's boot time (as each clock tells) is still checked:
# scontrol prints BOOT_TIME to the second (a job begun in the second the controller restarted, before
# it did, looks begun after it), and the controller's clock and the agent's may differ by under a minute.
CLOCK_ALLOWANCE = 60.0
T = TypeVar("T")


class Confirmation:
    """Checks, when the controller watch says one is due, that the scheduler has every accepted job."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.backoff = LookupBackoff(agent.controller)
        self.booting: tuple[Future[Booted], float] | None = None  # the first step, and when it began
        self.looking: tuple[Future[set[str]], Accepted, float] | None = None  # the second

    @property
    def due(self) -> bool:
        return self.agent.controller.confirm_due

    def next_event_in(self) -> float:
        step = self.booting or self.looking
        if step is not None:
            return 0.0 if step[0].done() else math.inf
        if not self.due:
            return math.inf
        return max(0.0, self.backoff.next_at - self.agent.controller.clock())

    def step(self) -> list[str]:
        """Start a check when due; take its next step when one finished. The keys of the jobs found
        lost.

        Two steps: the boot time of each controller that has unfinished jobs of ours, then those of
        the jobs begun before it (none, unless it restarted since): an agent watching 100,000 jobs
        reads none of them to learn that its controller did not restart."""
        if self.booting is None and self.looking is None:
            if self.due and self.backoff.due:
                groups = {scheduler_group(*row) for row in self.agent.journal.watched_schedulers()}
                if not groups:
                    self.agent.controller.confirm_due = False
                    return []
                started = self.agent.controller.clock()
                self.booting = (self.agent.dispatch(lambda: self._boot_times(groups)), started)
            return []
        if self.booting is not None:
            booting, started = self.booting
            if not booting.done():
                return []
            self.booting = None
            booted = self._outcome(booting)
            if booted is None:
                return []
            accepted = self._accepted(booted)
            if not accepted:  # the usual: no controller restarted since a job of ours was begun
                return self._settle(accepted, set(), started)
            self.looking = (self.agent.dispatch(lambda: self._confirm(accepted, booted)), accepted, started)
            return []
        assert self.looking is not None
        looking, accepted, started = self.looking
        if not looking.done():
            return []
        self.looking = None
        lost = self._outcome(looking)
        return [] if lost is None else self._settle(accepted, lost, started)

    def _outcome(self, step: Future[T]) -> T | None:
        """What a finished step found; None (told in the log) if it failed: tried again later."""
        try:
            found = self.backoff.outcome(step)
        except Exception:  # a defect: logged, and the check tried again later (the agent never dies of it)
            log.exception("confirming the jobs the scheduler accepted failed")
            self.backoff.failed()
            return None
        if isinstance(found, SchedulerError):
            log.warning("confirming the jobs the scheduler accepted failed: %s", found)
            return None
        return found

    def _settle(self, accepted: Accepted, lost: set[str], started: float) -> list[str]:
        """The check's end: the `lost` jobs (by comment) wait in the queue again, with those that
        wait for them; the keys of all."""
        watch = self.agent.controller
        if not watch.conclusive(started):
            return []  # looked before the controller settled: again, once it has (the back-off's time)
        watch.confirm_due = False
        jobs = [
            (key, job_id)
            for group in accepted.values()
            for comment, (key, job_id, _) in group.items()
            if comment in lost
        ]
        if jobs:
            log.warning(
                "%d job(s) the scheduler had accepted are gone (its controller restarted from older "
                "state): %s; they wait in the queue to be submitted again",
                len(jobs),
                ", ".join(f"{key} (was {job_id})" for key, job_id in jobs),
            )
            self.agent.journal.lost(jobs, LOST_REASON)
            jobs += self._cancel_dependents([key for key, _ in jobs])
        self.agent.poller.nudge()
        return [key for key, _ in jobs]

    def _cancel_dependents(self, lost: list[str]) -> list[tuple[str, str]]:
        """Cancel the accepted jobs that wait for a lost one (a call that reached the restarted
        controller with the lost job's id, which may now be another job's; and those after it), and
        queue them again; the (key, id) of each."""
        journal = self.agent.journal
        waiting = _waiting_for(journal, lost)
        dependents: dict[tuple[str, str], list[tuple[str, str]]] = {}  # scheduler group -> (key, id)
        for row in journal.watched():
            if row.key in lost or row.key.partition(WINDOW_MARK)[0] not in waiting:
                continue
            dependents.setdefault((row.scheduler, row.machine_path), []).append((row.key, row.job_id))
        cancelled: list[tuple[str, str]] = []
        for (kind, machine_path), jobs in dependents.items():
            try:
                self.agent.schedulers(kind, machine_path).cancel([job_id for _, job_id in jobs])
            except SchedulerError as error:  # left as they are: never two of one job
                log.warning("cancelling jobs that wait for a lost job failed: %s", error)
                continue
            log.warning(
                "cancelled %s: they waited for a lost job; queued again", ", ".join(k for k, _ in jobs)
            )
            journal.lost(jobs, WRONG_DEPENDENCY_REASON)
            cancelled += jobs
        return cancelled

    def _boot_times(self, groups: set[tuple[str, str]]) -> Booted:
        """When the controller of each scheduler group last started (those that say)."""
        booted = {group: self.agent.schedulers(*group).boot_time() for group in groups}
        return {group: time for group, time in booted.items() if time is not None}

    def _accepted(self, booted: Booted) -> Accepted:
        """The unfinished jobs begun before their controller last started, by scheduler group."""
        accepted: Accepted = {}
        if not booted:
            return accepted
        for row in self.agent.journal.watched(begun_before=max(booted.values()) + CLOCK_ALLOWANCE):
            group = scheduler_group(row.scheduler, row.machine_path)
            if group in booted and row.submitted_at < booted[group] + CLOCK_ALLOWANCE:
                accepted.setdefault(group, {})[comment_of(row.key)] = (row.key, row.job_id, row.submitted_at)
        return accepted

    def _confirm(self, accepted: Accepted, booted: Booted) -> set[str]:
        """The comments of the jobs the schedulers lost: those begun before their controller last
        started that it no longer has (one query per scheduler group whose controller restarted)."""
        lost: set[str] = set()
        for group, jobs in accepted.items():
            before = {comment: job_id for comment, (_, job_id, _) in jobs.items()}
            lost |= self.agent.schedulers(*group).confirm(before, booted[group])
        return lost


def _waiting_for(journal: Journal, lost: list[str]) -> set[str]:
    """The keys of the jobs that depend, directly or not, on one of the `lost` jobs of their request
    (each request read once)."""
    waiting: set[str] = set()
    for body, lost_keys in journal.requests_of({key.partition(WINDOW_MARK)[0] for key in lost}):
        request = msgspec.msgpack.decode(body, type=SubmitBundle)
        dependents: dict[str, list[str]] = {}
        for name, job in request.bundle.jobs.items():
            for dependency in job.dependencies:
                dependents.setdefault(dependency, []).append(name)
        todo = [name for name, key in request.keys.items() if key in lost_keys]
        seen = set(todo)
        while todo:
            for dependent in dependents.get(todo.pop(), ()):
                if dependent not in seen:
                    seen.add(dependent)
                    waiting.add(request.keys[dependent])
                    todo.append(dependent)
    return waiting
