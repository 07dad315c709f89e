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
from milex_common.model import JobState, JobStatus, TaskStatus, merge_tasks

# The files of one job directory, `STATE_DIR/JOB_ID/`.
SPEC_FILE = "spec.json"  # LocalJobSpec, written once at submission
STATE_FILE = "state.json"  # LocalJobRecord, replaced atomically at each transition
SCRIPT_FILE = "script.sh"  # the script as submitted; later edits of the original do not leak in
RUNNER_LOCK = "runner.lock"  # flock held by the runner for its whole life: free means it is gone
STATE_LOCK = "state.lock"  # flock serialising read-modify-write of STATE_FILE
RUNNER_LOG = "runner.log"  # the runner's own stderr (tracebacks), not the job's
# An array's tasks as they start and end: one TaskStatus a line, appended (the last line of an index
# wins), so that a task's change costs a line, not a rewrite of every task in STATE_FILE; folded into
# STATE_FILE when the job changes, and no longer read once it has ended.
TASKS_FILE = "tasks.jsonl"
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
    """The job's record; while it has not ended, with its tasks' latest states (TASKS_FILE)."""
    record = msgspec.json.decode((job_dir / STATE_FILE).read_bytes(), type=LocalJobRecord)
    if record.tasks and not record.state.finished:
        record.tasks = merge_tasks(record.tasks, read_tasks(job_dir))
    return record if record.job_id else msgspec.structs.replace(record, job_id=job_dir.name)


def append_task(job_dir: Path, task: TaskStatus) -> None:
    """Record a task's new state: one line (a single write, whole, with O_APPEND)."""
    fd = os.open(job_dir / TASKS_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, _task_encoder.encode(task) + b"\n")
    finally:
        os.close(fd)


def read_tasks(job_dir: Path) -> list[TaskStatus]:
    """The tasks' changes appended so far, oldest first (a line still being written is skipped)."""
    try:
        lines = (job_dir / TASKS_FILE).read_bytes().splitlines()
    except FileNotFoundError:
        return []
    tasks = []
    for line in lines:
        try:
            tasks.append(_task_decoder.decode(line))
        except msgspec.DecodeError:
            continue
    return tasks


_task_encoder = msgspec.json.Encoder()
_task_decoder = msgspec.json.Decoder(TaskStatus)


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
