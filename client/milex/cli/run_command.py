"""`milex-run NAME` and `milex run NAME`: submit the newest bundle of that name to a machine (the click
command; `milex-run`'s common form skips click, milex.cli.run)."""

from __future__ import annotations

import click

from milex.cli import HELP_OPTIONS, reports_errors
from milex.cli.submitting import run_bundle


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
    run_bundle(
        bundle,
        machine=machine,
        date=date,
        any_version=any_version,
        wait=wait,
        timeout=timeout,
        overrides=given,
    )
