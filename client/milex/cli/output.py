"""How commands print a submission: a plain aligned table (no rich, no click: `milex-run` must start
fast), and the progress bar of a submission that takes long enough to need one (rich, imported only
then)."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from milex.cli.tasks_view import counts
from milex.cli.terminal import echo, style
from milex.records import Submission
from milex_common.model import JobState, JobStatus
from milex_common.protocol import SubmitProgress

PROGRESS_AFTER = 1.0  # seconds: a quicker submission shows no bar

_COLORS = {
    JobState.COMPLETED: "green",
    JobState.RUNNING: "cyan",
    JobState.PENDING: "yellow",
    JobState.QUEUED: "blue",
    JobState.SUBMITTED: "yellow",
}
_COLUMNS = ("job", "id", "state", "exit", "reason")


def print_submission(submission: Submission, states: Mapping[str, JobStatus] | None = None) -> None:
    """The submission's jobs, one line each: name, id, state (colored on a terminal), exit, reason, and
    an array's task counts when one has them."""
    rows: list[tuple[object, ...]] = []
    for name, job in submission.jobs.items():
        status = (states or {}).get(name) or job
        exit_code = "" if status.exit_code is None else str(status.exit_code)
        rows.append((name, job.job_id, status.state, exit_code, status.reason, counts(status)))
    columns = _COLUMNS + (("tasks",) if any(row[5] for row in rows) else ())
    rows = [row[: len(columns)] for row in rows]
    widths = [
        max([len(column)] + [len(str(_text(row[i]))) for row in rows]) for i, column in enumerate(columns)
    ]
    run = f" (run {submission.run_id})" if submission.run_id else ""
    if submission.rerun_of:
        run = f" (run {submission.run_id}, rerun of {submission.rerun_of})"
    echo(f"{submission.bundle} on {submission.machine}{run}")
    echo("  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True)).rstrip())
    for row in rows:
        cells = [_text(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        state = row[2]
        cells[2] = style(cells[2], _COLORS.get(state, "red") if isinstance(state, JobState) else "red")
        echo("  ".join(cells).rstrip())
    queued = [row for row in rows if row[2] is JobState.QUEUED]
    if queued:
        submitted = len(rows) - len(queued)
        echo(
            f"{submitted} job(s) submitted, {len(queued)} in the agent's queue ({queued[0][4]}); "
            "the agent submits them as room frees up, even with this laptop off."
        )


def _text(cell: object) -> str:
    return cell.value if isinstance(cell, JobState) else str(cell)


class SubmitProgressBar:
    """A bar on stderr for a submission taking more than PROGRESS_AFTER s, only on a terminal; it says
    when the agent waits for a silent SLURM controller."""

    def __init__(self, stream: IO[str] | None = None, *, after: float = PROGRESS_AFTER) -> None:
        self.stream = stream or sys.stderr
        self.shown_from = time.monotonic() + after
        self.enabled = self.stream.isatty()
        self.bar: Any = None  # rich's Progress, once shown
        self.task: Any = None

    def __enter__(self) -> SubmitProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, progress: SubmitProgress) -> None:
        if not self.enabled or time.monotonic() < self.shown_from:
            return
        if self.bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            self.bar = Progress(*columns, console=Console(file=self.stream), transient=True)
            self.task = self.bar.add_task("submitting", total=progress.total)
            self.bar.start()
        self.bar.update(self.task, completed=progress.submitted, total=progress.total,
                        description=describe(progress))  # fmt: skip


def describe(progress: SubmitProgress) -> str:
    """What the bar says the agent is doing."""
    if progress.waiting_for_controller:
        return f"SLURM controller silent, waiting ({progress.in_doubt} in doubt)"
    if progress.in_doubt:
        return f"submitting ({progress.in_doubt} in doubt)"
    return "submitting"
