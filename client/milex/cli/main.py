"""The `milex` command group: every Milex command under one name."""

from __future__ import annotations

import click

from milex.cli import HELP_OPTIONS
from milex.cli.agent import agent_group
from milex.cli.config import config_group, configuration
from milex.cli.jobs import cancel, logs, status
from milex.cli.records import list_records
from milex.cli.rerun import rerun
from milex.cli.run_command import run
from milex.cli.schedule import schedule
from milex.cli.tunnel import tunnel_group
from milex_common.version import VERSION


@click.group()
@click.version_option(VERSION, prog_name="milex")
def milex() -> None:
    """Schedule, run and watch reproducible jobs on SLURM clusters."""


milex.add_command(configuration)
milex.add_command(config_group)
milex.add_command(schedule)
milex.add_command(run)
milex.add_command(rerun)
milex.add_command(list_records)
milex.add_command(status)
milex.add_command(logs)
milex.add_command(cancel)
milex.add_command(agent_group)
milex.add_command(tunnel_group)


def _help_everywhere(command: click.Command) -> None:
    """`-h` on `command` and every command under it, set on each (click keeps a command's help option
    once made, whichever context made it; a command also run on its own, as milex-run and milex logs
    in tests, sets them where it is defined); milex-schedule keeps its none: its parser reads `-h`."""
    command.context_settings.setdefault("help_option_names", HELP_OPTIONS)
    for child in getattr(command, "commands", {}).values():
        _help_everywhere(child)


_help_everywhere(milex)


def main() -> None:
    milex.main(prog_name="milex")
