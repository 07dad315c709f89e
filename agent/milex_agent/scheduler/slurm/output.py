"""SLURM's printed job states and exit codes (squeue, sacct, the job-completion log) decoded into JobStatus.

One convention for every source: a job that ended by itself has the exit code a shell would report
(its own, or 128 + the signal that killed it); a job SLURM ended (cancelled, timed out, preempted,
its node failed) has none, since the signal SLURM sent it is not the job's. The job-completion log
writes such a job's line before its exit status is known, so any other choice would make the
sources disagree. The tasks of an array (and components of a heterogeneous job) combine into one
status: an active task makes the job active; else the worst final state, with the exit code of
the worst task in it. An array's status carries its tasks too, each by the index the user sees
(a row of tasks not started yet, `123_[5-9%2]`, is one pending task per index).
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from milex_common.errors import InvalidValue
from milex_common.model import JobState, JobStatus, TaskStatus
from milex_common.slurm_values import array_indices, validate_array

SIGNAL_BASE = 128  # a shell reports a process killed by signal N as exiting with 128 + N
_NO_EXIT_CODE = frozenset({JobState.CANCELLED, JobState.TIMEOUT, JobState.PREEMPTED, JobState.NODE_FAIL})
# Before any final state: a job with one task still active (or not understood) is not over.
_ACTIVE_ORDER = (JobState.RUNNING, JobState.PENDING, JobState.SUBMITTED, JobState.QUEUED, JobState.UNKNOWN)
# Final states, worst first: the job's own failures (what its user can act on) before SLURM's ends.
_WORST_FIRST = (
    JobState.OUT_OF_MEMORY,
    JobState.FAILED,
    JobState.TIMEOUT,
    JobState.NODE_FAIL,
    JobState.PREEMPTED,
    JobState.CANCELLED,
    JobState.COMPLETED,
)
_JOBCOMP_FIELD = re.compile(r"(\w+)=(\S*)")
_SACCT_ID = re.compile(r"[_+.]")  # what follows a job id in sacct's JobID


class TaskRow(NamedTuple):
    """One row of SLURM's output: a job, or one task (or range of tasks) of an array."""

    job_id: str  # the id sbatch gave out: an array's own id for each of its tasks
    task: str  # the row's own name within that job ("" for a plain job)
    state: JobState
    reason: str
    exit_code: int | None  # as the row printed it, decoded; combine() decides whether it counts
    array_task: str = ""  # an array's task index (`4`), or its tasks not started yet (`[5-9%2]`, `5-9`)


def signal_exit_code(signal: int) -> int:
    """The exit code of a process killed by `signal`, as a shell reports it."""
    return SIGNAL_BASE + signal


def exit_code_from_pair(text: str) -> int | None:
    """`code:signal`, as sacct, scontrol and the job-completion log print an exit code."""
    code, colon, signal = text.strip().partition(":")
    if not code.isdecimal() or (colon and not signal.isdecimal()):
        return None
    return signal_exit_code(int(signal)) if colon and int(signal) else int(code)


def squeue_exit_code(text: str) -> int | None:
    """squeue's `exit_code` field: the raw wait status (`768` for exit 3, `9` for SIGKILL) as 22.05
    prints it, or `code:signal` (`3:0`, `0:9`) as 24.11 does (slurm_captured/2411)."""
    text = text.strip()
    if ":" in text:
        return exit_code_from_pair(text)
    if not text.isdecimal() or int(text) > 0xFFFF:  # NO_VAL and its kin: not known yet
        return None
    status = int(text)
    return signal_exit_code(status & 0x7F) if status & 0x7F else status >> 8


def squeue_rows(text: str) -> list[TaskRow]:
    """The rows of `squeue --noheader --array --Format=JobID:0|,ArrayJobID:0|,State:0|,Reason:0|,
    exit_code:0|,ArrayTaskID:0|` (see _SQUEUE_FORMAT in poll.py).

    An array's task prints its own job id beside its array's (`190|189|...`); the array's own row
    stands for the task that kept the array's id, or for its tasks not started yet; ArrayTaskID is
    the task's index (`N/A` for a job that is no array; tasks not started yet, `2-5%2`, where squeue
    prints them as one row). A heterogeneous job's component prints `200+1` as its JobID.
    """
    return list(iter_squeue_rows(text))


def iter_squeue_rows(text: str) -> Iterator[TaskRow]:
    """`squeue_rows`, one at a time (a poll of 100,000 jobs holds no list of them all)."""
    return (_squeue_row(line) for line in text.splitlines() if line.strip())


def _squeue_row(line: str) -> TaskRow:
    own_id, array_id, state, reason, exit_code, index, *_ = (
        *(part.strip() for part in line.split("|")),
        "",
        "",
        "",
    )
    if "+" in own_id:
        job_id, task = own_id.partition("+")[0], own_id[own_id.index("+") :]
    else:
        job_id = array_id if array_id not in ("", "N/A") else own_id
        task = "" if job_id == own_id else own_id
    return TaskRow(
        job_id=job_id,
        task=task,
        state=JobState.from_slurm(state),
        reason="" if reason == "None" else reason,
        exit_code=squeue_exit_code(exit_code),
        array_task="" if index == "N/A" else index,
    )


def sacct_rows(text: str) -> list[TaskRow]:
    """The rows of `sacct --noheader --parsable2 --format=JobID,State,ExitCode` but those of job
    steps (`123.batch`): JobID `123`, `123_4`, `123_[5-9]` (tasks not started) or `123+0` (a
    heterogeneous job's component); State such as `CANCELLED by 1000`; ExitCode `code:signal`."""
    rows = []
    for line in text.splitlines():
        sacct_id, state, exit_code, *_ = (*(part.strip() for part in line.split("|")), "", "")
        job_id = _SACCT_ID.split(sacct_id, maxsplit=1)[0]
        if job_id and "." not in sacct_id:
            task = sacct_id[len(job_id) :]
            index = task[1:] if task.startswith("_") else ""
            code = exit_code_from_pair(exit_code)
            rows.append(TaskRow(job_id, task, JobState.from_slurm(state), "", code, index))
    return rows


class JobCompLine(NamedTuple):
    """A line of the job-completion text log (jobcomp/filetxt)."""

    uid: str  # of the job's user (the log holds everybody's jobs)
    row: TaskRow
    submitted: str  # SubmitTime, as SLURM printed it (see slurm_time)


def jobcomp_line(line: str) -> JobCompLine:
    """A line of the job-completion text log, read. An array's task names its array and index
    (`ArrayJobId=189 ArrayTaskId=2`), a heterogeneous job's component its job and offset
    (`HetJobId=200 HetJobOffset=1`)."""
    fields = dict(_JOBCOMP_FIELD.findall(line))
    uid = fields.get("UserId", "").partition("(")[2].rstrip(")")
    index = ""
    if "ArrayJobId" in fields:
        job_id, task = fields["ArrayJobId"], fields.get("ArrayTaskId", "")
        index = task
    elif "HetJobId" in fields:
        job_id, task = fields["HetJobId"], "+" + fields.get("HetJobOffset", "")
    else:
        job_id, task = fields.get("JobId", ""), ""
    state = JobState.from_slurm(fields.get("JobState", ""))
    row = TaskRow(job_id, task, state, "", exit_code_from_pair(fields.get("ExitCode", "")), index)
    return JobCompLine(uid, row, fields.get("SubmitTime", ""))


def slurm_time(text: str) -> float | None:
    """A time SLURM printed in its standard format (`2026-11-25T17:30:21`, this host's local time),
    in seconds since the epoch; None for anything else (`Unknown`, `None`, another format)."""
    try:
        return time.mktime(time.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def submit_times(text: str) -> dict[str, float]:
    """When each job was submitted, from `sacct --noheader --parsable2 --format=JobID,Submit` run with
    SLURM_TIME_FORMAT=standard (an array's tasks and a job's steps under the job's own id)."""
    submitted: dict[str, float] = {}
    for line in text.splitlines():
        sacct_id, _, printed = line.partition("|")
        at = slurm_time(printed)
        if at is not None:
            submitted[_SACCT_ID.split(sacct_id.strip(), maxsplit=1)[0]] = at
    return submitted


def combine(job_id: str, rows: Iterable[TaskRow]) -> JobStatus:
    """One status for `job_id` from its rows (several for an array's tasks, which it carries by
    index); UNKNOWN without any."""
    rows = list(rows)
    if not rows:
        return JobStatus(job_id=job_id, state=JobState.UNKNOWN)
    if len(rows) == 1 and not rows[0].array_task:  # a plain job, most of a poll: its row as it is
        row = rows[0]
        exit_code = _exit_code(rows, row.state) if row.state.finished else None
        return JobStatus(job_id=job_id, state=row.state, exit_code=exit_code, reason=row.reason)
    tasks = task_statuses(rows)
    present = {row.state for row in rows}
    active = next((state for state in _ACTIVE_ORDER if state in present), None)
    if active is not None:
        return JobStatus(job_id=job_id, state=active, reason=_first_reason(rows, active), tasks=tasks)
    state = next(state for state in _WORST_FIRST if state in present)  # each state is in one list
    return JobStatus(
        job_id=job_id,
        state=state,
        exit_code=_exit_code(rows, state),
        reason=_first_reason(rows, state),
        tasks=tasks,
    )


def combine_tasks(job_id: str, tasks: Iterable[TaskStatus]) -> JobStatus:
    """The status of an array from its tasks alone (as `combine` makes it from SLURM's rows)."""
    rows = [TaskRow(job_id, str(t.index), t.state, t.reason, t.exit_code, str(t.index)) for t in tasks]
    return combine(job_id, rows)


def task_statuses(rows: Iterable[TaskRow]) -> list[TaskStatus]:
    """The tasks of an array's rows, by index (the last row of an index wins); none for a job that
    is no array. A task's exit code follows the job's convention: none while it runs or when SLURM
    ended it, 0 once it completed."""
    tasks: dict[int, TaskStatus] = {}
    for row in rows:
        for index in task_indices(row.array_task):
            tasks[index] = TaskStatus(
                index=index, state=row.state, exit_code=_task_exit_code(row), reason=row.reason
            )
    return [tasks[index] for index in sorted(tasks)]


def task_indices(text: str) -> list[int]:
    """The indices a row's task names: `4`, or the tasks not started yet as squeue (`5-9%2`) or sacct
    (`[5-9%2]`) prints them; none for a row that names none (or that Milex cannot read)."""
    spec = text.strip().removeprefix("[").removesuffix("]")
    if not spec:
        return []
    try:
        return array_indices(validate_array(spec))[0]
    except InvalidValue:
        return []


def _task_exit_code(row: TaskRow) -> int | None:
    if row.state is JobState.COMPLETED:
        return 0
    if not row.state.finished or row.state in _NO_EXIT_CODE:
        return None
    return row.exit_code or None  # a failed task that printed 0 (a state-only poll): not known


def statuses(job_ids: Iterable[str], rows: Iterable[TaskRow]) -> dict[str, JobStatus]:
    """The combined status of each of `job_ids` that `rows` mention."""
    rows_of: dict[str, list[TaskRow]] = defaultdict(list)
    for row in rows:
        rows_of[row.job_id].append(row)
    return {job_id: combine(job_id, rows_of[job_id]) for job_id in job_ids if job_id in rows_of}


def _exit_code(rows: list[TaskRow], state: JobState) -> int | None:
    """The exit code of the worst of the tasks that ended in `state`; None if SLURM ended them, or
    if none printed a non-zero one although they failed."""
    if state is JobState.COMPLETED:
        return 0
    codes = [row.exit_code for row in rows if row.state is state and row.exit_code]
    return max(codes) if codes and state not in _NO_EXIT_CODE else None


def _first_reason(rows: list[TaskRow], state: JobState) -> str:
    return next((row.reason for row in rows if row.state is state and row.reason), "")


def ids_by_comment(text: str, comments: set[str]) -> dict[str, str]:
    """The job id of each of `comments` in lines `JobID|Comment` (squeue's `--Format=JobID:0|,Comment:0|`
    ends each with one more `|`; sacct's `--parsable2` does not). An array's tasks share its comment:
    the array's own id is the one Milex gave out."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        job_id, _, rest = line.partition("|")
        comment = rest.removesuffix("|").strip()
        if comment in comments:
            found.setdefault(comment, job_id.strip().split("_")[0])
    return found


def ended_by_comment(text: str, comments: set[str]) -> dict[str, str]:
    """The job id of each of `comments` whose job has ended, in sacct's `--parsable2` lines
    `JobID|Comment|State` (an array's first task row that has ended stands for the array)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        sacct_id, comment, state, *_ = (*(part.strip() for part in line.split("|")), "", "")
        if comment in comments and JobState.from_slurm(state).finished:
            found.setdefault(comment, _SACCT_ID.split(sacct_id, maxsplit=1)[0])
    return found
