"""How commands print submissions and job states (rich tables, imported only when printing)."""

from __future__ import annotations

from collections.abc import Mapping

from milex.common.model import JobState, JobStatus
from milex.records import Submission

_STYLES = {
    JobState.COMPLETED: "green",
    JobState.RUNNING: "cyan",
    JobState.PENDING: "yellow",
    JobState.SUBMITTED: "yellow",
}


def print_submission(submission: Submission, states: Mapping[str, JobStatus] | None = None) -> None:
    """A table of the submission's jobs: name, id, and state when known."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{submission.bundle} on {submission.machine}", title_justify="left")
    for column in ("job", "id", "state", "exit", "reason"):
        table.add_column(column)
    for name, job in submission.jobs.items():
        status = (states or {}).get(name)
        state = status.state if status else job.state
        exit_code = status.exit_code if status else job.exit_code
        reason = status.reason if status else job.reason
        table.add_row(
            name,
            job.job_id,
            f"[{_STYLES.get(state, 'red')}]{state.value}[/]",
            "" if exit_code is None else str(exit_code),
            reason,
        )
    Console(soft_wrap=True).print(table)
