"""A file where Milex expects a directory, a directory where it expects a file, a file it cannot read:
each command gives one line naming the path and what to do, never a traceback, and saves nothing."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from milex.cli.main import milex


def fails(*args: str) -> str:
    """Run `milex ARGS`: it must fail with a Milex error (exit status 1, no traceback); its message."""
    result = CliRunner().invoke(milex, list(args))
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exc_info
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def local_machine(path: Path) -> dict[str, dict[str, str]]:
    return {"local": {"path": str(path), "env_command": "", "slurm_account": "", "scheduler": "local"}}


@pytest.fixture
def echo_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An app `echo` whose `echo-cli` prints no arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cli = bin_dir / "echo-cli"
    cli.write_text(f"#!{sys.executable}\nprint('{{}}')\n")
    cli.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return "echo"


# --- The configuration -----------------------------------------------------------------------------------


@pytest.mark.parametrize("under", [False, True])
def test_configuration_from_a_file_whose_path_is_a_file_is_refused_before_saving(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, under: bool
) -> None:
    a_file = tmp_path / "milex-file"
    a_file.write_text("not a directory")
    source = tmp_path / "new-config.json"
    source.write_text(json.dumps(local_machine(a_file / "sub" if under else a_file)))
    config = tmp_path / "milexconfig"
    monkeypatch.setenv("MILEX_CONFIG", str(config))

    message = fails("configuration", "--from", str(source))

    assert f"{source}, machine 'local': key 'path'" in message
    assert f"{a_file} is a file, not a directory" in message
    assert not config.exists()
    assert a_file.read_text() == "not a directory"


def test_config_set_of_a_path_that_is_a_file_changes_nothing(milex_config, tmp_path: Path) -> None:
    a_file = tmp_path / "milex-file"
    a_file.write_text("")
    before = milex_config.config_path.read_text()

    message = fails("config", "set", "local", "path", str(a_file))

    assert f"{milex_config.config_path}, machine 'local'" in message and f"{a_file} is a file" in message
    assert milex_config.config_path.read_text() == before


def test_the_editor_is_reopened_when_the_path_is_a_file(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from milex.config.editor import edit_config

    a_file = tmp_path / "milex-file"
    a_file.write_text("")
    monkeypatch.setenv("VISUAL", f"cp {tmp_path / 'answer'}")
    (tmp_path / "answer").write_text(json.dumps(local_machine(a_file)))
    reports: list[str] = []
    config, draft = home / ".milexconfig", home / ".milexconfig.draft.json"

    with pytest.raises(Exception, match="not saved") as caught:
        edit_config(config, lambda question: False, reports.append)

    assert type(caught.value).__name__ == "ConfigError"
    assert len(reports) == 1 and f"{a_file} is a file" in reports[0]
    assert not config.exists()
    assert json.loads(draft.read_text()) == local_machine(a_file)


@pytest.fixture
def config_is_a_directory(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "a-directory"
    (directory / "inside").mkdir(parents=True)
    monkeypatch.setenv("MILEX_CONFIG", str(directory))
    return directory


@pytest.mark.parametrize(
    "args",
    [
        ("config", "show"),
        ("config", "check"),
        ("config", "set", "local", "path", "/tmp/milex"),
        ("configuration", "--from", "SOURCE"),
        ("ls",),
        ("status",),
        ("run", "echo", "--dry-run"),
        ("schedule", "echo"),
    ],
)
def test_milex_config_naming_a_directory(
    config_is_a_directory: Path, tmp_path: Path, echo_app: str, args: tuple[str, ...]
) -> None:
    source = tmp_path / "source.json"
    source.write_text(json.dumps(local_machine(tmp_path / "milex")))
    message = fails(*(str(source) if arg == "SOURCE" else arg for arg in args))
    assert f"{config_is_a_directory} is a directory, not a configuration file" in message
    assert "MILEX_CONFIG" in message
    assert sorted(p.name for p in config_is_a_directory.iterdir()) == ["inside"]
    assert not (tmp_path / "milex").exists()


LATIN_1 = b'{\n  "local": {"path": "/home/ren\xe9/milex", "env_command": "", "slurm_account": ""}\n}\n'


@pytest.mark.parametrize(
    "args",
    [("config", "show"), ("config", "set", "local", "slurm_account", "x"), ("ls",), ("status",)],
)
def test_a_configuration_not_in_utf8(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    config = tmp_path / "milexconfig"
    config.write_bytes(LATIN_1)
    monkeypatch.setenv("MILEX_CONFIG", str(config))
    message = fails(*args)
    assert f"{config}, line 2: not UTF-8 text (byte 0xe9); save the file in UTF-8" in message
    assert config.read_bytes() == LATIN_1


def test_a_configuration_to_install_not_in_utf8(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "latin-1.json"
    source.write_bytes(LATIN_1)
    monkeypatch.setenv("MILEX_CONFIG", str(tmp_path / "milexconfig"))
    assert f"{source}, line 2: not UTF-8 text" in fails("configuration", "--from", str(source))
    assert not (tmp_path / "milexconfig").exists()


def test_an_unreadable_configuration(milex_config, monkeypatch: pytest.MonkeyPatch) -> None:
    """Permission denied (made by hand: these tests may run as root, which reads any file)."""
    before = milex_config.config_path.read_bytes()
    path_open = Path.open

    def denied(path: Path, *args: Any, **kwargs: Any) -> Any:
        if path == milex_config.config_path:
            raise PermissionError(13, "Permission denied", str(path))
        return path_open(path, *args, **kwargs)

    monkeypatch.setattr(Path, "open", denied)
    for args in (("config", "show"), ("config", "set", "local", "slurm_account", "x"), ("ls",)):
        message = fails(*args)
        assert f"cannot read the configuration {milex_config.config_path}: Permission denied" in message
    monkeypatch.undo()
    assert milex_config.config_path.read_bytes() == before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{,}", "line 1, column 2: invalid JSON"),
        ("[]", "must be a JSON object of machines by name"),
        ('{"local": "x"}', "machine 'local': must be a JSON object of settings"),
    ],
)
def test_config_set_on_a_malformed_configuration_changes_nothing(
    milex_config, text: str, expected: str
) -> None:
    milex_config.config_path.write_text(text)
    assert expected in fails("config", "set", "local", "path", "/tmp/milex")
    assert milex_config.config_path.read_text() == text


# --- Job records -----------------------------------------------------------------------------------------


def test_a_bundle_record_that_is_a_directory(milex_config, echo_app: str) -> None:
    record = milex_config.jobs_dir / "echo_20990101000000.json"
    record.mkdir(parents=True)
    for args in (("schedule", "echo", "--append", "--job-name", "b"), ("run", "echo", "--dry-run")):
        message = fails(*args)
        assert f"cannot read the bundle record {record}: it is a directory" in message
        assert "move it aside" in message
    assert list(record.iterdir()) == []


@pytest.mark.parametrize("blocker", ["jobs", "milex"])
def test_a_jobs_directory_that_is_a_file(milex_config, echo_app: str, blocker: str) -> None:
    a_file = milex_config.jobs_dir if blocker == "jobs" else milex_config.milex_path
    a_file.parent.mkdir(parents=True, exist_ok=True)
    a_file.write_text("")
    for args in (
        ("schedule", "echo"),
        ("schedule", "echo", "--append"),
        ("ls",),
        ("run", "echo", "--dry-run"),
    ):
        message = fails(*args)
        assert f"{a_file} is a file, not" in message and "move it aside" in message
    assert a_file.read_text() == ""
