"""Resolving submissions in doubt: at start, and from the server's loop for those no submission owns.

A job is in doubt when its submission was started but its scheduler id never came back (the agent
crashed, or sbatch got no answer and the submission gave up). It is looked up by its comment:
found, it is adopted; proven absent (see `milex_agent.controller`), it is forgotten, so that a
retry with the same key submits it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection
from concurrent.futures import Future

from milex_agent.controller import LookupBackoff
from milex_agent.ledger import comment_of
from milex_agent.scheduler import scheduler_group
from milex_agent.state import Agent
from milex_common.errors import SchedulerError

log = logging.getLogger("milex_agent")
Groups = dict[tuple[str, str], list[str]]  # keys in doubt by the scheduler that has them (scheduler_group)


def recover(agent: Agent) -> None:
    """Adopt each interrupted submission the scheduler has; forget those it proves it never received
    (once the controller has settled: until then, `InDoubtRecovery` goes on from the server's loop)."""
    groups = _in_doubt(agent, owned=())
    started = agent.controller.clock()
    try:
        found = _look_up(agent, groups)
    except SchedulerError as error:  # a silent controller must not keep the agent from starting
        agent.controller.unanswered()
        log.warning("looking up submissions in doubt failed: %s; retrying while serving", error)
        return
    _apply(agent, groups, found, conclusive=agent.controller.conclusive(started))


class InDoubtRecovery:
    """Looks up, with back-off, the jobs in doubt that no submission in progress owns."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.backoff = LookupBackoff(agent.controller)
        self.looking: tuple[Future[dict[str, str]], Groups, float] | None = None

    def next_event_in(self) -> float:
        if self.looking is not None:
            return 0.0 if self.looking[0].done() else math.inf
        return max(0.0, self.backoff.next_at - self.agent.controller.clock())

    def step(self, owned: Collection[str]) -> None:
        """Start a lookup when due and some job is in doubt; apply one that finished."""
        if self.looking is None and self.backoff.due:
            groups = _in_doubt(self.agent, owned)
            if not groups:
                self.backoff.failed()  # nothing to do: look at the journal again later
                return
            started = self.agent.controller.clock()
            self.looking = (self.agent.dispatch(lambda: _look_up(self.agent, groups)), groups, started)
        if self.looking is not None and self.looking[0].done():
            future, groups, started = self.looking
            self.looking = None
            self._found(future, groups, started, owned)

    def _found(
        self, future: Future[dict[str, str]], groups: Groups, started: float, owned: Collection[str]
    ) -> None:
        found = self.backoff.outcome(future)
        if isinstance(found, SchedulerError):
            log.warning("looking up submissions in doubt failed: %s", found)
            return
        watch = self.agent.controller
        groups = {group: [key for key in keys if key not in owned] for group, keys in groups.items()}
        _apply(self.agent, groups, found, conclusive=watch.conclusive(started))


def _in_doubt(agent: Agent, owned: Collection[str]) -> Groups:
    groups: Groups = {}
    for job, kind, machine_path in agent.journal.in_doubt():
        if job.key not in owned:
            groups.setdefault(scheduler_group(kind, machine_path), []).append(job.key)
    return groups


def _look_up(agent: Agent, groups: Groups) -> dict[str, str]:
    """Job ids by comment, over every scheduler that has jobs in doubt: one query each."""
    found: dict[str, str] = {}
    for (kind, machine_path), keys in groups.items():
        found.update(agent.schedulers(kind, machine_path).lookup([comment_of(key) for key in keys]))
    return found


def _apply(agent: Agent, groups: Groups, found: dict[str, str], *, conclusive: bool) -> None:
    for (kind, _), keys in groups.items():
        for key in keys:
            tracked = agent.journal.find(key)
            if tracked is None or tracked.job_id:  # resolved meanwhile, by a retry of its submission
                continue
            job_id = found.get(comment_of(key))
            if job_id is not None:
                agent.journal.submitted(key, job_id)
                log.info("submission %s in doubt was accepted as job %s", key, job_id)
            elif conclusive:
                agent.journal.requeue([key])
                log.info("submission %s never reached %s; it waits in the queue again", key, kind)
    agent.poller.nudge()
