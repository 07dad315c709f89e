"""Watching SLURM politely: one batched status query per interval for every tracked job.

However many jobs and watching clients there are, each poll asks each scheduler once; the
interval doubles while nothing changes (up to a ceiling) and drops back when something does.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

from milex_agent.journal import Journal
from milex_agent.scheduler import scheduler_group
from milex_agent.scheduler.base import Scheduler
from milex_common.intervals import MAX_POLL_INTERVAL, POLL_INTERVAL
from milex_common.model import JobStatus
from milex_common.protocol import Event

SchedulerLookup = Callable[[str, str], Scheduler]  # (kind, machine path) -> scheduler
Plan = dict[tuple[str, str], dict[str, str]]  # (kind, machine path) -> {job id: key}


class Poller:
    """Turns scheduler states into journal events, on a backing-off timer."""

    def __init__(
        self,
        journal: Journal,
        schedulers: SchedulerLookup,
        *,
        interval: float = POLL_INTERVAL,
        max_interval: float = MAX_POLL_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.journal = journal
        self.schedulers = schedulers
        self.interval = interval
        self.max_interval = max(max_interval, interval)
        self.clock = clock
        self.current = interval
        self.next_at = clock()
        self.nudged = False  # since the last plan: a poll in flight may not include the news
        self.queries = 0
        # (state, exit code, reason) of each planned job as the journal had it: a poll's status that
        # says the same is not recorded again (most of a poll's statuses, with 100,000 jobs watched).
        self.recorded: dict[str, tuple[str, int | None, str]] = {}

    def due_in(self) -> float:
        """Seconds until the next poll (0 when it is due)."""
        return max(0.0, self.next_at - self.clock())

    def nudge(self) -> None:
        """Something new happened (a submission): poll within the base interval again.

        Not at once: a burst of submissions must not become a burst of squeue calls.
        """
        self.current = self.interval
        self.next_at = min(self.next_at, self.clock() + self.interval)
        self.nudged = True

    def poll(self) -> list[Event]:
        """Ask each scheduler once about all its unfinished jobs; return the resulting events."""
        return self.apply(self.query(self.plan()))

    def plan(self) -> Plan:
        """Which jobs to ask about, grouped by scheduler (reads the journal: the server's thread)."""
        self.nudged = False
        groups: Plan = defaultdict(dict)  # job id -> key
        self.recorded = recorded = {}  # the last poll's let go first: never two alive at once
        shared: dict[tuple[str, int | None, str], tuple[str, int | None, str]] = {}  # one of each
        for row in self.journal.watched():
            groups[scheduler_group(row.scheduler, row.machine_path)][row.job_id] = row.key
            status = (row.state, row.exit_code, row.reason)
            recorded[row.key] = shared.setdefault(status, status)
        return groups

    def query(self, plan: Plan) -> list[tuple[str, JobStatus]]:
        """One scheduler call per group; touches no journal, so it may run in a worker thread.

        A status the journal had when the poll was planned is left out: the journal would find it
        unchanged, reading each job's record to see it (most statuses of a poll). An array's is
        always given: its tasks are the journal's to compare."""
        updates: list[tuple[str, JobStatus]] = []
        recorded = self.recorded
        for (kind, machine_path), keys in plan.items():
            self.queries += 1
            states = self.schedulers(kind, machine_path).states(list(keys))
            updates += [
                (keys[job_id], status)
                for job_id, status in states.items()
                if job_id in keys and _news(recorded.get(keys[job_id]), status)
            ]
        return updates

    def apply(self, updates: list[tuple[str, JobStatus]]) -> list[Event]:
        """Record the states (the server's thread), and set the next poll: sooner after a change."""
        events = self.journal.update(updates)
        self.current = self.interval if events or self.nudged else min(self.current * 2, self.max_interval)
        self.next_at = self.clock() + self.current
        return events


def _news(recorded: tuple[str, int | None, str] | None, status: JobStatus) -> bool:
    """Whether the journal may learn something from `status` (its tasks are the journal's to compare)."""
    return bool(status.tasks) or recorded != (status.state.value, status.exit_code, status.reason)
