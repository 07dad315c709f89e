"""The one gateway for scheduler commands: what it turns into errors the agent survives."""

from __future__ import annotations

import pytest

from milex_agent.scheduler.slurm.command import run_command
from milex_common.errors import SchedulerError


def test_a_command_the_system_cannot_run_is_a_scheduler_error_not_a_crash() -> None:
    with pytest.raises(SchedulerError, match="could not run"):
        run_command(["true", "x" * (256 * 1024)])  # over the kernel's limit for one argument


def test_a_missing_command_says_what_to_install_or_configure() -> None:
    with pytest.raises(SchedulerError, match="scheduler"):
        run_command(["milex-no-such-command"])
