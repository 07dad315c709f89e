"""The CLI stays light: `milex --help` and `milex-schedule` load no heavy module before they need it."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("zmq", "paramiko", "rich", "msgspec", "sqlite3", "milex.records", "milex_agent.server")


@pytest.mark.parametrize("module", ["milex.cli.main", "milex.cli.schedule", "milex.cli.run"])
def test_command_modules_import_nothing_heavy(module: str) -> None:
    probe = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == ""


def test_help_lists_every_command() -> None:
    from click.testing import CliRunner

    from milex.cli.main import milex

    output = CliRunner().invoke(milex, ["--help"]).output
    for command in ("schedule", "run", "status", "logs", "cancel", "agent", "tunnel", "config"):
        assert f"  {command} " in output
    assert "  submit " not in output  # one name per command: `milex run`


@pytest.mark.parametrize("argv", [["-h"], ["run", "-h"], ["logs", "-h"], ["agent", "start", "-h"]])
def test_dash_h_is_help_on_the_group_and_its_commands(argv: list[str]) -> None:
    from click.testing import CliRunner

    from milex.cli.main import milex

    long = CliRunner().invoke(milex, [word.replace("-h", "--help") for word in argv])
    result = CliRunner().invoke(milex, argv)  # after --help, which made the command's help option
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ") and result.output == long.output


@pytest.mark.parametrize(
    ("module", "command", "argv"),
    [
        ("milex.cli.config", "configuration", ["-h"]),
        ("milex_agent.cli", "main", ["-h"]),
        ("milex_agent.cli", "main", ["start", "-h"]),
    ],
)
def test_dash_h_of_every_other_entry_point_is_its_help(module: str, command: str, argv: list[str]) -> None:
    import importlib

    from click.testing import CliRunner

    entry = getattr(importlib.import_module(module), command)
    result = CliRunner().invoke(entry, argv)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ")


def test_dash_h_of_milex_run_alone_is_help() -> None:
    from click.testing import CliRunner

    from milex.cli.run_command import run

    result = CliRunner().invoke(run, ["-h"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output and "--dry-run" in result.output


@pytest.mark.parametrize("argv", [["schedule", "-h"], ["schedule", "-h", "--", "-h"]])
def test_dash_h_of_milex_schedule_is_its_own_help(argv: list[str], capsys) -> None:
    from click.testing import CliRunner

    from milex.cli.main import milex

    result = CliRunner().invoke(milex, argv)
    assert result.exit_code == 0, result.output
    assert "usage: milex-schedule NAME" in result.output  # argparse's, with the app's options explained
