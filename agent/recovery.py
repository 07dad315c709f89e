"""Resuming after a crash: submissions cut short are looked up in the scheduler before any retry."""

from __future__ import annotations

import logging

from milex.agent.ledger import comment_of
from milex.agent.state import Agent

log = logging.getLogger("milex.agent")


def recover(agent: Agent) -> None:
    """Adopt each interrupted submission the scheduler has; forget those it never received."""
    in_doubt: dict[tuple[str, str], list[str]] = {}
    for job, kind, machine_path in agent.journal.in_doubt():
        in_doubt.setdefault((kind, machine_path), []).append(job.key)
    for (kind, machine_path), keys in in_doubt.items():
        found = agent.schedulers(kind, machine_path).lookup([comment_of(key) for key in keys])
        for key in keys:
            job_id = found.get(comment_of(key))
            if job_id is None:
                agent.journal.forget(key)
                log.info("submission %s never reached %s; a retry will submit it", key, kind)
            else:
                agent.journal.submitted(key, job_id)
                log.info("submission %s was accepted as job %s before the restart", key, job_id)
    agent.poller.nudge()
