"""Confirming, after the controller was silent, that the jobs it accepted are still there.

slurmctld saves its state every few seconds: killed (`kill -9`, a crash, a node lost) and started
again, it has forgotten the jobs it accepted since its last save, and hands their ids out again. So
after any silence (a call without answer, a failed poll) and when the agent starts, nothing new goes
to the scheduler until every job it has accepted and not seen end is looked up by its comment, in
one query: a job it no longer has loses its id in the journal (an id the agent keeps would soon name
another job) and waits in the agent's queue, to be submitted again once, from its kept request; the
submissions in progress that depend on it stop where they are and the queue takes over. Like the
lookup of jobs in doubt (milex_agent.controller), the check counts only once the controller has
answered for a while: until then it is repeated.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from concurrent.futures import Future

from milex_agent.controller import LookupBackoff
from milex_agent.ledger import comment_of
from milex_agent.scheduler import scheduler_group
from milex_agent.state import Agent
from milex_common.errors import SchedulerError

log = logging.getLogger("milex_agent")
LOST_REASON = "lost by the scheduler's controller, restarted from older state; submitted again"
Accepted = dict[tuple[str, str], dict[str, tuple[str, str]]]  # group -> comment -> (key, job id)


class Confirmation:
    """Checks, when the controller watch says one is due, that the scheduler has every accepted job."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.backoff = LookupBackoff(agent.controller)
        self.looking: tuple[Future[set[str]], Accepted, float] | None = None

    @property
    def due(self) -> bool:
        return self.agent.controller.confirm_due

    def next_event_in(self) -> float:
        if self.looking is not None:
            return 0.0 if self.looking[0].done() else math.inf
        if not self.due:
            return math.inf
        return max(0.0, self.backoff.next_at - self.agent.controller.clock())

    def step(self) -> list[str]:
        """Start a check when due; apply one that finished. The keys of the jobs found lost."""
        watch = self.agent.controller
        if self.looking is None:
            if self.due and self.backoff.due:
                accepted = self._accepted()
                if not accepted:
                    watch.confirm_due = False
                    return []
                started = watch.clock()
                self.looking = (self.agent.dispatch(lambda: self._confirm(accepted)), accepted, started)
            return []
        future, accepted, started = self.looking
        if not future.done():
            return []
        self.looking = None
        lost = self.backoff.outcome(future)
        if isinstance(lost, SchedulerError):
            log.warning("confirming the jobs the scheduler accepted failed: %s", lost)
            return []
        if not watch.conclusive(started):
            return []  # looked before the controller settled: again, once it has (the back-off's time)
        watch.confirm_due = False
        jobs = [entry for group in accepted.values() for comment, entry in group.items() if comment in lost]
        if jobs:
            log.warning(
                "%d job(s) the scheduler had accepted are gone (its controller restarted from older "
                "state): %s; they wait in the queue to be submitted again",
                len(jobs),
                ", ".join(f"{key} (was {job_id})" for key, job_id in jobs),
            )
            self.agent.journal.lost(jobs, LOST_REASON)
        self.agent.poller.nudge()
        return [key for key, _ in jobs]

    def _accepted(self) -> Accepted:
        """The jobs with an id not seen to end, by scheduler group and comment."""
        accepted: Accepted = {}
        for job, kind, machine_path in self.agent.journal.unfinished():
            group = accepted.setdefault(scheduler_group(kind, machine_path), {})
            group[comment_of(job.key)] = (job.key, job.job_id)
        return accepted

    def _confirm(self, accepted: Accepted) -> set[str]:
        """The comments of the jobs the schedulers no longer have: one check per scheduler group."""
        lost: set[str] = set()
        for (kind, machine_path), jobs in accepted.items():
            ids: Mapping[str, str] = {comment: job_id for comment, (_, job_id) in jobs.items()}
            lost |= self.agent.schedulers(kind, machine_path).confirm(ids)
        return lost
