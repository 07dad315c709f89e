"""How a command that waited for jobs (`milex-run --wait`, `milex status --watch`) says they ended:
one line per bundle, then a desktop notification where one is available, else the terminal's bell."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping

import click

from milex.records import Submission
from milex_common.model import JobStatus
from milex_common.protocol import TrackedJob
from milex_common.run_summary import JobOutcome, one_line

TITLE = "Milex"
DESKTOP_TIMEOUT = 5.0  # seconds a desktop notifier may take; it is left alone after


def submission_line(submission: Submission, states: Mapping[str, JobStatus]) -> str:
    """The one line of a run that ended: its record's jobs, with the states the wait saw."""
    outcomes = []
    for name, record in submission.jobs.items():
        status = states.get(name) or record
        outcomes.append(JobOutcome(name=name, job_id=record.job_id, state=status.state,
                                   exit_code=status.exit_code, reason=status.reason))  # fmt: skip
    return one_line(submission.bundle, outcomes)


def bundle_lines(jobs: Iterable[TrackedJob]) -> list[str]:
    """One line per bundle of `jobs` (as the agent tracks them), in the order they come."""
    by_bundle: dict[str, list[JobOutcome]] = {}
    for job in jobs:
        outcome = JobOutcome(name=job.name, key=job.key, job_id=job.job_id, state=job.state,
                             exit_code=job.exit_code, reason=job.reason)  # fmt: skip
        by_bundle.setdefault(job.bundle, []).append(outcome)
    return [one_line(bundle, outcomes) for bundle, outcomes in by_bundle.items()]


def announce(lines: list[str], *, alert: bool = True) -> None:
    """Print `lines`; with `alert`, tell the desktop (where it can be told), else ring the bell on a
    terminal. Neither is ever an error."""
    for line in lines:
        click.echo(line)
    if alert and lines and not desktop_notification("\n".join(lines)) and sys.stdout.isatty():
        click.echo("\a", nl=False)


def desktop_notification(message: str) -> bool:
    """Show `message` as a desktop notification: `notify-send` on Linux (with a display), `osascript`
    on macOS. Whether one was shown; False where there is none, or it failed."""
    if sys.platform == "darwin":
        script = ("-e", "on run argv", "-e", f'display notification (item 1 of argv) with title "{TITLE}"',
                  "-e", "end run")  # fmt: skip
        command = ["osascript", *script, message] if shutil.which("osascript") else None
    elif os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        command = ["notify-send", TITLE, message] if shutil.which("notify-send") else None
    else:
        command = None
    if command is None:
        return False
    try:
        shown = subprocess.run(command, capture_output=True, timeout=DESKTOP_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return shown.returncode == 0
