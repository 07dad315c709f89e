"""`milex-configuration` and `milex config ...`: edit, install, inspect the machine configuration."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from milex.cli import HELP_OPTIONS, reports_errors


@click.command(context_settings={"help_option_names": HELP_OPTIONS})
@click.option(
    "--from",
    "source",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Install this configuration file (validated) instead of opening an editor.",
)
@reports_errors
def configuration(source: Path | None) -> None:
    """Edit the machine configuration (~/.milexconfig) and set the machines up."""
    from milex.config.editor import (
        EDITOR_SETTINGS,
        FALLBACK_EDITOR,
        configured_editor,
        edit_config,
        install_config,
    )
    from milex.config.file import config_path, parse_config, read_config_text

    path = config_path()
    if source is not None:
        text = read_config_text(source)
        install_config(parse_config(text, source), text, path, report=click.echo)
        return
    # An editor the user set (a GUI editor such as `code --wait`, a script) needs no terminal, as
    # with git; only the fallback, a terminal editor, does.
    editor = configured_editor()
    terminal = sys.stdin.isatty() and sys.stdout.isatty()
    if editor is None and not terminal:
        raise click.UsageError(
            f"milex-configuration opens an editor: none is set ({EDITOR_SETTINGS}) and there is no "
            f"terminal for {FALLBACK_EDITOR}. Set one of them (`code --wait` or a script works), or use "
            "`milex-configuration --from FILE` or `milex config set` in scripts."
        )

    def confirm(question: str) -> bool:  # without a terminal, no one to ask: the draft is kept
        return terminal and click.confirm(question, default=True)

    edit_config(path, confirm=confirm, report=click.echo, editor=editor)


@click.group("config")
def config_group() -> None:
    """Inspect or change the machine configuration without an editor."""


@config_group.command("show")
@reports_errors
def show() -> None:
    """Print the configuration file's path and content."""
    from milex.config.file import config_path, dump_config, load_config

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

    from milex.config.editor import install_config
    from milex.config.file import config_path, parse_config, parse_document, read_config_text
    from milex_common.errors import ConfigError

    path = config_path()
    document = parse_document(read_config_text(path), path) if path.exists() else {}
    entry = document.setdefault(machine, {"path": "", "env_command": "", "slurm_account": ""})
    if not isinstance(entry, dict):
        raise ConfigError(
            f"{path}, machine {machine!r}: must be a JSON object of settings, not {json.dumps(entry)}; "
            "fix it with `milex-configuration`."
        )
    entry[key] = _typed(key, value)
    text = json.dumps(document, indent=4) + "\n"
    install_config(parse_config(text, path), text, path, report=click.echo)


def _typed(key: str, value: str) -> str | int:
    """`value` as the configuration holds `key`: a number for the integer settings."""
    from milex.config.file import INTEGER_KEYS

    if key not in INTEGER_KEYS:
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{key} is a whole number, not {value!r}", param_hint="VALUE") from None


@config_group.command("check")
@reports_errors
def check() -> None:
    """Validate the configuration and list its machines."""
    from milex.config.file import load_config

    config = load_config()
    for machine in config.machines.values():
        where = f"{machine.hostname}:{machine.path}" if machine.is_remote else machine.path
        notify = f"; notify: {machine.notify}" if machine.notify else ""
        click.echo(f"{machine.name}: {machine.scheduler} at {where}{notify}")


def main() -> None:
    configuration.main(prog_name="milex-configuration")
