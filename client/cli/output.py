"""How commands print a submission: a plain aligned table (no rich: `milex-run` must start fast)."""

from __future__ import annotations

from collections.abc import Mapping

import click

from milex.common.model import JobState, JobStatus
from milex.records import Submission

_COLORS = {JobState.COMPLETED: "green", JobState.RUNNING: "cyan", JobState.PENDING: "yellow"}
_COLUMNS = ("job", "id", "state", "exit", "reason")


def print_submission(submission: Submission, states: Mapping[str, JobStatus] | None = None) -> None:
    """The submission's jobs, one line each: name, id, state (colored on a terminal), exit, reason."""
    rows = []
    for name, job in submission.jobs.items():
        status = (states or {}).get(name)
        state = status.state if status else job.state
        exit_code = status.exit_code if status else job.exit_code
        reason = status.reason if status else job.reason
        rows.append((name, job.job_id, state, "" if exit_code is None else str(exit_code), reason))
    widths = [
        max([len(column)] + [len(str(_text(row[i]))) for row in rows]) for i, column in enumerate(_COLUMNS)
    ]
    run = f" (run {submission.run_id})" if submission.run_id else ""
    click.echo(f"{submission.bundle} on {submission.machine}{run}")
    click.echo(
        "  ".join(column.ljust(width) for column, width in zip(_COLUMNS, widths, strict=True)).rstrip()
    )
    for row in rows:
        cells = [_text(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        cells[2] = click.style(cells[2], fg=_COLORS.get(row[2], "red"))
        click.echo("  ".join(cells).rstrip())


def _text(cell: object) -> str:
    return cell.value if isinstance(cell, JobState) else str(cell)
