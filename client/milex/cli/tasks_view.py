"""An array's tasks as `milex status` shows them: counts on the array's line, a line per task with
`--tasks`, and objects in `--json`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from milex_common.model import JobState, JobStatus, task_counts
from milex_common.protocol import TrackedJob

if TYPE_CHECKING:
    from rich.table import Table

# The order of the counts after "N/M done": the tasks' own failures first, then SLURM's ends, then
# those still to come.
_COUNTED = (
    JobState.FAILED,
    JobState.OUT_OF_MEMORY,
    JobState.TIMEOUT,
    JobState.NODE_FAIL,
    JobState.PREEMPTED,
    JobState.CANCELLED,
    JobState.RUNNING,
    JobState.PENDING,
    JobState.SUBMITTED,
    JobState.QUEUED,
    JobState.UNKNOWN,
)
_WORDS = {
    JobState.OUT_OF_MEMORY: "out of memory",
    JobState.TIMEOUT: "timed out",
    JobState.NODE_FAIL: "node failed",
}


def counts(status: JobStatus) -> str:
    """`7/10 done, 1 failed, 2 running` for an array whose tasks are known; "" for any other job."""
    if not status.tasks:
        return ""
    by_state = task_counts(status.tasks)
    said = [f"{by_state.get(JobState.COMPLETED, 0)}/{len(status.tasks)} done"]
    said += [f"{by_state[state]} {_word(state)}" for state in _COUNTED if by_state.get(state)]
    return ", ".join(said)


def _word(state: JobState) -> str:
    return _WORDS.get(state, state.value.lower())


def tasks_table(jobs: Sequence[TrackedJob], title: str) -> Table:
    """A line per task of each array of `jobs`: its job and the array's id, the task's index (the one
    the user asked for, also in an array cut in windows), state, exit code and reason."""
    from rich.table import Table

    view = Table(title=title, title_justify="left")
    for column in ("job", "id", "task", "state", "exit", "reason"):
        view.add_column(column)
    for job in jobs:
        for task in job.tasks:
            exit_code = "" if task.exit_code is None else str(task.exit_code)
            view.add_row(job.name, job.job_id, str(task.index), task.state.value, exit_code, task.reason)
    return view


def as_json(jobs: Sequence[JobStatus], described: list[dict[str, Any]] | None = None) -> str:
    """`jobs` as a JSON list (or `described`, their fields with more beside), each array's tasks as
    objects (`{"index": 3, "state": "FAILED", "exit_code": 2}`) rather than the compact lists the
    wire and the records keep."""
    import msgspec

    listed: list[dict[str, Any]] = described if described is not None else msgspec.to_builtins(list(jobs))
    for job, encoded in zip(jobs, listed, strict=True):
        if job.tasks:
            encoded["tasks"] = [
                {"index": t.index, "state": t.state.value, "exit_code": t.exit_code, "reason": t.reason}
                for t in job.tasks
            ]
    return msgspec.json.encode(listed).decode()
