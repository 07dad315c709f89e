"""The agent's journal on disk: every job it submitted (by idempotency key) and every state event.

SQLite in WAL mode: each change is one committed transaction, so a `kill -9` loses nothing that
was acknowledged, and a restarted agent reads back every job it must keep watching.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from milex.common.model import JobState, JobStatus
from milex.common.protocol import Event, TrackedJob

_SCHEMA = """
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
"""
_JOB_COLUMNS = (
    "key, bundle, name, job_id, state, exit_code, reason, script, stdout, stderr, submitted_at, updated_at"
)
# A job whose submission was started but whose scheduler id is not known yet.
IN_DOUBT = ""
_FINISHED = tuple(state.value for state in JobState if state.finished)


class Journal:
    """Jobs by idempotency key, and the numbered events of their state changes."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        # Only this agent writes its journal (it holds the lock), so the newest sequence number is
        # kept here rather than asked of SQLite at every turn of the server's loop.
        self._last_seq: int = self.db.execute("SELECT MAX(seq) FROM events").fetchone()[0] or 0

    def close(self) -> None:
        self.db.close()

    # ---- submission --------------------------------------------------------------------------

    def find(self, key: str) -> TrackedJob | None:
        row = self.db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE key = ?", (key,)).fetchone()
        return _tracked(row) if row else None

    def begin(self, job: TrackedJob, *, scheduler: str, machine_path: str) -> None:
        """Record the intent to submit `job` before the scheduler is asked, so a crash leaves a trace."""
        self.begin_many([job], scheduler=scheduler, machine_path=machine_path)

    def begin_many(self, jobs: Sequence[TrackedJob], *, scheduler: str, machine_path: str) -> None:
        """`begin` for several jobs of one machine, in one transaction."""
        now = time.time()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(
                "INSERT OR REPLACE INTO jobs (key, bundle, name, job_id, state, script, stdout, stderr,"
                " scheduler, machine_path, submitted_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [(job.key, job.bundle, job.name, IN_DOUBT, JobState.SUBMITTED.value, job.script,
                  job.stdout, job.stderr, scheduler, machine_path, now, now) for job in jobs],
            )  # fmt: skip

    def submitted(self, key: str, job_id: str) -> Event:
        """The scheduler accepted the job as `job_id`: record it, with its first event."""
        return self.submitted_many([(key, job_id)])[0]

    def submitted_many(self, accepted: Sequence[tuple[str, str]]) -> list[Event]:
        """`submitted` for several (key, job id) pairs, in one transaction."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("UPDATE jobs SET job_id = ? WHERE key = ?", [(i, k) for k, i in accepted])
            events = [self._event(key, JobState.SUBMITTED, None, "") for key, _ in accepted]
        return self._committed(events)

    def forget(self, key: str) -> None:
        """The scheduler refused the job: it was never submitted, so nothing is tracked."""
        self.db.execute("DELETE FROM jobs WHERE key = ?", (key,))

    def in_doubt(self) -> list[tuple[TrackedJob, str, str]]:
        """Jobs whose submission was interrupted, with their scheduler kind and machine path."""
        rows = self.db.execute(
            f"SELECT {_JOB_COLUMNS}, scheduler, machine_path FROM jobs WHERE job_id = ?", (IN_DOUBT,)
        ).fetchall()
        return [(_tracked(row[:12]), row[12], row[13]) for row in rows]

    # ---- watching ----------------------------------------------------------------------------

    def unfinished(self) -> list[tuple[TrackedJob, str, str]]:
        """Submitted jobs not yet in a final state, with their scheduler kind and machine path."""
        rows = self.db.execute(
            f"SELECT {_JOB_COLUMNS}, scheduler, machine_path FROM jobs "
            f"WHERE job_id != ? AND state NOT IN ({','.join('?' * len(_FINISHED))})",
            (IN_DOUBT, *_FINISHED),
        ).fetchall()
        return [(_tracked(row[:12]), row[12], row[13]) for row in rows]

    def update(self, statuses: Iterable[tuple[str, JobStatus]]) -> list[Event]:
        """Apply (key, status) pairs; an event for each job whose state or exit code changed."""
        events = []
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            statuses = list(statuses)
            recorded = self._recorded([key for key, _ in statuses])
            for key, status in statuses:
                row = recorded.get(key)
                if row is None or status.state is JobState.UNKNOWN:
                    continue
                if (row[0], row[1]) == (status.state.value, status.exit_code):
                    if row[2] != status.reason:  # a new reason alone (Priority -> Resources): no event
                        self.db.execute("UPDATE jobs SET reason = ? WHERE key = ?", (status.reason, key))
                    continue
                events.append(self._event(key, status.state, status.exit_code, status.reason))
        return self._committed(events)

    def _committed(self, events: list[Event]) -> list[Event]:
        if events:
            self._last_seq = events[-1].seq
        return events

    def _recorded(self, keys: list[str]) -> dict[str, tuple[str, int | None, str]]:
        """(state, exit code, reason) of these jobs, read in a few queries rather than one per job."""
        recorded = {}
        for start in range(0, len(keys), 500):  # SQLite caps the number of parameters
            chunk = keys[start : start + 500]
            rows = self.db.execute(
                f"SELECT key, state, exit_code, reason FROM jobs WHERE key IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            recorded.update({key: (state, exit_code, reason) for key, state, exit_code, reason in rows})
        return recorded

    def _event(self, key: str, state: JobState, exit_code: int | None, reason: str) -> Event:
        now = time.time()
        self.db.execute(
            "UPDATE jobs SET state = ?, exit_code = ?, reason = ?, updated_at = ? WHERE key = ?",
            (state.value, exit_code, reason, now, key),
        )
        cursor = self.db.execute(
            "INSERT INTO events (key, state, exit_code, reason, time) VALUES (?,?,?,?,?)",
            (key, state.value, exit_code, reason, now),
        )
        job = self.find(key)
        assert job is not None and cursor.lastrowid is not None
        return _event_of(job, cursor.lastrowid, now)

    def events_since(self, seq: int, limit: int = 1000) -> list[Event]:
        rows = self.db.execute(
            "SELECT e.seq, e.key, j.bundle, j.name, j.job_id, e.state, e.exit_code, e.reason, e.time"
            " FROM events e JOIN jobs j ON j.key = e.key WHERE e.seq > ? ORDER BY e.seq LIMIT ?",
            (seq, limit),
        ).fetchall()
        return [
            Event(seq=r[0], key=r[1], bundle=r[2], name=r[3], job_id=r[4], state=JobState(r[5]),
                  exit_code=r[6], reason=r[7], time=r[8])
            for r in rows
        ]  # fmt: skip

    @property
    def last_seq(self) -> int:
        return self._last_seq

    # ---- queries -----------------------------------------------------------------------------

    def jobs(self, job_ids: Sequence[str] = (), bundle: str = "") -> list[TrackedJob]:
        """Tracked jobs with these ids, or of this bundle (`NAME_DATE`, or `NAME` for all its dates)."""
        query, parameters = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id != ?", [IN_DOUBT]
        if job_ids:
            query += f" AND job_id IN ({','.join('?' * len(job_ids))})"
            parameters += list(job_ids)
        if bundle:
            query += " AND (bundle = ? OR bundle GLOB ?)"
            parameters += [bundle, f"{_glob_escape(bundle)}_" + "[0-9]" * 14]
        rows = self.db.execute(query + " ORDER BY submitted_at, rowid", parameters).fetchall()
        return [_tracked(row) for row in rows]


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _tracked(row: Sequence[object]) -> TrackedJob:
    key, bundle, name, job_id, state, exit_code, reason, script, stdout, stderr, sub, upd = row
    return TrackedJob(
        key=str(key), bundle=str(bundle), name=str(name), job_id=str(job_id), state=JobState(state),
        exit_code=exit_code, reason=str(reason), script=str(script), stdout=str(stdout),
        stderr=str(stderr), submitted_at=float(sub), updated_at=float(upd),  # type: ignore[arg-type]
    )  # fmt: skip


def _event_of(job: TrackedJob, seq: int, now: float) -> Event:
    return Event(
        seq=seq, key=job.key, bundle=job.bundle, name=job.name, job_id=job.job_id, state=job.state,
        exit_code=job.exit_code, reason=job.reason, time=now,
    )  # fmt: skip
