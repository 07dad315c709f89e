"""`milex-run NAME`: submit the newest bundle of that name to a machine."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from milex.cli import HELP_OPTIONS, reports_errors

if TYPE_CHECKING:
    from milex.machine.submitter import OnProgress
    from milex.records import Submission


@click.command(context_settings={"help_option_names": HELP_OPTIONS})
@click.argument("bundle")
@click.option("--machine", help="Machine of the configuration (default: local).")
@click.option("--date", help="Run the bundle of this date (YYYYmmddHHMMSS), not the newest.")
@click.option("--wait", is_flag=True, help="Wait until every job has finished, showing states.")
@click.option("--timeout", type=float, help="With --wait: give up after this many seconds.")
@click.option("--dry-run", is_flag=True, help="Print the scripts that would be submitted.")
@click.option("--slurm-account", "--slurm_account", help="Use this account, not the machine's.")
@click.option("--env-command", "--env_command", help="Use this env command, not the machine's.")
@click.option("--path", help="Use this Milex path, not the machine's.")
@click.option(
    "--any-version",
    "--any_version",
    is_flag=True,
    help="Run even if the machine has another version of an app than the record names.",
)
@reports_errors
def run(
    bundle: str,
    machine: str | None,
    date: str | None,
    wait: bool,
    timeout: float | None,
    dry_run: bool,
    any_version: bool,
    **overrides: str | None,
) -> None:
    """Submit the newest bundle called BUNDLE (exact name) in dependency order."""
    from milex import api
    from milex_common.model import machine_overrides

    given = machine_overrides(**overrides)
    if dry_run:
        note = api.preview_note(machine=machine, **given)
        if note:
            click.echo(f"# {note}")
        for name, script in api.preview(bundle, machine=machine, date=date, **given).items():
            click.echo(f"# ---- {name} ----\n{script}")
        return
    submit_and_report(
        lambda progress: api.run(
            bundle, machine=machine, date=date, progress=progress, any_version=any_version, **given
        ),
        wait=wait,
        timeout=timeout,
    )


def submit_and_report(
    submit: Callable[[OnProgress], Submission], *, wait: bool, timeout: float | None = None
) -> None:
    """Submit (a progress bar on a terminal if it takes more than a second), print the job ids;
    with `wait`, follow the jobs, say in one line how they ended (with the bell or a desktop
    notification), and fail if any did not complete. A wait that times out, or is
    interrupted, says which jobs go on and how to follow them."""
    from milex import api
    from milex.cli.ended import announce, submission_line
    from milex.cli.output import SubmitProgressBar, print_submission
    from milex_common.model import JobState

    with SubmitProgressBar() as bar:
        submission = submit(bar.update)
    print_submission(submission)
    if not wait:
        return
    unfinished = sum(not record.state.finished for record in submission.jobs.values())
    click.echo(f"waiting for {unfinished} job(s) to end (Ctrl-C stops the wait, not the jobs)...")
    try:
        states = api.wait(submission, timeout=timeout)
    except KeyboardInterrupt:
        click.echo(f"stopped waiting; still unfinished: {api.going_on(submission)}", err=True)
        sys.exit(130)
    print_submission(submission, states)
    announce([submission_line(submission, states)])
    if any(status.state is not JobState.COMPLETED for status in states.values()):
        raise SystemExit(1)


def main() -> None:
    run.main(prog_name="milex-run")
