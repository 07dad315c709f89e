"""The on-disk records of the `local` scheduler: one directory per job, with its spec and state."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec

from milex_common.files import atomic_write, is_locked
from milex_common.model import JobState, JobStatus, TaskStatus

# The files of one job directory, `STATE_DIR/JOB_ID/`.
SPEC_FILE = "spec.json"  # LocalJobSpec, written once at submission
STATE_FILE = "state.json"  # LocalJobRecord, replaced atomically at each transition
SCRIPT_FILE = "script.sh"  # the script as submitted; later edits of the original do not leak in
RUNNER_LOCK = "runner.lock"  # flock held by the runner for its whole life: free means it is gone
STATE_LOCK = "state.lock"  # flock serialising read-modify-write of STATE_FILE
RUNNER_LOG = "runner.log"  # the runner's own stderr (tracebacks), not the job's
VANISHED = "runner process vanished"


class LocalJobSpec(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a local job runs and waits for; `output`/`error` keep SLURM's `%j`/`%A`/`%a` patterns."""

    job_id: str
    script: str
    submit_dir: str
    after: list[str] = []
    dependency_type: str = "afterok"
    comment: str = ""
    job_name: str = ""
    array: str | None = None
    output: str | None = None
    error: str | None = None
    submitted: float = 0.0


class LocalJobRecord(JobStatus, kw_only=True):
    """Where a local job is (its JobStatus), and `pid`, its runner's, which also leads its process group.

    The file keeps the previous release's flat layout, which had no `job_id` (the directory names the
    job): `read_record` fills it in, and the previous release ignores it.
    """

    job_id: str = ""
    pid: int | None = None
    updated: float = 0.0


def job_directory(state_dir: Path, job_id: str) -> Path | None:
    """The directory of `job_id`, or None for a string that cannot be a local job id."""
    return state_dir / job_id if job_id.isascii() and job_id.isdigit() else None


def read_spec(job_dir: Path) -> LocalJobSpec:
    return msgspec.json.decode((job_dir / SPEC_FILE).read_bytes(), type=LocalJobSpec)


def read_record(job_dir: Path) -> LocalJobRecord:
    record = msgspec.json.decode((job_dir / STATE_FILE).read_bytes(), type=LocalJobRecord)
    return record if record.job_id else msgspec.structs.replace(record, job_id=job_dir.name)


def write_record(job_dir: Path, record: LocalJobRecord, **changes: object) -> LocalJobRecord:
    """Write `record` with `changes` applied; callers hold STATE_LOCK when they read it first."""
    new = msgspec.structs.replace(record, **changes, updated=time.time())
    atomic_write(job_dir / STATE_FILE, msgspec.json.encode(new))
    return new


def read_status(state_dir: Path, job_id: str) -> JobStatus:
    """The status of one job from its state file; a dead runner's unfinished job is FAILED."""
    job_dir = job_directory(state_dir, job_id)
    if job_dir is None or not (job_dir / STATE_FILE).is_file():
        reason = f"no such job under the local scheduler's state directory {state_dir}"
        return JobStatus(job_id=job_id, state=JobState.UNKNOWN, reason=reason)
    record = read_record(job_dir)
    if not record.state.finished and not runner_alive(job_dir):
        tasks = ended_tasks(record.tasks, JobState.FAILED)
        return JobStatus(job_id=job_id, state=JobState.FAILED, reason=VANISHED, tasks=tasks)
    return record.status()


def ended_tasks(tasks: list[TaskStatus], state: JobState) -> list[TaskStatus]:
    """An array's tasks once the job has ended in `state` without them: those not finished end so."""
    return [task if task.state.finished else TaskStatus(index=task.index, state=state) for task in tasks]


def runner_alive(job_dir: Path) -> bool:
    """Whether a process still holds the job's runner lock (the kernel drops it when it dies)."""
    return is_locked(job_dir / RUNNER_LOCK)


@contextmanager
def file_lock(path: Path) -> Iterator[int]:
    """Hold an exclusive flock on `path` (created if needed) for the duration of the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)
