"""An array's tasks as the agent keeps them: encoded for the journal, merged from a poll, and the
changes that make one event each.

A poll gives the tasks the scheduler lists now; a task it no longer lists (squeue forgets a task
that ended MinJobAge ago while others run) keeps its last known state, and still counts in the
array's final state. Tasks are kept only for arrays, and written only when one changed.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from milex_agent.scheduler.slurm.output import combine_tasks
from milex_common.model import JobState, JobStatus, TaskStatus, merge_tasks

_encoder = msgspec.msgpack.Encoder()
_tasks_decoder = msgspec.msgpack.Decoder(list[TaskStatus])
_task_decoder = msgspec.msgpack.Decoder(TaskStatus)


def encode_tasks(tasks: Sequence[TaskStatus]) -> bytes | None:
    """The journal's column for `tasks`: NULL for a job that has none (no array)."""
    return _encoder.encode(list(tasks)) if tasks else None


def decode_tasks(blob: bytes | None) -> list[TaskStatus]:
    return _tasks_decoder.decode(blob) if blob else []


def encode_task(task: TaskStatus) -> bytes:
    return _encoder.encode(task)


def decode_task(blob: bytes | None) -> list[TaskStatus]:
    """The task of an event, as the event's `tasks` (none for an event of the job itself)."""
    return [_task_decoder.decode(blob)] if blob else []


def polled(known: Sequence[TaskStatus], status: JobStatus) -> JobStatus:
    """`status` as the scheduler reported it, with the tasks known before merged in. Once the array
    has ended, a task it no longer lists unfinished ended with it: one not started was cancelled
    (SLURM 22.05 prints an array's cancelled pending tasks as one row without index:
    slurm_captured/tasks/2205acct/squeue_cancelled.txt), one that ran ended as the array did; and the
    array's state is its tasks' together: a task that failed and was forgotten still makes it fail."""
    if not status.tasks:
        return JobStatus(
            job_id=status.job_id,
            state=status.state,
            exit_code=status.exit_code,
            reason=status.reason,
            tasks=list(known),
        )
    tasks = merge_tasks(known, status.tasks)
    if not status.state.finished:
        return JobStatus(
            job_id=status.job_id,
            state=status.state,
            exit_code=status.exit_code,
            reason=status.reason,
            tasks=tasks,
        )
    tasks = [task if task.state.finished else _ended(task, status.state) for task in tasks]
    combined = combine_tasks(status.job_id, tasks)
    return msgspec.structs.replace(combined, reason=status.reason or combined.reason)


def _ended(task: TaskStatus, state: JobState) -> TaskStatus:
    if task.state is JobState.RUNNING:
        return TaskStatus(index=task.index, state=state, reason=task.reason)
    return TaskStatus(index=task.index, state=JobState.CANCELLED, reason=task.reason)


def changed(known: Sequence[TaskStatus], tasks: Sequence[TaskStatus]) -> list[TaskStatus]:
    """The tasks whose state or exit code differs from the known one of their index (or that were not
    known): one event each. A new reason alone makes none."""
    before = {task.index: (task.state, task.exit_code) for task in known}
    return [task for task in tasks if before.get(task.index) != (task.state, task.exit_code)]
