"""The runs whose end the agent must tell (a `notify` command in their settings), kept in the journal:
recorded at submission, found once every job of theirs has ended, marked sent, each exactly once.

A run is the jobs of one submit request: its keys. Its row (table `run_notices`) outlives the request,
which the journal forgets once the jobs end. A job of the run the journal no longer has was never
submitted (refused, or left out when its submission stopped there): it counts as ended, CANCELLED.
The summary carries each job's usage: a run that has ended is told once the usage of its jobs is
recorded (milex_agent.usage_gathering: at most USAGE_WAIT after their end, when the scheduler's
accounting never comes), or at once for jobs that ended while no agent ran to ask for it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from milex_agent.journal import Journal
from milex_agent.usage_gathering import USAGE_WAIT
from milex_common.model import JobState
from milex_common.protocol import SubmitBundle
from milex_common.run_summary import JobOutcome, RunSummary, summarize

NEVER_SUBMITTED = "never submitted: refused, or its submission stopped before it"
_FINISHED = ",".join(repr(state.value) for state in JobState if state.finished)
_CHUNK = 500  # SQLite caps the number of parameters of a query
_USAGE_MARGIN = 60.0  # seconds past USAGE_WAIT that usage_gathering may take to record that none came


@dataclass(frozen=True)
class EndedRun:
    """A run all of whose jobs have ended, and the command that tells it."""

    run: str
    command: str
    machine_path: str
    summary: RunSummary


def run_id_of(request: SubmitBundle) -> str:
    """The run id every key of `request` ends with (`BUNDLE_DATE/JOB/RUN_ID`, milex.records.job_key);
    empty when its keys do not follow that form."""
    stem = request.bundle.stem
    ids = {key.rpartition("/")[2] for key in request.keys.values()}
    run_id = ids.pop() if len(ids) == 1 else ""
    if run_id and all(key == f"{stem}/{name}/{run_id}" for name, key in request.keys.items()):
        return run_id
    return ""


def record(journal: Journal, request: SubmitBundle) -> None:
    """Keep `request`'s notify command for its run (a retried request changes nothing). The keys are
    kept in the bundle's order, which the summary follows."""
    settings, stem = request.settings, request.bundle.stem
    run_id = run_id_of(request)
    jobs = [(job.name, request.keys[job.name]) for job in request.bundle.ordered_jobs()]
    run = f"{stem}/{run_id}" if run_id else f"{stem}/{min(request.keys.values(), default='')}"
    with journal.writing():
        journal.db.execute(
            "INSERT OR IGNORE INTO run_notices (run, bundle, run_id, machine, machine_path, command, keys,"
            " created) VALUES (?,?,?,?,?,?,?,?)",
            (run, stem, run_id, settings.name, settings.path, settings.notify, json.dumps(jobs), time.time()),
        )


def ended(journal: Journal) -> Iterator[EndedRun]:
    """The runs with a notification not yet sent whose jobs have all ended, oldest first."""
    rows = journal.db.execute(
        "SELECT run, bundle, run_id, machine, machine_path, command, keys FROM run_notices"
        " WHERE sent IS NULL ORDER BY created"
    ).fetchall()
    for row in rows:
        jobs = [(name, key) for name, key in json.loads(row["keys"])]
        keys = [key for _, key in jobs]
        if _all_ended(journal, keys) and not _usage_to_come(journal, keys):
            summary = summarize(row["bundle"], row["run_id"], row["machine"], outcomes(journal, jobs))
            yield EndedRun(row["run"], row["command"], row["machine_path"], summary)


def mark_sent(journal: Journal, run: str) -> None:
    """The run's command is being started: never again, even by a restarted agent (at most once)."""
    with journal.writing():
        journal.db.execute(
            "UPDATE run_notices SET sent = ?, keys = '[]' WHERE run = ? AND sent IS NULL", (time.time(), run)
        )


def outcomes(journal: Journal, jobs: Sequence[tuple[str, str]]) -> list[JobOutcome]:
    """How each of these (name, key) jobs ended, in their order (a job the journal lacks: never
    submitted)."""
    keys = [key for _, key in jobs]
    usage = journal.usage(keys)
    found: dict[str, JobOutcome] = {}
    for chunk in _chunks(keys):
        rows = journal.db.execute(
            f"SELECT key, name, job_id, state, exit_code, reason FROM jobs WHERE key IN ({_marks(chunk)})",
            chunk,
        )
        for row in rows:
            found[row["key"]] = JobOutcome(name=row["name"], key=row["key"], job_id=row["job_id"],
                                           state=JobState(row["state"]), exit_code=row["exit_code"],
                                           reason=row["reason"], usage=usage.get(row["key"]))  # fmt: skip
    return [
        found.get(key) or JobOutcome(name=name, key=key, state=JobState.CANCELLED, reason=NEVER_SUBMITTED)
        for name, key in jobs
    ]


def _usage_to_come(journal: Journal, keys: Sequence[str]) -> bool:
    """Whether a job of `keys` that reached the scheduler has no usage recorded yet, and ended lately
    enough for usage_gathering to record it still (what it gets, or after USAGE_WAIT that none came)."""
    recorded = journal.usage(keys)
    lately = time.time() - USAGE_WAIT - _USAGE_MARGIN
    for chunk in _chunks([key for key in keys if key not in recorded]):
        waiting = journal.db.execute(
            f"SELECT 1 FROM jobs WHERE key IN ({_marks(chunk)}) AND job_id != '' AND updated_at > ? LIMIT 1",
            [*chunk, lately],
        ).fetchone()
        if waiting is not None:
            return True
    return False


def _all_ended(journal: Journal, keys: Sequence[str]) -> bool:
    for chunk in _chunks(keys):
        unfinished = journal.db.execute(
            f"SELECT 1 FROM jobs WHERE key IN ({_marks(chunk)}) AND state NOT IN ({_FINISHED}) LIMIT 1",
            chunk,
        ).fetchone()
        if unfinished is not None:
            return False
    return True


def _chunks(keys: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(keys), _CHUNK):
        yield keys[start : start + _CHUNK]


def _marks(chunk: Sequence[str]) -> str:
    return ",".join("?" * len(chunk))
