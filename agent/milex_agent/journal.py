"""The agent's journal on disk: every job it submitted (by idempotency key) and every state event.

SQLite in WAL mode: each change is one committed transaction (or a part of a `batch`, committed
before anything that depends on it is done), so a `kill -9` loses nothing that was acknowledged, and
a restarted agent reads back every job it must keep watching. (`synchronous=NORMAL`: a commit is
written to the WAL but fsynced only at checkpoints, so a process crash loses nothing, while the node
itself crashing may lose the last commits: an intent lost with them leaves a job SLURM may have
accepted unknown to the journal. An fsync per commit, `synchronous=FULL`, costs about 0.5 ms here.)
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import msgspec

from milex_agent import array_tasks
from milex_agent.array_windows import WINDOW_MARK, tasks_of_windows
from milex_agent.disk_space import DiskSpace, describe_free
from milex_agent.scheduler.slurm.output import TaskRow, combine
from milex_common.errors import MilexError
from milex_common.model import JobState, JobStatus, TaskStatus
from milex_common.protocol import Event, TrackedJob
from milex_common.usage import Usage

# The schema, as the migrations that build it: a journal's `PRAGMA user_version` says how many have
# run. 0 is a journal of the first release, which had no version (its tables are migration 1's).
# Append, never edit: a journal on a login node may be opened by any later release.
_FINISHED = tuple(state.value for state in JobState if state.finished)
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS jobs (
        key TEXT PRIMARY KEY,
        bundle TEXT NOT NULL,
        name TEXT NOT NULL,
        job_id TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL,
        exit_code INTEGER,
        reason TEXT NOT NULL DEFAULT '',
        script TEXT NOT NULL DEFAULT '',
        stdout TEXT NOT NULL DEFAULT '',
        stderr TEXT NOT NULL DEFAULT '',
        scheduler TEXT NOT NULL DEFAULT 'slurm',
        machine_path TEXT NOT NULL DEFAULT '',
        submitted_at REAL NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS jobs_by_id ON jobs (job_id);
    CREATE INDEX IF NOT EXISTS jobs_by_bundle ON jobs (bundle);
    CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL,
        state TEXT NOT NULL,
        exit_code INTEGER,
        reason TEXT NOT NULL DEFAULT '',
        time REAL NOT NULL
    );
    """,
    # Each poll asks for the unfinished jobs: an index of those alone, not a scan of every job ever.
    # (Its condition is the text of `_UNFINISHED`, so that SQLite sees the query can use it.)
    """
    CREATE INDEX IF NOT EXISTS jobs_unfinished ON jobs (state) WHERE state NOT IN ('COMPLETED',
        'FAILED','CANCELLED','TIMEOUT','OUT_OF_MEMORY','NODE_FAIL','PREEMPTED');
    """,
    # The agent's own queue: a submit request is kept whole (its jobs' specs and settings) while any
    # of its jobs waits (QUEUED) for room in the scheduler; `tasks` is what a job counts toward the
    # user's limit (an array's tasks each).
    """
    CREATE TABLE requests (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        bundle TEXT NOT NULL,
        body BLOB NOT NULL,
        created REAL NOT NULL
    );
    ALTER TABLE jobs ADD COLUMN request INTEGER;
    ALTER TABLE jobs ADD COLUMN tasks INTEGER NOT NULL DEFAULT 1;
    CREATE INDEX jobs_queued ON jobs (request) WHERE state = 'QUEUED';
    ALTER TABLE jobs ADD COLUMN part_of TEXT;
    ALTER TABLE jobs ADD COLUMN window INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_parts ON jobs (part_of) WHERE part_of IS NOT NULL;
    """,
    # An array's tasks (milex_agent.array_tasks): `task_states`, their last known states (msgpack,
    # written only when one changed; NULL for a job that is no array); an event of one task's change
    # has the task in `task` (msgpack), and the array's status then in its own columns.
    """
    ALTER TABLE jobs ADD COLUMN task_states BLOB;
    ALTER TABLE events ADD COLUMN task BLOB;
    """,
    # What each ended job used (milex_agent.usage_gathering): msgpack of milex_common.usage.Usage, by
    # key; a job that ended lately (`updated_at`) and has no row yet is asked for at the next poll.
    """
    CREATE TABLE usage (key TEXT PRIMARY KEY, body BLOB NOT NULL, recorded REAL NOT NULL);
    CREATE INDEX jobs_by_update ON jobs (updated_at);
    """,
    # A run with a `notify` command (milex_agent.run_ends): the command, the run's jobs (a JSON list
    # of [name, key]), and when the command was started (NULL: not yet; its keys are then emptied).
    """
    CREATE TABLE run_notices (
        run TEXT PRIMARY KEY,
        bundle TEXT NOT NULL,
        run_id TEXT NOT NULL,
        machine TEXT NOT NULL,
        machine_path TEXT NOT NULL,
        command TEXT NOT NULL,
        keys TEXT NOT NULL,
        created REAL NOT NULL,
        sent REAL
    );
    CREATE INDEX run_notices_due ON run_notices (run) WHERE sent IS NULL;
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)
# A TrackedJob's columns: every field but its tasks, which are the column `task_states`, and its
# script's sha256, which is not kept (the reply to a submission reads the script).
_JOB_COLUMNS = ", ".join(
    (*(f for f in TrackedJob.__struct_fields__ if f not in ("tasks", "script_sha256")), "task_states")
)
_STATUS_COLUMNS = ", ".join(("key", *(f for f in JobStatus.__struct_fields__ if f != "tasks"), "task_states"))
_usage_decoder = msgspec.msgpack.Decoder(Usage)
_UNFINISHED = f"state NOT IN ({','.join(repr(state) for state in _FINISHED)})"  # of every release
# A job whose submission was started but whose scheduler id is not known yet: no id, state SUBMITTED.
# (A job without id in any other state never reached the scheduler: QUEUED, or ended before it did.)
IN_DOUBT = ""
_IN_DOUBT = "job_id = '' AND state = 'SUBMITTED' AND window = 0"
_IN_SCHEDULER = f"((job_id != '' AND {_UNFINISHED}) OR ({_IN_DOUBT})) AND window = 0"
_WATCHED = f"job_id != ? AND {_UNFINISHED} AND window = 0"  # `unfinished`, with IN_DOUBT for the ?
# What an agent is there for: a job in the scheduler not yet ended, in doubt, or waiting in the queue.
# The agent stays while there is some (milex_agent.lifetime); the watchdog starts one for it.
# A run's notification not yet sent is work too (its jobs may all have ended just before a crash).
_WORK = (
    f"SELECT 1 FROM jobs WHERE ({_IN_SCHEDULER}) OR state = 'QUEUED'"
    " UNION ALL SELECT 1 FROM run_notices WHERE sent IS NULL LIMIT 1"
)
# An array too big for SLURM is cut into windows (milex_agent.array_windows): each window is a row of
# its own (`part_of` its array's key), submitted, polled and looked up as any job, but never shown; the
# array's own row (`window`: the size it was cut at) is what clients see, its status the windows'
# together (its id the first window's), and it is neither polled nor looked up itself.


class JournalError(MilexError):
    """The journal cannot be opened or written (damaged, from a newer agent, disk full: `full`)."""

    def __init__(self, message: str, *, full: bool = False) -> None:
        super().__init__(message)
        self.full = full


class Standing(NamedTuple):
    """A job's scheduler id ('' while it has none), its state, and the size its array was cut at (0)."""

    job_id: str
    state: JobState
    window: int


class JobRow(NamedTuple):
    """A job as the journal keeps it: what clients see of it, and the scheduler that serves it."""

    job: TrackedJob
    scheduler: str
    machine_path: str


class Watched(NamedTuple):
    """What a poll needs of an unfinished job, read as a plain row (no TrackedJob made: an agent may
    watch 100,000 jobs, and reads them at every poll)."""

    key: str
    job_id: str
    state: str  # a JobState's value
    exit_code: int | None
    reason: str
    submitted_at: float
    scheduler: str
    machine_path: str


class Journal:
    """Jobs by idempotency key, and the numbered events of their state changes."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.usage_writes = 0  # usage recorded by this process (record_usage), for those who wait for it
        self.space = DiskSpace(path)  # a full disk told once in the log, and the space coming back
        self.db = _open(path)
        # Only this agent writes its journal (it holds the lock), so the newest sequence number is
        # kept here rather than asked of SQLite at every turn of the server's loop.
        self._last_seq: int = self.db.execute("SELECT MAX(seq) FROM events").fetchone()[0] or 0
        self._new = 0  # events recorded in the write under way
        self._touched: set[str] = set()  # arrays whose windows changed in the write under way
        self._open = False  # a write transaction is under way: writes made meanwhile join it
        self._batched = False  # a `batch` is under way: its first write begins its transaction

    def close(self) -> None:
        self.db.close()

    def writing(self) -> contextlib.AbstractContextManager[None]:
        """One write transaction, for the tables a module of its own keeps (milex_agent.run_ends)."""
        return self._writing()

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """One transaction for every write made inside it (each joins it rather than committing on its
        own), begun by the first of them (a batch that writes nothing costs nothing): a submission
        records the ids that came back and the intent for the jobs it starts next in one commit,
        before any of those jobs goes. Nothing of them is recorded if one fails."""
        if self._open or self._batched:
            return contextlib.nullcontext()
        return self._transaction(lazy=True)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One write transaction, or a part of the one under way (`batch`): committed, or not, with it."""
        self._new, self._touched = 0, set()
        if not self._open and self._batched:
            self._begin()
        if self._open:
            yield
            return
        with self._transaction(lazy=False):
            yield

    def _begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self._open = True

    @contextlib.contextmanager
    def _transaction(self, *, lazy: bool) -> Iterator[None]:
        """A write transaction, begun at once or (`lazy`) by the first write inside it; JournalError
        (naming the file) when SQLite cannot write it."""
        changes, last_seq = self.db.total_changes, self._last_seq
        self._batched = lazy
        try:
            with self.db:  # commits what is begun; rolls it back on any failure
                if not lazy:
                    self._begin()
                yield
        except sqlite3.Error as error:
            self._last_seq = last_seq  # events numbered inside were rolled back with it
            full = self.space.refused(error)
            what = f"{error}; {describe_free(self.path)}"
            advice = "the disk is full: free space on its filesystem; " if full else ""
            raise JournalError(
                f"the agent could not write its journal {self.path} ({what}); {advice}nothing of this "
                "change was recorded, and what was recorded before is intact.",
                full=full,
            ) from None
        except BaseException:
            self._last_seq = last_seq
            raise
        finally:
            self._open = self._batched = False
        if self.db.total_changes != changes:  # a write that wrote nothing proves no space
            self.space.wrote()

    # ---- submission --------------------------------------------------------------------------

    def find(self, key: str) -> TrackedJob | None:
        row = self.db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE key = ?", (key,)).fetchone()
        return _tracked(row) if row else None

    def standing(self, key: str) -> Standing | None:
        """Where the job `key` stands, without the rest of its row: what a submission asks of each job
        before it starts it, and of each of its dependencies."""
        row = self.db.execute("SELECT job_id, state, window FROM jobs WHERE key = ?", (key,)).fetchone()
        return Standing(row[0], JobState(row[1]), row[2]) if row else None

    def begin(self, job: TrackedJob, *, scheduler: str, machine_path: str) -> None:
        """Record the intent to submit `job` before the scheduler is asked, so a crash leaves a trace."""
        self.begin_many([job], scheduler=scheduler, machine_path=machine_path)

    def begin_many(
        self,
        jobs: Sequence[TrackedJob],
        *,
        scheduler: str,
        machine_path: str,
        part_of: Mapping[str, str] | None = None,
    ) -> None:
        """`begin` for several jobs of one machine, in one transaction (a queued job keeps its request);
        `part_of`: the array key of each job that is a window of an array."""
        now, part_of = time.time(), part_of or {}
        with self._writing():
            self.db.executemany(
                "INSERT INTO jobs (key, bundle, name, job_id, state, script, stdout, stderr,"
                " scheduler, machine_path, submitted_at, updated_at, part_of)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (key) DO UPDATE SET job_id = excluded.job_id, state = excluded.state,"
                " reason = '', script = excluded.script, stdout = excluded.stdout, stderr = excluded.stderr,"
                " updated_at = excluded.updated_at",
                [(job.key, job.bundle, job.name, IN_DOUBT, JobState.SUBMITTED.value, job.script,
                  job.stdout, job.stderr, scheduler, machine_path, now, now, part_of.get(job.key))
                 for job in jobs],
            )  # fmt: skip

    def split(self, key: str, size: int, windows: Sequence[tuple[str, int]]) -> None:
        """The array `key` goes to the scheduler as windows of `size` indices: their keys, and the tasks
        each counts for, queued (the array itself then counts for none: its windows do)."""
        with self._writing():
            self.db.execute("UPDATE jobs SET window = ?, tasks = 0 WHERE key = ?", (size, key))
            array = self.db.execute(
                "SELECT bundle, name, scheduler, machine_path, request FROM jobs WHERE key = ?", (key,)
            ).fetchone()
            now = time.time()
            self.db.executemany(
                "INSERT OR IGNORE INTO jobs (key, bundle, name, job_id, state, scheduler, machine_path,"
                " submitted_at, updated_at, request, tasks, part_of) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [(window, array["bundle"], array["name"], IN_DOUBT, JobState.QUEUED.value,
                  array["scheduler"], array["machine_path"], now, now, array["request"], tasks, key)
                 for window, tasks in windows],
            )  # fmt: skip

    def window_size(self, key: str) -> int:
        """The size the array `key` was cut at (0: not cut)."""
        row = self.db.execute("SELECT window FROM jobs WHERE key = ?", (key,)).fetchone()
        return row[0] if row else 0

    def windows(self, key: str) -> tuple[int, list[TrackedJob]]:
        """The size an array was cut at (0: not cut), and its windows in index order."""
        rows = self.db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE part_of = ? ORDER BY rowid", (key,))
        return self.window_size(key), [_tracked(window) for window in rows]

    def submitted(self, key: str, job_id: str) -> Event:
        """The scheduler accepted the job as `job_id`: record it, with its first event."""
        return self.submitted_many([(key, job_id)])[0]

    def submitted_many(self, accepted: Sequence[tuple[str, str]]) -> list[Event]:
        """`submitted` for several (key, job id) pairs, in one transaction."""
        with self._writing():
            for key, job_id in accepted:
                self._record(key, JobStatus(job_id=job_id, state=JobState.SUBMITTED), job_id=job_id)
            events = self._events()
        return self._committed(events)

    def forget(self, key: str) -> None:
        """The scheduler refused the job: it was never submitted, so nothing is tracked."""
        with self._writing():
            self.db.execute("DELETE FROM jobs WHERE key = ?", (key,))

    def in_doubt(self) -> list[JobRow]:
        """Jobs whose submission was interrupted, with the scheduler that was asked."""
        return self._rows(_IN_DOUBT, ())

    # ---- the agent's queue -------------------------------------------------------------------

    def enqueue(
        self,
        bundle: str,
        body: bytes,
        jobs: Sequence[tuple[TrackedJob, int]],
        *,
        scheduler: str,
        machine_path: str,
    ) -> None:
        """Keep a submit request (`body`) and queue its jobs not seen before, each with the tasks it
        counts for. Jobs already known (a retried request) are left as they are. No event: a job that
        goes to the scheduler at once is seen SUBMITTED first; one that waits gets its QUEUED event
        from `hold`."""
        now = time.time()
        with self._writing():
            request = self.db.execute(
                "INSERT INTO requests (bundle, body, created) VALUES (?,?,?)", (bundle, body, now)
            ).lastrowid
            queued = 0
            for job, tasks in jobs:
                queued += self.db.execute(
                    "INSERT OR IGNORE INTO jobs (key, bundle, name, job_id, state, script, stdout,"
                    " stderr, scheduler, machine_path, submitted_at, updated_at, request, tasks)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (job.key, job.bundle, job.name, IN_DOUBT, JobState.QUEUED.value, job.script,
                     job.stdout, job.stderr, scheduler, machine_path, now, now, request, tasks),
                ).rowcount  # fmt: skip
            if not queued:
                self.db.execute("DELETE FROM requests WHERE id = ?", (request,))

    def hold(self, keys: Sequence[str], reason: str) -> list[Event]:
        """These queued jobs still wait, for `reason`; a QUEUED event for each that starts waiting
        (a new reason alone makes none). Jobs in any other state are left as they are."""
        with self._writing():
            self._hold(keys, reason)
            events = self._events()
        return self._committed(events)

    def requeue(self, keys: Sequence[str], reason: str = "") -> list[Event]:
        """These jobs are known not to be in the scheduler (refused for a limit, or proven absent):
        each of a kept request waits in the queue again (for `reason`, if given); one of an older
        journal is no longer tracked."""
        with self._writing():
            self._requeue(keys, reason)
            events = self._events()
        return self._committed(events)

    def lost(self, jobs: Sequence[tuple[str, str]], reason: str) -> list[Event]:
        """The scheduler no longer has these (key, id) jobs it accepted (a controller restarted from
        older state): they lose their id, which the scheduler may give out again, and wait in the queue
        for `reason`, to be submitted again. A job whose id has changed meanwhile is left as it is."""
        with self._writing():
            keys = [
                key
                for key, job_id in jobs
                if self.db.execute(
                    "UPDATE jobs SET job_id = '' WHERE key = ? AND job_id = ?", (key, job_id)
                ).rowcount
            ]
            self._requeue(keys, reason)
            events = self._events()
        return self._committed(events)

    def requests_of(self, keys: Iterable[str]) -> list[tuple[bytes, set[str]]]:
        """The kept submit requests of the jobs `keys`, each read once, with those of `keys` it holds
        (a job without one kept, as of an older release, is left out)."""
        held: dict[int, set[str]] = {}
        for key in keys:
            row = self.db.execute("SELECT request FROM jobs WHERE key = ?", (key,)).fetchone()
            if row is not None and row[0] is not None:
                held.setdefault(row[0], set()).add(key)
        found = []
        for request, its_keys in held.items():
            body = self.db.execute("SELECT body FROM requests WHERE id = ?", (request,)).fetchone()
            if body is not None:
                found.append((body[0], its_keys))
        return found

    def _requeue(self, keys: Sequence[str], reason: str) -> None:
        for key in keys:
            if not self.db.execute(
                "UPDATE jobs SET state = 'QUEUED', reason = '' WHERE key = ? AND job_id = ''"
                " AND request IS NOT NULL AND request IN (SELECT id FROM requests)",
                (key,),
            ).rowcount:
                self.db.execute("DELETE FROM jobs WHERE key = ? AND job_id = ''", (key,))
        if reason:
            self._hold(keys, reason)

    def _hold(self, keys: Sequence[str], reason: str) -> None:
        for key in keys:
            if self.db.execute(
                "UPDATE jobs SET reason = ? WHERE key = ? AND state = 'QUEUED' AND reason = ''", (reason, key)
            ).rowcount:
                self._record(key, JobStatus(job_id=IN_DOUBT, state=JobState.QUEUED, reason=reason))
            else:
                self.db.execute(
                    "UPDATE jobs SET reason = ? WHERE key = ? AND state = 'QUEUED'", (reason, key)
                )

    def drop_queued(self, keys: Sequence[str]) -> None:
        """Forget these jobs if they still wait: their submission ended without them (a refusal)."""
        with self._writing():
            self.db.executemany(
                "DELETE FROM jobs WHERE key = ? AND state = 'QUEUED'", [(key,) for key in keys]
            )

    def settle_unsubmitted(self, keys: Sequence[str], state: JobState, reason: str) -> list[Event]:
        """Set the state of jobs that have no scheduler id (queued, or ended before submission)."""
        with self._writing():
            for key in keys:
                self._record(key, JobStatus(job_id=IN_DOUBT, state=state, reason=reason))
            events = self._events()
        return self._committed(events)

    def queued_requests(self) -> list[tuple[int, bytes]]:
        """The kept requests that still have queued jobs, oldest first: (id, body)."""
        rows = self.db.execute(
            "SELECT id, body FROM requests WHERE id IN (SELECT request FROM jobs WHERE state = 'QUEUED')"
            " ORDER BY id"
        )
        return [(row["id"], row["body"]) for row in rows]

    def drop_settled_requests(self) -> None:
        """Forget kept requests all of whose jobs have ended: until then a job may wait again (in doubt,
        or lost by a controller restarted from older state) and be submitted from its request."""
        with self._writing():
            self._drop_settled_requests()

    def _drop_settled_requests(self) -> None:
        self.db.execute(
            "DELETE FROM requests WHERE id NOT IN (SELECT request FROM jobs"
            f" WHERE {_UNFINISHED} AND request IS NOT NULL)"
        )

    def still_queued(self, keys: Sequence[str]) -> list[str]:
        """Those of `keys` whose jobs wait in the queue."""
        marks = ",".join("?" * len(keys))
        rows = self.db.execute(f"SELECT key FROM jobs WHERE state = 'QUEUED' AND key IN ({marks})", keys)
        return [row[0] for row in rows]

    def queued(self) -> int:
        """How many jobs wait in the agent's queue."""
        return int(self.db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'QUEUED'").fetchone()[0])

    def has_work(self) -> bool:
        """Whether a job is left for an agent: in the scheduler and not ended, in doubt, or queued."""
        return self.db.execute(_WORK).fetchone() is not None

    def in_scheduler(self) -> dict[tuple[str, str], int]:
        """Tasks the scheduler has (or may have: in doubt) and not finished, by (scheduler, machine path)."""
        rows = self.db.execute(
            f"SELECT scheduler, machine_path, SUM(tasks) FROM jobs WHERE {_IN_SCHEDULER}"
            " GROUP BY scheduler, machine_path"
        )
        return {(row[0], row[1]): int(row[2]) for row in rows}

    # ---- watching ----------------------------------------------------------------------------

    def watched(self, *, begun_before: float | None = None) -> Iterator[Watched]:
        """Submitted jobs not yet in a final state (an array cut in windows: its windows), begun before
        `begun_before`, with the scheduler that runs them: the plain rows a poll (and a check of the
        scheduler's jobs) reads, one at a time, about a tenth of the time and memory of whole jobs.
        Read them all before writing."""
        cursor = self.db.cursor()
        cursor.row_factory = None  # tuples: no sqlite3.Row per job
        cursor.execute(
            "SELECT key, job_id, state, exit_code, reason, submitted_at, scheduler, machine_path"
            f" FROM jobs WHERE {_WATCHED} AND submitted_at < ?",
            (IN_DOUBT, float("inf") if begun_before is None else begun_before),
        )
        return map(Watched._make, cursor)

    def watched_schedulers(self) -> set[tuple[str, str]]:
        """The (scheduler, machine path) of the jobs `watched` reads."""
        rows = self.db.execute(
            f"SELECT DISTINCT scheduler, machine_path FROM jobs WHERE {_WATCHED}", (IN_DOUBT,)
        )
        return {(row[0], row[1]) for row in rows}

    def has_unfinished(self) -> bool:
        """Whether `watched` has any job (one row read, not all)."""
        return (
            self.db.execute(f"SELECT 1 FROM jobs WHERE {_WATCHED} LIMIT 1", (IN_DOUBT,)).fetchone()
            is not None
        )

    def _rows(self, where: str, parameters: Sequence[object]) -> list[JobRow]:
        query = f"SELECT {_JOB_COLUMNS}, scheduler, machine_path FROM jobs WHERE {where}"
        return [
            JobRow(_tracked(row), row["scheduler"], row["machine_path"])
            for row in self.db.execute(query, parameters)
        ]

    def update(self, statuses: Iterable[tuple[str, JobStatus]]) -> list[Event]:
        """Apply (key, status) pairs; an event for each job whose state or exit code changed. A status
        of an id the job no longer has is left out."""
        statuses = [(key, status) for key, status in statuses if status.state is not JobState.UNKNOWN]
        if not statuses:
            return []
        with self._writing():
            recorded = self._recorded([key for key, _ in statuses])
            for key, status in statuses:
                known = recorded.get(key)
                # Another id: the job was submitted again since the poll was planned (its old id lost
                # with a controller's state), and the old id's status is not its own.
                if known is None or known.job_id != status.job_id:
                    continue
                status = array_tasks.polled(known.tasks, status)
                if status.tasks != known.tasks:  # before the array's own event: a wait ends at that
                    self._record_tasks(key, known, status.tasks)
                if (known.state, known.exit_code) == (status.state, status.exit_code):
                    if known.reason != status.reason:  # a new reason alone (Priority -> Resources): no event
                        self.db.execute("UPDATE jobs SET reason = ? WHERE key = ?", (status.reason, key))
                    continue
                self._record(key, status)
            if any(status.state.finished for _, status in statuses):
                self._drop_settled_requests()
            events = self._events()
        return self._committed(events)

    def _committed(self, events: list[Event]) -> list[Event]:
        if events:
            self._last_seq = events[-1].seq
        return events

    def _recorded(self, keys: list[str]) -> dict[str, JobStatus]:
        """The recorded status of these jobs, read in a few queries rather than one per job."""
        recorded = {}
        for start in range(0, len(keys), 500):  # SQLite caps the number of parameters
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(f"SELECT {_STATUS_COLUMNS} FROM jobs WHERE key IN ({marks})", chunk)
            recorded.update({row["key"]: _status(row) for row in rows})
        return recorded

    def _record_tasks(self, key: str, known: JobStatus, tasks: list[TaskStatus]) -> None:
        """Keep the job's `tasks`, and number each task's change as an event carrying the task and the
        job's status as it stood (`known`): its own change, if any, is the event after them, so that a
        client that stops at the job's end has taken every task first. A window's tasks make none:
        its array's change with them."""
        self.db.execute(
            "UPDATE jobs SET task_states = ? WHERE key = ?", (array_tasks.encode_tasks(tasks), key)
        )
        part_of = self.db.execute("SELECT part_of FROM jobs WHERE key = ?", (key,)).fetchone()
        if part_of is not None and part_of[0]:
            self._touched.add(part_of[0])
            return
        now = time.time()
        changes = array_tasks.changed(known.tasks, tasks)
        self.db.executemany(
            "INSERT INTO events (key, state, exit_code, reason, time, task) VALUES (?,?,?,?,?,?)",
            [(key, known.state.value, known.exit_code, known.reason, now, array_tasks.encode_task(task))
             for task in changes],
        )  # fmt: skip
        self._new += len(changes)

    def _record(self, key: str, status: JobStatus, *, job_id: str | None = None) -> None:
        """Set the job's status (and its scheduler id, if given), and number the change as an event
        (read back by `_events`); a window of an array gets none: its array's status changes with it
        (`_settle_arrays`)."""
        now = time.time()
        # (No RETURNING: the SQLite of a login node's Python may predate it, 3.35.)
        if job_id is None:
            self.db.execute(
                "UPDATE jobs SET state = ?, exit_code = ?, reason = ?, updated_at = ? WHERE key = ?",
                (status.state.value, status.exit_code, status.reason, now, key),
            )
        else:
            self.db.execute(
                "UPDATE jobs SET state = ?, exit_code = ?, reason = ?, updated_at = ?, job_id = ?"
                " WHERE key = ?",
                (status.state.value, status.exit_code, status.reason, now, job_id, key),
            )
        part_of = self.db.execute("SELECT part_of FROM jobs WHERE key = ?", (key,)).fetchone()
        if part_of is not None and part_of[0]:
            self._touched.add(part_of[0])
            return
        self.db.execute(
            "INSERT INTO events (key, state, exit_code, reason, time) VALUES (?,?,?,?,?)",
            (key, status.state.value, status.exit_code, status.reason, now),
        )
        self._new += 1

    def _events(self) -> list[Event]:
        """The events recorded by the write under way, once the arrays its windows belong to follow."""
        self._settle_arrays()
        return self.events_since(self._last_seq, limit=self._new) if self._new else []

    def _settle_arrays(self) -> None:
        """The status of each array whose windows changed: theirs together; its id the first window's."""
        for key in sorted(self._touched):
            rows = self.db.execute(
                "SELECT key, job_id, state, exit_code, reason, task_states FROM jobs WHERE part_of = ?"
                " ORDER BY rowid",
                (key,),
            ).fetchall()
            job_id = next((row["job_id"] for row in rows if row["job_id"]), IN_DOUBT)
            tasks = [
                TaskRow(job_id, "", JobState(row["state"]), row["reason"], row["exit_code"]) for row in rows
            ]
            status = combine(job_id, tasks)
            status.tasks = tasks_of_windows(
                [(row["key"], array_tasks.decode_tasks(row["task_states"])) for row in rows]
            )
            known = self.db.execute(f"SELECT {_STATUS_COLUMNS} FROM jobs WHERE key = ?", (key,)).fetchone()
            self.db.execute("UPDATE jobs SET job_id = ? WHERE key = ?", (job_id, key))
            if known is None:
                continue
            before = _status(known)
            if status.tasks and status.tasks != before.tasks:
                self._record_tasks(key, before, status.tasks)
            if (before.state, before.exit_code) != (status.state, status.exit_code):
                self._record(key, status)
        self._touched.clear()

    def events_since(self, seq: int, limit: int = 1000) -> list[Event]:
        rows = self.db.execute(
            "SELECT e.seq, e.key, j.bundle, j.name, j.job_id, e.state, e.exit_code, e.reason, e.time, e.task"
            " FROM events e JOIN jobs j ON j.key = e.key WHERE e.seq > ? ORDER BY e.seq LIMIT ?",
            (seq, limit),
        )
        events = []
        for row in rows:
            fields = dict(row)
            task = fields.pop("task")
            event = msgspec.convert(fields, Event)
            event.tasks = array_tasks.decode_task(task)
            events.append(event)
        return events

    @property
    def last_seq(self) -> int:
        return self._last_seq

    # ---- usage -------------------------------------------------------------------------------

    def awaiting_usage(self, ended_since: float) -> list[JobRow]:
        """Jobs that reached the scheduler and ended after `ended_since` (their `updated_at`) without
        their usage recorded (an array cut in windows: its windows)."""
        return self._rows(
            f"job_id != '' AND NOT ({_UNFINISHED}) AND window = 0 AND updated_at > ?"
            " AND key NOT IN (SELECT key FROM usage)",
            (ended_since,),
        )

    def record_usage(self, usage: Mapping[str, Usage]) -> None:
        """Keep what these jobs (by key) used."""
        now = time.time()
        with self._writing():
            self.db.executemany(
                "INSERT OR REPLACE INTO usage (key, body, recorded) VALUES (?,?,?)",
                [(key, msgspec.msgpack.encode(used), now) for key, used in usage.items()],
            )
        self.usage_writes += 1

    def usage(self, keys: Sequence[str]) -> dict[str, Usage]:
        """What the jobs of `keys` used, of those whose usage is recorded (an array cut in windows: its
        windows' together, each task by its own index)."""
        found: dict[str, Usage] = {}
        for start in range(0, len(keys), 500):  # SQLite caps the number of parameters
            chunk = list(keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                "SELECT COALESCE(j.part_of, u.key) AS job, u.key, u.body FROM usage u JOIN jobs j"
                f" ON j.key = u.key WHERE u.key IN ({marks}) OR j.part_of IN ({marks}) ORDER BY j.rowid",
                chunk + chunk,
            )
            windows: dict[str, list[tuple[str, Usage]]] = {}
            for row in rows:
                windows.setdefault(row["job"], []).append((row["key"], _usage_decoder.decode(row["body"])))
            found.update({key: _merged(key, parts) for key, parts in windows.items()})
        return found

    # ---- queries -----------------------------------------------------------------------------

    def jobs(
        self, job_ids: Sequence[str] = (), bundle: str = "", *, in_doubt: bool = False
    ) -> list[TrackedJob]:
        """Tracked jobs with these ids, or of this bundle (`NAME_DATE`, or `NAME` for all its dates);
        with `in_doubt`, also those whose submission is under way or in doubt (no id yet)."""
        shown = "part_of IS NULL" if in_doubt else f"NOT ({_IN_DOUBT}) AND part_of IS NULL"
        query = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {shown}"
        parameters: list[str] = []
        if job_ids:
            query += f" AND job_id IN ({','.join('?' * len(job_ids))})"
            parameters += list(job_ids)
        if bundle:
            query += " AND (bundle = ? OR bundle GLOB ?)"
            parameters += [bundle, f"{_glob_escape(bundle)}_" + "[0-9]" * 14]
        rows = self.db.execute(query + " ORDER BY submitted_at, rowid", parameters)
        return [_tracked(row) for row in rows]


def holds_work(path: Path) -> bool:
    """Whether the journal at `path` has a job left for an agent (`Journal.has_work`), read while no
    agent runs and without taking the journal over: no migration, no write. None there holds none; a
    journal this release cannot read as it is (damaged, another schema) is taken to hold some, so
    that the agent started for it migrates it, or says in its log why it cannot."""
    if not path.exists():
        return False
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                return True
            return db.execute(_WORK).fetchone() is not None
        finally:
            db.close()
    except sqlite3.Error:
        return True


def _open(path: Path) -> sqlite3.Connection:
    """The journal at `path`, checked and migrated to this release's schema.

    A damaged file is moved aside (never replaced in place, never deleted) and refused; a journal of
    a newer agent is refused untouched.
    """
    fresh = not path.exists()
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    try:
        if not fresh and db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("quick_check found damage")
        version = db.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as error:
        db.close()
        raise JournalError(_set_aside(path, error)) from None
    if version > SCHEMA_VERSION:
        db.close()
        raise JournalError(
            f"the journal {path} was written by a newer Milex agent (schema {version}; this agent "
            f"knows up to {SCHEMA_VERSION}); run that version (`milex agent deploy`), or upgrade this one."
        )
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    for number, migration in enumerate(_MIGRATIONS[version:], start=version + 1):
        with db:  # each migration and its version number in one transaction
            db.execute("BEGIN IMMEDIATE")
            for statement in migration.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {number}")
    return db


def _set_aside(path: Path, error: sqlite3.DatabaseError) -> str:
    """Move a damaged journal (and its WAL) aside; the message that says where, and what to do."""
    kept = path.with_name(f"{path.stem}.damaged-{time.strftime('%Y%m%d%H%M%S')}{path.suffix}")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").rename(f"{kept}{suffix}")
    return (
        f"the agent's journal {path} is damaged ({error}); it was moved to {kept} and kept there. "
        "The next start begins a new journal: jobs submitted before are no longer watched by Milex "
        "(they still run; see them with squeue). Keep the damaged file for a report."
    )


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _merged(key: str, parts: list[tuple[str, Usage]]) -> Usage:
    """A job's usage: its own row, or its windows' (keys `KEY~OFFSET`, whose tasks SLURM numbered from
    0 in each window) together, each task by the index the user asked for."""
    if len(parts) == 1 and parts[0][0] == key:
        return parts[0][1]
    tasks = []
    for window, usage in parts:
        offset = int(window.rpartition(WINDOW_MARK)[2] or 0)
        tasks += [
            msgspec.structs.replace(task, task=None if task.task is None else task.task + offset)
            for task in usage.tasks
        ]
    return Usage(tasks=tasks, note="" if tasks else parts[0][1].note)


def _tracked(row: sqlite3.Row) -> TrackedJob:
    job = msgspec.convert(dict(row), TrackedJob)  # other columns of the row are left out
    job.tasks = array_tasks.decode_tasks(row["task_states"])
    return job


def _status(row: sqlite3.Row) -> JobStatus:
    status = msgspec.convert(dict(row), JobStatus)
    status.tasks = array_tasks.decode_tasks(row["task_states"])
    return status
