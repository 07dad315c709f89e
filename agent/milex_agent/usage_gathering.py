"""What ended jobs used, gathered by the agent: once per poll, one scheduler call (SLURM: one sacct) for
every job that ended and has no usage recorded yet, whatever their number, kept in the journal.

Accounting lags a job's end by a moment, so a job it does not have yet is asked again at later polls,
until USAGE_WAIT after its end; then it is recorded as having none (`NOT_RECORDED`). It lags each task
of an array on its own: an array whose usage lacks some of the tasks the polls saw run is asked again
too (after USAGE_WAIT, what came is kept). A cluster without
accounting gives every job a note saying so, told once in the log, never as an error.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Executor, Future

from milex_agent.journal import Journal
from milex_agent.scheduler import scheduler_group
from milex_agent.scheduler.base import Scheduler
from milex_common.errors import MilexError
from milex_common.model import JobState
from milex_common.usage import NOT_RECORDED, Usage

USAGE_WAIT = 300.0  # seconds after a job's end that its accounting is waited for
log = logging.getLogger("milex_agent")
SchedulerLookup = Callable[[str, str], Scheduler]  # (kind, machine path) -> scheduler
# (kind, machine path) -> {job id: (key, when it ended, how many of its tasks ran: 0 for a plain job)}
UsagePlan = dict[tuple[str, str], dict[str, tuple[str, float, int]]]


class UsageGathering:
    """Asks for the usage of ended jobs after each poll (`due`), on the poll's worker, and records it."""

    def __init__(
        self,
        journal: Journal,
        schedulers: SchedulerLookup,
        *,
        wait: float = USAGE_WAIT,
        clock: Callable[[], float] = time.time,  # the journal's times are the wall clock's
    ) -> None:
        self.journal = journal
        self.schedulers = schedulers
        self.wait = wait
        self.clock = clock
        self.due = False  # a poll was applied since the last gathering started
        self.queries = 0
        self.told: set[str] = set()  # notes already said in the log
        self._flight: tuple[UsagePlan, Future[dict[str, Usage]]] | None = None

    def step(self, worker: Executor, on_done: Callable[[object], None] = lambda _: None) -> None:
        """Record a gathering that came back; start the next one once a poll has been applied since.
        (The server's thread: it reads and writes the journal; the scheduler calls go to `worker`.)"""
        if self._flight is not None:
            plan, future = self._flight
            if not future.done():
                return
            self._flight = None
            self.apply(plan, future.result())
        if self.due:
            self.due = False
            plan = self.plan()
            if plan:
                future = worker.submit(self.query, plan)
                future.add_done_callback(on_done)
                self._flight = (plan, future)

    def plan(self) -> UsagePlan:
        """The jobs to ask about, by scheduler: those ended lately without usage (reads the journal)."""
        groups: UsagePlan = defaultdict(dict)
        # Twice the wait: a job past it is asked once more, and recorded as having none if still absent.
        for job, kind, machine_path in self.journal.awaiting_usage(self.clock() - 2 * self.wait):
            ran = sum(
                task.state is not JobState.CANCELLED for task in job.tasks
            )  # (cancelled: may never have)
            groups[scheduler_group(kind, machine_path)][job.job_id] = (job.key, job.updated_at, ran)
        return groups

    def query(self, plan: UsagePlan) -> dict[str, Usage]:
        """One scheduler call per group, by key; touches no journal, so it runs on a worker. A scheduler
        whose accounting fails is asked again at the next poll."""
        found: dict[str, Usage] = {}
        for (kind, machine_path), jobs in plan.items():
            self.queries += 1
            try:
                usage = self.schedulers(kind, machine_path).usage(list(jobs))
            except MilexError as error:
                log.warning("usage of ended jobs: %s", error)
                continue
            found.update({jobs[job_id][0]: used for job_id, used in usage.items() if job_id in jobs})
        return found

    def apply(self, plan: UsagePlan, found: dict[str, Usage]) -> None:
        """Record what came back, and as having none the jobs still without it USAGE_WAIT after their end."""
        now = self.clock()
        record = dict(found)
        for jobs in plan.values():
            for key, ended, ran in jobs.values():
                waited = now - ended > self.wait
                if key in record and not record[key].note and len(record[key].tasks) < ran and not waited:
                    del record[key]  # a task's accounting not there yet: asked again at the next poll
                elif key not in record and waited:
                    record[key] = Usage(note=NOT_RECORDED)
        for note in sorted({used.note for used in found.values() if used.note} - self.told):
            log.info("usage of ended jobs: %s", note)
            self.told.add(note)
        if record:
            self.journal.record_usage(record)
