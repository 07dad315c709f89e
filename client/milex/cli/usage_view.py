"""`milex status --usage`: what each job (each array task) used against what it asked for, as `seff`
shows it (CPU and memory efficiency, elapsed against the time limit), and what to ask for next time."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from milex.usage_advice import suggest
from milex_common.protocol import TrackedJob
from milex_common.usage import NO_ACCOUNTING, TaskUsage, Usage, describe_size, format_duration

if TYPE_CHECKING:
    from rich.console import Console

WAITING = "no usage recorded (yet)"


def show_usage(console: Console, jobs: list[TrackedJob], usage: dict[str, Usage], title: str) -> None:
    """The usage table and a suggestion per job name; one line where the cluster keeps no accounting."""
    from rich.table import Table

    if any(used.note == NO_ACCOUNTING for used in usage.values()):  # the cluster's, not a job's
        console.print(f"No usage for {title}: {NO_ACCOUNTING}.", markup=False)
        return
    view = Table(title=f"{title}: usage", title_justify="left", box=None, pad_edge=False)
    for column in ("job", "id", "state", "elapsed", "limit", "CPUs", "CPU%", "peak", "asked", "mem%"):
        view.add_column(column, no_wrap=True)
    by_name: dict[str, list[TaskUsage]] = defaultdict(list)
    without: list[str] = []  # the jobs with no usage, and why
    for job in jobs:
        used = usage.get(job.key)
        if used is None or not used.tasks:
            said = "not ended" if not job.state.finished else used.note if used else WAITING
            without.append(f"{job.name} {job.job_id} {job.state.value}: {said}")
            continue
        by_name[job.name] += used.tasks
        for task in used.tasks:  # an array's task as `NAME[INDEX]`
            view.add_row(
                job.name if task.task is None else f"{job.name}[{task.task}]", job.job_id, *_cells(task)
            )
    if by_name:
        console.print(view)
    for line in without:
        console.print(line, markup=False, highlight=False)
    _suggestions(console, by_name)


def _suggestions(console: Console, by_name: dict[str, list[TaskUsage]]) -> None:
    """What each job should ask for next time, and why."""
    for name, tasks in by_name.items():
        advice = suggest(tasks)
        if advice.options:
            console.print(f"next run of {name}: {' '.join(advice.options)}", markup=False, highlight=False)
            for reason in advice.reasons:
                console.print(f"  {reason}", markup=False, highlight=False)


def _cells(task: TaskUsage) -> tuple[str, ...]:
    limit = "unlimited" if task.time_limit is None else format_duration(task.time_limit)
    asked = "?" if not task.requested_memory else describe_size(task.requested_memory)
    measured = "-" if task.max_rss is None else describe_size(task.max_rss)  # too short to be sampled
    return (
        task.state,
        format_duration(task.elapsed),
        limit,
        str(task.cpus or "?"),
        _percent(task.cpu_efficiency),
        measured,
        asked,
        _percent(task.memory_efficiency),
    )


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"
