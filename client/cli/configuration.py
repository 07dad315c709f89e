"""`milex-configuration` and `milex config ...`: edit, install, inspect the machine configuration."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from milex.cli import reports_errors


@click.command()
@click.option(
    "--from",
    "source",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Install this configuration file (validated) instead of opening an editor.",
)
@reports_errors
def configuration(source: Path | None) -> None:
    """Edit the machine configuration (~/.milexconfig) and set the machines up."""
    from milex.config import config_path, parse_config
    from milex.configure import edit_config, install_config

    path = config_path()
    if source is not None:
        text = source.read_text()
        install_config(parse_config(text, source), text, path, report=click.echo)
        return
    if not sys.stdin.isatty():
        raise click.UsageError(
            "milex-configuration opens an editor and needs a terminal; use "
            "`milex-configuration --from FILE` or `milex config set` in scripts."
        )
    edit_config(path, confirm=lambda q: click.confirm(q, default=True), report=click.echo)


@click.group("config")
def config_group() -> None:
    """Inspect or change the machine configuration without an editor."""


@config_group.command("show")
@reports_errors
def show() -> None:
    """Print the configuration file's path and content."""
    from milex.config import config_path, dump_config, load_config

    config = load_config()
    click.echo(f"# {config_path()}")
    click.echo(dump_config(config.machines), nl=False)


@config_group.command("set")
@click.argument("machine")
@click.argument("key")
@click.argument("value")
@reports_errors
def set_value(machine: str, key: str, value: str) -> None:
    """Set KEY of MACHINE to VALUE (the machine is created if new), validate, and save."""
    import json

    from milex.config import config_path, parse_config
    from milex.configure import install_config

    path = config_path()
    document = json.loads(path.read_text()) if path.exists() else {}
    entry = document.setdefault(machine, {"path": "", "env_command": "", "slurm_account": ""})
    entry[key] = int(value) if key == "port" else value
    text = json.dumps(document, indent=4) + "\n"
    install_config(parse_config(text, path), text, path, report=click.echo)


@config_group.command("check")
@reports_errors
def check() -> None:
    """Validate the configuration and list its machines."""
    from milex.config import load_config

    config = load_config()
    for machine in config.machines.values():
        where = f"{machine.hostname}:{machine.path}" if machine.is_remote else machine.path
        click.echo(f"{machine.name}: {machine.scheduler} at {where}")


def main() -> None:
    configuration.main(prog_name="milex-configuration")
