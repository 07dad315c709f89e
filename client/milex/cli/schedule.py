"""`milex-schedule NAME [options] [app arguments]`: record a job, optionally run it now."""

from __future__ import annotations

import sys

import click

from milex.cli import reports_errors

# Everything after NAME reaches parse_schedule_args as typed: click would drop a `--`, which there
# separates the app's arguments from Milex's options.
RAW_ARGUMENTS = {
    "ignore_unknown_options": True,
    "allow_extra_args": True,
    "allow_interspersed_args": False,
    "help_option_names": [],
}


@click.command(context_settings=RAW_ARGUMENTS, add_help_option=False)
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
@reports_errors
def schedule(argv: tuple[str, ...]) -> None:
    """Record a job running NAME with its arguments (see `milex-schedule --help`)."""
    from milex.schedule_args import parse_schedule_args

    request = parse_schedule_args(argv)  # before importing the API: `--help` stays fast
    if request.like:
        from milex.usage_advice import suggestion_from

        advice = suggestion_from(request.like, request.machine, request.job_name or request.app)
        request.slurm = advice.under(request.slurm)
        click.echo(f"From the usage of {request.like}: {' '.join(advice.options) or 'no change'}")
    from milex import api

    scheduled = api.schedule(
        request.app,
        request.app_arguments,
        bundle=request.bundle,
        append=request.append,
        job_name=request.job_name,
        slurm=request.slurm,
        dependencies=request.dependencies,
        pre_commands=request.pre_commands,
    )
    verb = "Added" if request.append else "Saved"
    click.echo(f"{verb} job {scheduled.job.name!r} to {scheduled.path}")
    if request.run_now:
        from milex.cli.submitting import submit_and_report

        submit_and_report(
            lambda progress: api.submit_bundle(
                scheduled.bundle,
                request.machine,
                progress=progress,
                any_version=request.any_version,
                **request.overrides,
            ),
            wait=request.wait,
        )


def main() -> None:
    schedule.main(args=sys.argv[1:], prog_name="milex-schedule")
