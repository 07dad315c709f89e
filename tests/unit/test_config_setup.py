"""Setting Milex up: `$MILEX` in shell start-up files, machine directories, the edit-validate loop."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from milex.config.editor import (
    RC_BEGIN,
    RC_END,
    create_machine_dirs,
    edit_config,
    find_editor,
    set_milex_variable,
)
from milex.config.file import Machine, parse_config
from milex_common.errors import ConfigError

# --- $MILEX in ~/.bashrc and ~/.zshrc -------------------------------------------------------------------


def test_block_added_to_bashrc(home: Path) -> None:
    assert set_milex_variable("/home/alice/milex", home=home) == [home / ".bashrc"]
    assert (home / ".bashrc").read_text() == f"{RC_BEGIN}\nexport MILEX=/home/alice/milex\n{RC_END}\n"


def test_zshrc_only_when_it_exists(home: Path) -> None:
    (home / ".zshrc").write_text("autoload -U compinit\n")
    assert set_milex_variable("/m", home=home) == [home / ".bashrc", home / ".zshrc"]
    assert (home / ".zshrc").read_text().startswith("autoload -U compinit\n# >>> milex >>>\n")


def test_second_run_changes_nothing(home: Path) -> None:
    (home / ".bashrc").write_text("alias ll='ls -l'\n")
    set_milex_variable("/home/alice/milex", home=home)
    first = (home / ".bashrc").read_text()
    assert set_milex_variable("/home/alice/milex", home=home) == []
    assert (home / ".bashrc").read_text() == first
    assert first.count(RC_BEGIN) == 1


def test_new_path_replaces_the_block_in_place(home: Path) -> None:
    (home / ".bashrc").write_text("export A=1\n")
    set_milex_variable("/old/milex", home=home)
    with (home / ".bashrc").open("a") as rc:
        rc.write("export B=2\n")
    set_milex_variable("/new/milex", home=home)
    assert (home / ".bashrc").read_text() == (
        f"export A=1\n{RC_BEGIN}\nexport MILEX=/new/milex\n{RC_END}\nexport B=2\n"
    )


def test_file_without_final_newline_keeps_its_last_line(home: Path) -> None:
    (home / ".bashrc").write_text("export A=1")
    set_milex_variable("/m", home=home)
    assert (home / ".bashrc").read_text().startswith(f"export A=1\n{RC_BEGIN}\n")


@pytest.mark.parametrize(
    "path", ["/home/alice/My Drive/milex", "/home/alice/it's/milex", "/data/$USER/milex", '/data/"q"/milex']
)
def test_sourced_block_sets_milex_to_the_path(home: Path, path: str) -> None:
    set_milex_variable(path, home=home)
    shell = subprocess.run(
        ["bash", "--norc", "-c", 'source "$1" && printf %s "$MILEX"', "bash", str(home / ".bashrc")],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert shell.stdout == path


# --- Machine directories --------------------------------------------------------------------------------


def test_create_machine_dirs(tmp_path: Path) -> None:
    machine = Machine(name="local", path=str(tmp_path / "milex"), env_command="", slurm_account="")
    created = create_machine_dirs(machine)
    names = ["jobs", "slurm", "models", "results", "data"]
    assert created == [tmp_path / "milex" / name for name in names]
    assert all(path.is_dir() for path in created)
    assert create_machine_dirs(machine) == []


def test_create_machine_dirs_only_missing_ones(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    machine = Machine(name="local", path=str(tmp_path), env_command="", slurm_account="")
    assert tmp_path / "jobs" not in create_machine_dirs(machine)


# --- The edit-validate loop ------------------------------------------------------------------------------

INVALID = '{"local": {"path": "/x",,}}'

FAKE_EDITOR = """\
#!/bin/sh
# Writes the next of its answers over the file it is given; counts its runs in $0.count.
count=$(cat "$0.count" 2>/dev/null || echo 0)
count=$((count + 1))
echo "$count" > "$0.count"
cp "$0.answer$count" "$1"
"""


def fake_editor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *answers: str) -> Path:
    editor = tmp_path / "editor"
    editor.write_text(FAKE_EDITOR)
    editor.chmod(0o755)
    for number, answer in enumerate(answers, start=1):
        Path(f"{editor}.answer{number}").write_text(answer)
    monkeypatch.setenv("VISUAL", str(editor))
    return editor


def runs(editor: Path) -> int:
    return int(Path(f"{editor}.count").read_text())


def valid_config(tmp_path: Path) -> str:
    return json.dumps({"local": {"path": str(tmp_path / "milex"), "env_command": "", "slurm_account": ""}})


def test_edit_config_retries_until_valid_then_saves(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    editor = fake_editor(tmp_path, monkeypatch, INVALID, valid_config(tmp_path))
    path = home / ".milexconfig"
    questions, reports = [], []

    def confirm(question: str) -> bool:
        questions.append(question)
        return True

    config = edit_config(path, confirm, reports.append)

    assert runs(editor) == 2
    assert len(questions) == 1
    assert reports[0].startswith(f"error: {path}, line 1")
    assert path.read_text() == valid_config(tmp_path)
    assert config.machine("local").path == str(tmp_path / "milex")
    assert not path.with_name(".milexconfig.draft.json").exists()
    assert (tmp_path / "milex" / "jobs").is_dir()
    assert f"export MILEX={tmp_path / 'milex'}" in (home / ".bashrc").read_text()


def test_edit_config_declined_keeps_the_draft(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    editor = fake_editor(tmp_path, monkeypatch, INVALID)
    path = home / ".milexconfig"
    draft = home / ".milexconfig.draft.json"

    with pytest.raises(ConfigError) as error:
        edit_config(path, lambda question: False, lambda message: None)

    assert runs(editor) == 1
    assert str(draft) in str(error.value)
    assert "not saved" in str(error.value)
    assert draft.read_text() == INVALID
    assert not path.exists()


def test_edit_config_reopens_the_kept_draft(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    draft = home / ".milexconfig.draft.json"
    draft.write_text("what the user typed last time")
    seen = tmp_path / "seen"
    editor = tmp_path / "editor"
    editor.write_text(f'#!/bin/sh\ncp "$1" {seen}\nexit 1\n')
    editor.chmod(0o755)
    monkeypatch.setenv("VISUAL", str(editor))

    with pytest.raises(ConfigError, match="exited with status 1"):
        edit_config(home / ".milexconfig", lambda question: True, lambda message: None)
    assert seen.read_text() == "what the user typed last time"
    assert draft.read_text() == "what the user typed last time"


def test_edit_config_starts_from_the_existing_configuration(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = home / ".milexconfig"
    path.write_text(valid_config(tmp_path))
    seen = tmp_path / "seen"
    editor = tmp_path / "editor"
    editor.write_text(f'#!/bin/sh\ncp "$1" {seen}\n')
    editor.chmod(0o755)
    monkeypatch.setenv("VISUAL", str(editor))

    edit_config(path, lambda question: True, lambda message: None)
    assert seen.read_text() == valid_config(tmp_path)


def test_edit_config_new_file_starts_from_a_valid_template(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VISUAL", "true")  # the user saves the template unchanged
    config = edit_config(home / ".milexconfig", lambda question: False, lambda message: None)
    assert config.machine("local").path == str(home / "milex")
    assert parse_config((home / ".milexconfig").read_text(), home / ".milexconfig") == config


# --- Which editor ---------------------------------------------------------------------------------------


@pytest.fixture
def no_editor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No editor variables, and a git whose only configuration is an empty global file."""
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.delenv("EDITOR", raising=False)
    gitconfig = tmp_path / "gitconfig"
    gitconfig.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return gitconfig


def test_visual_comes_first(no_editor: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_editor.write_text("[core]\n\teditor = from-git\n")
    monkeypatch.setenv("VISUAL", "code --wait")
    monkeypatch.setenv("EDITOR", "vim")
    assert find_editor() == "code --wait"


def test_editor_after_visual(no_editor: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_editor.write_text("[core]\n\teditor = from-git\n")
    monkeypatch.setenv("VISUAL", "")
    monkeypatch.setenv("EDITOR", "vim")
    assert find_editor() == "vim"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_core_editor_after_variables(no_editor: Path) -> None:
    no_editor.write_text("[core]\n\teditor = emacs -nw\n")
    assert find_editor() == "emacs -nw"


def test_nano_last(no_editor: Path) -> None:
    assert find_editor() == "nano"


def test_config_set_stores_numbers_as_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from milex.cli.config import config_group

    monkeypatch.setenv("MILEX_CONFIG", str(tmp_path / "milexconfig"))
    runner = CliRunner()
    for key, value in (("path", str(tmp_path)), ("max_submitted", "5")):
        done = runner.invoke(config_group, ["set", "cluster", key, value])
        assert done.exit_code == 0, done.output
    assert json.loads((tmp_path / "milexconfig").read_text())["cluster"]["max_submitted"] == 5
    refused = runner.invoke(config_group, ["set", "cluster", "max_submitted", "five"])
    assert refused.exit_code == 2 and "max_submitted is a whole number, not 'five'" in refused.output
