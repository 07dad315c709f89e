"""Everyday bad input: each gives a clear error naming what was wrong and where, or does the right
thing; never a traceback, a silent change or lost data."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from milex import api
from milex.cli.schedule import schedule
from milex.records import load_bundle
from milex_common.errors import BundleError


@pytest.fixture
def echo_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An app `echo` whose `echo-cli` records the arguments it was given, as the app's `--argv`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cli = bin_dir / "echo-cli"
    cli.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps({{'argv': sys.argv[1:]}}))\n")
    cli.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return "echo"


def test_after_a_double_dash_the_arguments_are_the_apps_even_from_the_command_line(
    milex_config, echo_app: str
) -> None:
    """The README's own example: `--time 5` is Milex's, `--time 300` after `--` the app's."""
    result = CliRunner().invoke(schedule, [echo_app, "--time", "5", "--", "--time", "300"])
    assert result.exit_code == 0, result.output
    job = load_bundle(milex_config.jobs_dir, echo_app).jobs[echo_app]
    assert job.slurm.time == "5"
    assert job.script_args == {"argv": ["--time", "300"]}


@pytest.mark.parametrize(
    ("value", "text"), [(float("inf"), "inf"), (float("-inf"), "-inf"), (float("nan"), "nan")]
)
def test_non_finite_arguments_are_kept_as_the_text_a_parser_reads_back(
    milex_config, value: float, text: str
) -> None:
    """JSON has no inf or nan: written as null, the argument vanished from the script."""
    api.schedule("train", script_args={"limit": value, "grid": [1.0, value]})
    record = json.loads(next(milex_config.jobs_dir.glob("train_*.json")).read_text())
    assert record["train"]["script_args"] == {"limit": text, "grid": [1.0, text]}
    script = api.preview("train")["train"]
    assert f"--limit={text}" in script


def test_a_hand_edited_record_is_checked_before_it_runs(milex_config) -> None:
    scheduled = api.schedule("train", script_args={"lr": 0.1})
    record = json.loads(scheduled.path.read_text())
    record["train"]["slurm"] = {"time": "banana"}
    scheduled.path.write_text(json.dumps(record))
    with pytest.raises(BundleError) as caught:
        api.preview("train")
    message = str(caught.value)
    assert str(scheduled.path) in message and "job 'train'" in message and "banana" in message
