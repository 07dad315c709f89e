"""`milex agent start|stop|status|deploy|watchdog`: manage a machine's agent from the laptop."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from milex.cli import reports_errors
from milex.cli.jobs import machine_option

if TYPE_CHECKING:
    from milex.config.file import Machine


@click.group("agent")
def agent_group() -> None:
    """Manage the Milex agent of a machine (started automatically on first use)."""


@agent_group.command("start")
@machine_option
@reports_errors
def start(machine: str | None) -> None:
    """Start the machine's agent unless it runs; show where it listens."""
    from milex.machine.lifecycle import start_agent

    click.echo(start_agent(_machine(machine)))


@agent_group.command("stop")
@machine_option
@reports_errors
def stop(machine: str | None) -> None:
    """Stop the machine's agent; its journal keeps every job for the next one."""
    from milex.machine.lifecycle import stop_agent

    click.echo(stop_agent(_machine(machine)))


@agent_group.command("status")
@machine_option
@reports_errors
def status(machine: str | None) -> None:
    """Whether the machine's agent runs, its version, and where."""
    from milex.machine.lifecycle import agent_status

    click.echo(agent_status(_machine(machine)))


@agent_group.command("deploy")
@machine_option
@click.option(
    "--wheel",
    is_flag=True,
    help="Install from wheels downloaded here and uploaded (for a login node without internet).",
)
@click.option("--container", is_flag=True, help="Run the agent from its image (podman or docker there).")
@click.option("--image", default="milex-agent:latest", show_default=True, help="With --container: the image.")
@click.option(
    "--image-archive",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --container: upload this image archive (`podman save -o FILE IMAGE`) and load it there,"
    " unless the machine has that image already.",
)
@click.option(
    "--watchdog/--no-watchdog",
    default=True,
    show_default=True,
    help="Install the agent's watchdog (see `milex agent watchdog`); not with --container.",
)
@reports_errors
def deploy(
    machine: str | None, wheel: bool, container: bool, image: str, image_archive: Path | None, watchdog: bool
) -> None:
    """Install this version of Milex into the machine's environment, then (re)start its agent;
    or, with --container, start the agent from its container image (podman or docker there; no
    Milex needed there), unless it runs from that image already."""
    if image_archive and not container:
        raise click.UsageError("--image-archive goes with --container.")
    if container:
        from milex.machine.lifecycle import deploy_container

        click.echo(deploy_container(_machine(machine), image=image, archive=image_archive))
        return
    from milex.machine.lifecycle import deploy_agent

    click.echo(deploy_agent(_machine(machine), upload_wheel=wheel, watchdog=watchdog))


@agent_group.command("watchdog")
@machine_option
@click.option("--remove", is_flag=True, help="Take the watchdog out of your crontab there.")
@reports_errors
def watchdog(machine: str | None, remove: bool) -> None:
    """Install the agent's watchdog on the machine's login node: a line of your crontab there that
    starts the agent again within a minute when it is not running and has jobs left to submit or
    watch, with no command from here (`milex agent deploy` installs it too)."""
    from milex.machine.watchdog import watchdog as set_watchdog

    click.echo(set_watchdog(_machine(machine), remove=remove))


def _machine(name: str | None) -> Machine:
    from milex.config.file import load_config

    return load_config().machine(name)
