"""`milex rerun BUNDLE`: a bundle's record submitted again, whole or only what did not complete."""

from __future__ import annotations

import click

from milex.cli import HELP_OPTIONS, reports_errors
from milex.cli.submitting import submit_and_report


@click.command("rerun", context_settings={"help_option_names": HELP_OPTIONS})
@click.argument("bundle", metavar="BUNDLE[_DATE]")
@click.option("--machine", help="Machine of the configuration (default: the run's).")
@click.option("--run", "run_id", help="Rerun this run of the bundle (default: its runs, each job's newest).")
@click.option(
    "--failed", is_flag=True, help="Only jobs that did not complete, and the jobs that depend on them."
)
@click.option(
    "--any-version",
    "--any_version",
    is_flag=True,
    help="Rerun even where the machine's app versions differ from the record's.",
)
@click.option("--wait", is_flag=True, help="Wait until every job has finished, showing states.")
@click.option("--timeout", type=float, help="With --wait: give up after this many seconds.")
@reports_errors
def rerun(
    bundle: str,
    machine: str | None,
    run_id: str | None,
    failed: bool,
    any_version: bool,
    wait: bool,
    timeout: float | None,
) -> None:
    """Submit BUNDLE's record again exactly, as a new run (the newest record, or the one of _DATE)."""
    from milex.reruns import NothingToRerun, rerun

    try:
        submit_and_report(
            lambda progress: rerun(
                bundle, run=run_id, machine=machine, failed=failed, any_version=any_version, progress=progress
            ),
            wait=wait,
            timeout=timeout,
        )
    except NothingToRerun as nothing:
        click.echo(str(nothing))
    except KeyboardInterrupt:
        click.echo(
            f"interrupted: `milex rerun {bundle}` resumes this rerun (each job submitted at most once).",
            err=True,
        )
        raise SystemExit(130) from None
