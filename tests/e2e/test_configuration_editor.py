"""`milex-configuration` run by a script or a GUI: stdin and stdout not a terminal, an editor set or not."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import BIN

EDITOR_SCRIPT = """#!/bin/sh
# An editor that needs no terminal: writes the configuration it is given in $MACHINES into the draft.
printf '%s' "$MACHINES" > "$1"
"""


@pytest.fixture
def user(tmp_path: Path) -> dict[str, str]:
    """A user whose environment sets no editor (git's global configuration is empty), and an editor script."""
    home = tmp_path / "home"
    home.mkdir()
    editor = tmp_path / "write-config"
    editor.write_text(EDITOR_SCRIPT)
    editor.chmod(0o755)
    machines = {"local": {"path": str(tmp_path / "milex"), "env_command": "", "slurm_account": ""}}
    env = {key: value for key, value in os.environ.items() if key not in ("VISUAL", "EDITOR", "GIT_EDITOR")}
    return {
        **env, "HOME": str(home), "MILEX_CONFIG": str(tmp_path / "milexconfig"), "GIT_CONFIG_NOSYSTEM": "1",
        "MACHINES": json.dumps(machines), "SCRIPT": str(editor),
    }  # fmt: skip


def configuration(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `milex-configuration` with stdin and stdout pipes, not a terminal."""
    return subprocess.run(
        [str(BIN / "milex-configuration")], env=env, stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("variable", ["EDITOR", "VISUAL"])
def test_an_editor_set_needs_no_terminal(user: dict[str, str], variable: str) -> None:
    result = configuration({**user, variable: user["SCRIPT"]})
    assert result.returncode == 0, result.stderr
    assert json.loads(Path(user["MILEX_CONFIG"]).read_text()) == json.loads(user["MACHINES"])
    assert (Path(json.loads(user["MACHINES"])["local"]["path"]) / "jobs").is_dir()


def test_gits_core_editor_needs_no_terminal(user: dict[str, str]) -> None:
    subprocess.run(["git", "config", "--global", "core.editor", user["SCRIPT"]], env=user, check=True)
    result = configuration(user)
    assert result.returncode == 0, result.stderr
    assert json.loads(Path(user["MILEX_CONFIG"]).read_text()) == json.loads(user["MACHINES"])


def test_no_editor_and_no_terminal_is_refused_naming_what_to_do(user: dict[str, str]) -> None:
    result = configuration(user)
    assert result.returncode == 2
    for named in ("--from", "$VISUAL", "$EDITOR", "core.editor", "no terminal"):
        assert named in result.stderr
    assert not Path(user["MILEX_CONFIG"]).exists()


def test_an_invalid_configuration_without_a_terminal_is_kept_as_a_draft_not_asked_about(
    user: dict[str, str],
) -> None:
    result = configuration({**user, "EDITOR": user["SCRIPT"], "MACHINES": '{"local": {"colour": "blue"}}'})
    assert result.returncode == 1
    assert "unknown key 'colour'" in result.stdout + result.stderr
    assert "your edits are kept in" in result.stderr
    assert not Path(user["MILEX_CONFIG"]).exists()
    assert Path(user["MILEX_CONFIG"] + ".draft.json").read_text() == '{"local": {"colour": "blue"}}'
