"""The one gateway for scheduler commands: what it turns into errors the agent survives."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from milex_agent.scheduler.slurm.command import run_command, start_command
from milex_common.errors import SchedulerError, SchedulerUnavailable


def test_a_command_the_system_cannot_run_is_a_scheduler_error_not_a_crash() -> None:
    with pytest.raises(SchedulerError, match="could not run"):
        run_command(["true", "x" * (256 * 1024)])  # over the kernel's limit for one argument


def test_a_missing_command_says_what_to_install_or_configure() -> None:
    with pytest.raises(SchedulerError, match="scheduler"):
        run_command(["milex-no-such-command"])


def test_a_started_command_runs_while_the_caller_goes_on_and_is_waited_for_later(tmp_path: Path) -> None:
    """The submission starts sbatch on the loop's thread and waits for it on a worker."""
    mark = tmp_path / "started"
    started = time.monotonic()
    finish = start_command(["sh", "-c", f'touch {mark}; cat; echo " err" >&2; sleep 0.3'], stdin="in")
    assert time.monotonic() - started < 0.25  # not waited for here
    deadline = time.monotonic() + 5
    while not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert mark.exists()  # already running
    result = finish()
    assert (result.returncode, result.stdout, result.stderr) == (0, "in", " err\n")


def test_a_started_command_that_times_out_is_an_unknown_outcome_and_is_killed() -> None:
    finish = start_command(["sleep", "30"], timeout=0.3)
    started = time.monotonic()
    with pytest.raises(SchedulerUnavailable, match="did not answer within 0 s"):
        finish()
    assert time.monotonic() - started < 5  # killed and reaped, not waited for


def test_a_command_that_cannot_start_fails_when_started_not_when_waited_for() -> None:
    with pytest.raises(SchedulerError, match="scheduler"):
        start_command(["milex-no-such-command"])
