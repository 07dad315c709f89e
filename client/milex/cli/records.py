"""`milex ls`: the bundles recorded under `jobs/` and their submissions."""

from __future__ import annotations

import click

from milex.cli import reports_errors


@click.command("ls")
@click.argument("name", required=False)
@reports_errors
def list_records(name: str | None) -> None:
    """List bundles (all, or those called NAME) with their submissions."""
    from milex.config.file import load_config
    from milex.records import list_bundles, listed_submissions

    jobs_dir = load_config().jobs_dir
    for bundle, date in list_bundles(jobs_dir):
        if name is not None and bundle != name:
            continue
        click.echo(f"{bundle}  {date}")
        for submission in listed_submissions(jobs_dir, f"{bundle}_{date}"):
            jobs = ", ".join(
                f"{job}={record.job_id}:{record.state.value}" for job, record in submission.jobs.items()
            )
            failed = "  (incomplete: see the record)" if submission.error else ""
            run = f" run {submission.run_id}" if submission.run_id else ""
            click.echo(f"    {submission.submitted_at}{run} on {submission.machine}: {jobs}{failed}")
