"""The job model: a Job, a Bundle of jobs, its SLURM options, and the machine settings it renders with."""

from __future__ import annotations

import bisect
import enum
import math
from collections.abc import Sequence
from typing import Any, Literal, TypedDict

import msgspec

from milex_common import slurm_values
from milex_common.errors import BundleError, InvalidValue
from milex_common.provenance import Provenance

DATE_FORMAT = "%Y%m%d%H%M%S"
# Directories Milex keeps under every machine's path.
MACHINE_DIRS = ("jobs", "slurm", "models", "results", "data")
DEPENDENCY_TYPES = ("afterok", "afterany", "afternotok", "after", "aftercorr")


class SlurmOptions(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Resources and scheduling options of one job; `None` leaves the cluster's default.

    Like `Job`, tolerant of unknown fields (dropped): it travels on the wire, where a newer client may
    send one more option. Where the user writes (records), milex_common.record_format checks the keys.
    """

    time: str | None = None
    cpus_per_task: int | None = None
    gres: str | None = None
    mem: str | None = None
    array: str | None = None
    tasks: int | None = None
    nodes: int | None = None
    partition: str | None = None
    qos: str | None = None
    job_name: str | None = None
    dependency_type: str = "afterok"
    # Any other sbatch long option, name without dashes; `True` for a bare flag such as `exclusive`.
    extra: dict[str, str | bool] = {}

    def validate(self) -> SlurmOptions:
        """Raise InvalidValue naming the first option SLURM would reject."""
        if self.time is not None:
            slurm_values.validate_time(self.time)
        if self.mem is not None:
            slurm_values.validate_memory(self.mem)
        if self.array is not None:
            slurm_values.validate_array(self.array)
        for option in ("cpus_per_task", "tasks", "nodes"):
            count = getattr(self, option)
            if count is not None:
                slurm_values.validate_positive(option.replace("_", "-"), count)
        if self.job_name is not None:
            slurm_values.validate_name("job name", self.job_name)
        if self.dependency_type not in DEPENDENCY_TYPES:
            raise InvalidValue(
                f"--dependency-type {self.dependency_type!r} is not one of {', '.join(DEPENDENCY_TYPES)}."
            )
        for name, value in self.extra.items():
            slurm_values.validate_sbatch_option(name, value if isinstance(value, str) else None)
        return self


class Job(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One app run: the command (`script`), its captured arguments, and how SLURM should run it.

    Unknown fields are dropped when decoded (the wire's rule); a record's unknown keys are refused
    by milex_common.record_format, which names them.
    """

    name: str
    script: str
    script_args: dict[str, Any] = {}
    dependencies: list[str] = []
    pre_commands: list[str] = []
    slurm: SlurmOptions = msgspec.field(default_factory=SlurmOptions)
    # Which code the app was when recorded (milex_common.provenance); None in older records.
    provenance: Provenance | None = None

    def validate(self) -> Job:
        """This job, if its name, dependencies and SLURM options are valid; InvalidValue otherwise."""
        slurm_values.validate_name("job name", self.name)
        for dependency in self.dependencies:
            slurm_values.validate_name("dependency", dependency)
        self.slurm.validate()
        return self


def recordable_args(value: Any) -> Any:
    """`value` as JSON can hold it: JSON has no infinity or NaN (msgspec writes them as null, which
    drops the argument from the script), so a non-finite float becomes the text an argument parser
    reads back as the same float ("inf", "-inf", "nan")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: recordable_args(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [recordable_args(item) for item in value]
    return value


class Bundle(msgspec.Struct, kw_only=True):
    """Jobs recorded together under one name and date; dependencies refer to jobs of the same bundle."""

    name: str
    created: str
    jobs: dict[str, Job]

    @property
    def stem(self) -> str:
        """The record's file name without extension: `NAME_YYYYmmddHHMMSS`."""
        return f"{self.name}_{self.created}"

    def ordered_jobs(self) -> list[Job]:
        """The jobs, each after those it depends on; BundleError on an unknown dependency or a cycle."""
        for job in self.jobs.values():
            for dependency in job.dependencies:
                if dependency not in self.jobs:
                    known = ", ".join(sorted(self.jobs)) or "none"
                    raise BundleError(
                        f"job {job.name!r} of bundle {self.stem!r} depends on {dependency!r}, "
                        f"which is not in the bundle (its jobs: {known})."
                    )
        ordered: list[Job] = []
        state: dict[str, str] = {}  # name -> "visiting" | "done"
        # Depth first with an explicit stack, not recursion: a chain may be thousands of jobs long.
        for root in self.jobs:
            if state.get(root) == "done":
                continue
            path: list[str] = [root]
            pending: list[list[str]] = [list(self.jobs[root].dependencies)]
            state[root] = "visiting"
            while path:
                if not pending[-1]:
                    done = path.pop()
                    pending.pop()
                    state[done] = "done"
                    ordered.append(self.jobs[done])
                    continue
                dependency = pending[-1].pop(0)
                if state.get(dependency) == "done":
                    continue
                if state.get(dependency) == "visiting":
                    cycle = " -> ".join([*path[path.index(dependency) :], dependency])
                    raise BundleError(f"bundle {self.stem!r} has a dependency cycle: {cycle}.")
                state[dependency] = "visiting"
                path.append(dependency)
                pending.append(list(self.jobs[dependency].dependencies))
        return ordered


class MachineSettings(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a job needs from the machine it runs on; never written into a record."""

    name: str
    path: str
    env_command: str = ""
    slurm_account: str = ""
    scheduler: Literal["slurm", "local"] = "slurm"
    # Jobs (array tasks each) the agent keeps in the scheduler at once for this user, below the
    # cluster's own limits; None: only the cluster's. The rest wait in the agent's queue.
    max_submitted: int | None = None
    # A shell command the agent runs on the login node when a run of a bundle ends, a JSON summary
    # on its stdin (milex_agent.notifier); an agent older than it drops it.
    notify: str = ""


class MachineOverrides(TypedDict, total=False):
    """Settings of a machine replaced for one run (`milex-run --slurm-account ...`)."""

    path: str
    env_command: str
    slurm_account: str


def machine_overrides(
    *, path: str | None = None, env_command: str | None = None, slurm_account: str | None = None
) -> MachineOverrides:
    """The overrides among these that were given (None keeps the machine's own setting)."""
    given: MachineOverrides = {}
    if path is not None:
        given["path"] = path
    if env_command is not None:
        given["env_command"] = env_command
    if slurm_account is not None:
        given["slurm_account"] = slurm_account
    return given


class JobState(str, enum.Enum):
    """Where a job is in its life; SLURM's own state strings map here in one place."""

    QUEUED = "QUEUED"  # in the agent's own queue: not given to the scheduler yet
    SUBMITTED = "SUBMITTED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    UNKNOWN = "UNKNOWN"

    @property
    def finished(self) -> bool:
        return self in _FINISHED

    @classmethod
    def from_slurm(cls, text: str) -> JobState:
        """Map a SLURM state string (`CANCELLED by 0`, `OOM`, `CD`...) to a JobState."""
        word = text.strip().split(" ")[0].rstrip("+").upper()
        return _SLURM_STATES.get(word, cls.UNKNOWN)


_FINISHED = frozenset(
    {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.OUT_OF_MEMORY,
        JobState.NODE_FAIL,
        JobState.PREEMPTED,
    }
)
_SLURM_STATES: dict[str, JobState] = {
    "PENDING": JobState.PENDING,
    "PD": JobState.PENDING,
    "REQUEUED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.PENDING,
    "SUSPENDED": JobState.PENDING,
    "CONFIGURING": JobState.RUNNING,
    "CF": JobState.RUNNING,
    "RUNNING": JobState.RUNNING,
    "R": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "CG": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "CD": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "F": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED,
    "DEADLINE": JobState.TIMEOUT,
    "CANCELLED": JobState.CANCELLED,
    "CA": JobState.CANCELLED,
    "REVOKED": JobState.CANCELLED,
    "TIMEOUT": JobState.TIMEOUT,
    "TO": JobState.TIMEOUT,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
    "OOM": JobState.OUT_OF_MEMORY,
    "NODE_FAIL": JobState.NODE_FAIL,
    "NF": JobState.NODE_FAIL,
    "PREEMPTED": JobState.PREEMPTED,
    "PR": JobState.PREEMPTED,
}


class TaskStatus(msgspec.Struct, array_like=True, kw_only=True):
    """The last known state of one task of an array: its index (the one the user asked for), state,
    exit code and reason. Encoded as a short array (`[3, "FAILED", 2, ""]`): an array of 10,000 tasks
    must not make every status reply heavy."""

    index: int
    state: JobState
    exit_code: int | None = None
    reason: str = ""


class JobStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The last known state of one submitted job (for an array, of all its tasks together).

    The one type of a job's state: the wire's TrackedJob and Event, the laptop's records and the local
    scheduler's LocalJobRecord extend it, and a state moves between them only through `take` and `status`.
    `tasks`: an array's tasks by index (empty for a job that is no array, or whose tasks are not known);
    an Event of one task's change carries that task alone, which `take` merges in.
    """

    job_id: str
    state: JobState
    exit_code: int | None = None
    reason: str = ""
    tasks: list[TaskStatus] = []

    def status(self) -> JobStatus:
        """The state alone, whatever type carries it."""
        return JobStatus(
            job_id=self.job_id,
            state=self.state,
            exit_code=self.exit_code,
            reason=self.reason,
            tasks=list(self.tasks),
        )

    def take(self, other: JobStatus) -> bool:
        """Take the state, exit code and reason of `other`, and merge its tasks in by index (a status
        without tasks leaves them as they are); whether the state, exit code or a task changed."""
        changed = (self.state, self.exit_code) != (other.state, other.exit_code)
        self.state, self.exit_code, self.reason = other.state, other.exit_code, other.reason
        if other.tasks:
            changed |= merge_into(self.tasks, other.tasks)
        return changed

    def failed_tasks(self) -> list[int]:
        """The indices of the tasks that ended other than COMPLETED (failed, cancelled, timed out...):
        what a rerun of the failed tasks narrows `--array` to."""
        ended = (task for task in self.tasks if task.state.finished)
        return [task.index for task in ended if task.state is not JobState.COMPLETED]


def merge_tasks(known: Sequence[TaskStatus], new: Sequence[TaskStatus]) -> list[TaskStatus]:
    """`known` (in index order) with each task of `new` in place of the known task of its index, in
    index order (a task a source no longer lists, such as one squeue has forgotten, keeps its last
    known state)."""
    tasks = list(known)
    merge_into(tasks, new)
    return tasks


def merge_into(tasks: list[TaskStatus], new: Sequence[TaskStatus]) -> bool:
    """`merge_tasks` in place, each task found by bisection (an event brings one task into an array of
    thousands); whether a task changed."""
    changed = False
    for task in new:
        at = bisect.bisect_left(tasks, task.index, key=_index)
        if at < len(tasks) and tasks[at].index == task.index:
            if tasks[at] != task:
                tasks[at], changed = task, True
        else:
            tasks.insert(at, task)
            changed = True
    return changed


def _index(task: TaskStatus) -> int:
    return task.index


def task_counts(tasks: Sequence[TaskStatus]) -> dict[JobState, int]:
    """How many tasks are in each state."""
    counts: dict[JobState, int] = {}
    for task in tasks:
        counts[task.state] = counts.get(task.state, 0) + 1
    return counts


def dependency_verdict(kind: str, states: Sequence[JobState]) -> bool | None:
    """Whether a job with dependencies of `kind` on jobs in `states` may start; None to wait (as SLURM
    decides: the local scheduler waits by it, the agent's queue settles a queued job by it)."""
    finished = all(state.finished for state in states)
    succeeded = all(state is JobState.COMPLETED for state in states)
    if kind == "after":
        started = all(state.finished or state is JobState.RUNNING for state in states)
        return True if started else None
    if kind == "afterany":
        return True if finished else None
    if kind == "afternotok":
        # As SLURM: every dependency must have ended in a failed state.
        return all(state is not JobState.COMPLETED for state in states) if finished else None
    # afterok; aftercorr is taken for whole arrays (every task of the dependency must succeed).
    if any(state.finished and state is not JobState.COMPLETED for state in states):
        return False
    return True if succeeded else None
