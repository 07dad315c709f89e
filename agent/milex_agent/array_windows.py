"""Cutting a job array too large for SLURM into windows SLURM accepts, and mapping its tasks back.

Window k of an array cut at `size` holds the array's indices in [k*size, (k+1)*size). Each non-empty
window is one SLURM array job whose indices are shifted down by its offset k*size, so every index
SLURM sees is below `size` (at most MaxArraySize); the script adds the offset back (see
`milex_common.render`), and the app sees the index the user asked for. Two arrays cut at the same size
have aligned windows whatever their specs: window by window, `aftercorr` pairs the same tasks.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from milex_common.errors import InvalidValue, SubmitError
from milex_common.model import Job, MachineSettings, TaskStatus
from milex_common.render import render_script
from milex_common.slurm_values import array_indices, validate_array

# Between an array job's name (or key) and a window's offset in the name (or key) of the window's job
# (names have no `~`).
WINDOW_MARK = "~"


class ArrayWindow(msgspec.Struct, frozen=True):
    """One SLURM array job standing for the indices [offset, offset + size) of the user's array."""

    offset: int  # index value of the window's first slot (k*size)
    spec: str  # the --array spec SLURM gets: indices shifted down by offset, compact, with the `%` limit
    tasks: int  # how many tasks (each counts toward the user's MaxSubmitJobs)


def window_size(
    max_array_size: int | None, max_submitted: int | None, *, max_array_tasks: int | None = None
) -> int | None:
    """The size to cut arrays at: indices below MaxArraySize, and no more tasks in one window than the
    user may have queued at once (a user's cap or SLURM's MaxSubmitJobs), nor than one array may hold
    (`SchedulerParameters=max_array_tasks`, when the cluster sets it). None: no limit, no cut."""
    if max_array_size == 0:
        raise SubmitError(
            "this cluster does not accept job arrays (MaxArraySize=0 in its slurm.conf): "
            "schedule the tasks as separate jobs instead of --array."
        )
    if max_submitted is not None and max_submitted < 1:
        raise InvalidValue(f"max_submitted must be at least 1, not {max_submitted}.")
    limits = [limit for limit in (max_array_size, max_submitted, max_array_tasks) if limit is not None]
    return min(limits) if limits else None


def array_windows(spec: str, size: int) -> list[ArrayWindow]:
    """The windows of the array `spec` cut at `size`, in index order; the spec unchanged when it fits."""
    if size < 1:
        raise InvalidValue(f"an array window holds at least one index, not {size}.")
    indices, limit = array_indices(validate_array(spec))
    if indices[-1] < size:
        return [ArrayWindow(offset=0, spec=spec, tasks=len(indices))]
    throttle = "" if limit is None else f"%{limit}"
    windows: dict[int, list[int]] = {}
    for index in indices:
        offset, local = window_of(index, size)
        windows.setdefault(offset, []).append(local)
    return [
        ArrayWindow(offset=offset, spec=_compact(members) + throttle, tasks=len(members))
        for offset, members in windows.items()
    ]


def window_of(index: int, size: int) -> tuple[int, int]:
    """The offset of the window holding the task `index` (an index the user asked for) of an array cut
    at `size`, and the task's index in that window."""
    offset = index - index % size
    return offset, index - offset


def window_name(name: str, offset: int) -> str:
    """The name (or key) of the window at `offset` of the array job named (or keyed) `name`."""
    return f"{name}{WINDOW_MARK}{offset}"


def window_offset(key: str) -> int:
    """The offset of the window whose name (or key) is `key` (0 for a name that is no window's)."""
    _, mark, offset = key.rpartition(WINDOW_MARK)
    return int(offset) if mark and offset.isdecimal() else 0


def tasks_of_windows(windows: Sequence[tuple[str, Sequence[TaskStatus]]]) -> list[TaskStatus]:
    """The tasks of an array from its windows' (each window's key, and its tasks as SLURM numbers
    them, shifted down by the window's offset): every task by the index the user asked for."""
    tasks = [
        msgspec.structs.replace(task, index=task.index + window_offset(key))
        for key, window_tasks in windows
        for task in window_tasks
    ]
    return sorted(tasks, key=lambda task: task.index)


def window_dependencies(
    dependent: ArrayWindow | None, dependency_windows: Sequence[ArrayWindow], dependency_type: str
) -> list[tuple[ArrayWindow, str]]:
    """The windows of a dependency that `dependent` waits for, each with the dependency type to use.

    `dependent` is a window of an array cut at the same size as the dependency, or None for a job that
    is not an array. `aftercorr` pairs a window with the dependency's window of the same offset. Where
    that window is missing (or the dependent is no array), slurmctld (job_scheduler.c,
    `_test_job_dependency_common`) makes a task without a counterpart wait for the whole dependency
    array and run only if all its tasks succeeded: `afterok` on every window. One difference is left:
    a task whose window has a counterpart window, but which has no counterpart task in it, waits for
    that window only, not for the whole array.
    Every other type applies to the array as a whole, which is every one of its windows; `afternotok`
    cannot be (SLURM's dependencies on several jobs all must hold, and each window need not fail).
    """
    if dependency_type == "aftercorr":
        same = [window for window in dependency_windows if dependent and window.offset == dependent.offset]
        return [(same[0], "aftercorr")] if same else [(window, "afterok") for window in dependency_windows]
    if dependency_type == "afternotok" and len(dependency_windows) > 1:
        raise InvalidValue(
            f"afternotok on an array cut into {len(dependency_windows)} windows (the cluster's MaxArraySize "
            "or your max_submitted) cannot be given to SLURM: use afterany and check the array's "
            "results in the dependent job, or keep the array within one window."
        )
    return [(window, dependency_type) for window in dependency_windows]


def window_job(job: Job, window: ArrayWindow) -> Job:
    """`job` as SLURM gets it for `window`: its array spec is the window's."""
    return msgspec.structs.replace(job, slurm=msgspec.structs.replace(job.slurm, array=window.spec))


def window_script(job: Job, settings: MachineSettings, stem: str, window: ArrayWindow) -> str:
    """The sbatch script of one window of `job`'s array: the window's spec, the real indices exported."""
    return render_script(window_job(job, window), settings, stem, array_offset=window.offset)


def _compact(indices: list[int]) -> str:
    """A SLURM array spec (without `%`) for sorted distinct `indices`: runs of three or more equally
    spaced indices as ranges `A-B` or `A-B:S`, the rest listed."""
    items, start = [], 0
    while start < len(indices):
        end = start + 1
        step = indices[end] - indices[start] if end < len(indices) else 0
        while end + 1 < len(indices) and indices[end + 1] - indices[end] == step:
            end += 1
        if end - start >= 2:
            items.append(f"{indices[start]}-{indices[end]}" + (f":{step}" if step > 1 else ""))
            start = end + 1
        else:
            items.append(str(indices[start]))
            start += 1
    return ",".join(items)
