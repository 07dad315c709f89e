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
    view = Table(title=f"{title}: usage", title_justify="left")
    for column in (
        "job",
        "id",
        "task",
        "state",
        "elapsed / limit",
        "CPUs",
        "CPU eff.",
        "peak / asked",
        "mem eff.",
    ):
        view.add_column(column)
    by_name: dict[str, list[TaskUsage]] = defaultdict(list)
    for job in jobs:
        used = usage.get(job.key)
        if used is None or not used.tasks:
            said = "not ended" if not job.state.finished else used.note if used else WAITING
            view.add_row(job.name, job.job_id, "", job.state.value, said, "", "", "", "")
            continue
        by_name[job.name] += used.tasks
        for task in used.tasks:
            view.add_row(job.name, job.job_id, *_cells(task))
    console.print(view)
    for name, tasks in by_name.items():
        advice = suggest(tasks)
        if advice.options:
            console.print(f"next run of {name}: {' '.join(advice.options)}", markup=False, highlight=False)
            for reason in advice.reasons:
                console.print(f"  {reason}", markup=False, highlight=False)


def _cells(task: TaskUsage) -> tuple[str, ...]:
    limit = "unlimited" if task.time_limit is None else format_duration(task.time_limit)
    asked = "?" if not task.requested_memory else describe_size(task.requested_memory)
    measured = "not measured" if task.max_rss is None else describe_size(task.max_rss)
    return (
        "" if task.task is None else str(task.task),
        task.state,
        f"{format_duration(task.elapsed)} / {limit}",
        str(task.cpus or "?"),
        _percent(task.cpu_efficiency),
        f"{measured} / {asked}",
        _percent(task.memory_efficiency),
    )


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"
