"""Capturing an app's arguments by running a fake `NAME-cli` placed first on PATH."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from milex.capture import capture_arguments, find_cli
from milex_common.errors import CaptureError, MilexError


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ['PATH']}")
    return directory


def fake_cli(directory: Path, app: str, body: str) -> Path:
    cli = directory / f"{app}-cli"
    cli.write_text(f"#!/bin/sh\n{body}\n")
    cli.chmod(0o755)
    return cli


def test_captures_the_printed_object(bin_dir: Path) -> None:
    fake_cli(
        bin_dir,
        "train",
        """cat <<'EOF'\n{\n    "lr": 0.1,\n    "layers": [1, 2],\n    "fast": true\n}\nEOF""",
    )
    assert capture_arguments("train", ["--lr", "0.1"]) == {"lr": 0.1, "layers": [1, 2], "fast": True}


def test_arguments_reach_the_cli_unchanged(bin_dir: Path) -> None:
    echo = bin_dir / "echo-cli"
    echo.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps({{'argv': sys.argv[1:]}}))\n")
    echo.chmod(0o755)
    arguments = ["--message", "hello world", "--quote=it's", "$HOME", "`id`", ""]
    assert capture_arguments("echo", arguments) == {"argv": arguments}


def test_rejected_arguments_show_the_apps_stderr(bin_dir: Path) -> None:
    fake_cli(
        bin_dir,
        "train",
        "echo 'usage: train [--lr LR]' >&2\necho 'train: error: unrecognized: --lx' >&2\nexit 2",
    )
    with pytest.raises(CaptureError) as error:
        capture_arguments("train", ["--lx", "1"])
    message = str(error.value)
    assert "train-cli rejected the arguments ['--lx', '1']" in message
    assert "exit status 2" in message
    assert "train: error: unrecognized: --lx" in message


def test_failure_without_stderr_shows_stdout(bin_dir: Path) -> None:
    fake_cli(bin_dir, "train", "echo 'something went wrong'\nexit 1")
    with pytest.raises(CaptureError, match="something went wrong"):
        capture_arguments("train", [])


def test_non_json_output_shown(bin_dir: Path) -> None:
    fake_cli(bin_dir, "train", "echo 'Namespace(lr=0.1)'")
    with pytest.raises(CaptureError) as error:
        capture_arguments("train", [])
    message = str(error.value)
    assert "not JSON" in message
    assert "Namespace(lr=0.1)" in message
    assert "json.dumps(vars(args))" in message


def test_log_line_before_json_is_not_json(bin_dir: Path) -> None:
    fake_cli(bin_dir, "train", """echo 'Loading torch...'\necho '{"lr": 0.1}'""")
    with pytest.raises(CaptureError, match="Loading torch"):
        capture_arguments("train", [])


def test_json_list_refused(bin_dir: Path) -> None:
    fake_cli(bin_dir, "train", "echo '[0.1, 3]'")
    with pytest.raises(CaptureError, match="printed JSON list, not an object"):
        capture_arguments("train", [])


def test_empty_output_refused(bin_dir: Path) -> None:
    fake_cli(bin_dir, "train", "true")
    with pytest.raises(CaptureError, match=r"\(nothing\)"):
        capture_arguments("train", [])


def test_missing_cli_mentions_project_scripts(bin_dir: Path) -> None:
    with pytest.raises(CaptureError) as error:
        capture_arguments("no-such-milex-test-app", [])
    message = str(error.value)
    assert "'no-such-milex-test-app-cli'" in message
    assert "[project.scripts]" in message
    assert "pyproject.toml" in message


def test_find_cli_prefers_path(bin_dir: Path) -> None:
    cli = fake_cli(bin_dir, "train", "true")
    assert find_cli("train") == str(cli)


def test_a_cli_that_hangs_is_stopped_with_its_children_and_a_message(bin_dir: Path, monkeypatch) -> None:
    """A child that keeps the output open held the capture after the timeout (run waits for EOF)."""
    fake_cli(bin_dir, "train", "sleep 60 &\nread answer\nsleep 60")
    monkeypatch.setenv("MILEX_CAPTURE_TIMEOUT", "0.5")
    with pytest.raises(CaptureError, match=r"train-cli did not finish within 0.5 s.*MILEX_CAPTURE_TIMEOUT"):
        capture_arguments("train", [])


def test_a_cli_that_leaves_a_child_behind_still_counts(bin_dir: Path, monkeypatch) -> None:
    fake_cli(bin_dir, "train", "sleep 60 &\necho '{\"lr\": 0.1}'")
    monkeypatch.setenv("MILEX_CAPTURE_TIMEOUT", "0.5")
    assert capture_arguments("train", []) == {"lr": 0.1}


def test_a_capture_timeout_that_is_no_number_says_so(bin_dir: Path, monkeypatch) -> None:
    fake_cli(bin_dir, "train", "echo '{}'")
    monkeypatch.setenv("MILEX_CAPTURE_TIMEOUT", "soon")
    with pytest.raises(MilexError, match="MILEX_CAPTURE_TIMEOUT='soon' is not a number of seconds"):
        capture_arguments("train", [])
