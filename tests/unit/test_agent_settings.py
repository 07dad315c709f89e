"""What the client starts agents with: the agent's defaults (milex_common.intervals), or the environment's."""

from __future__ import annotations

import shlex

import pytest

from milex.config.file import Machine
from milex.machine import commands, endpoint, lifecycle, settings
from milex_agent import daemon
from milex_common import agent_layout, intervals
from milex_common.errors import MilexError

ENV = (settings.POLL_INTERVAL_ENV, settings.MAX_INTERVAL_ENV, settings.IDLE_EXIT_ENV)


@pytest.fixture(autouse=True)
def no_overrides(monkeypatch):
    for variable in ENV:
        monkeypatch.delenv(variable, raising=False)


def remote() -> Machine:
    return Machine(name="cluster", path="~/milex", env_command="", slurm_account="", hostname="login1")


def test_the_remote_start_command_carries_the_agents_defaults():
    command = commands.remote_agent_command(remote(), "start")
    assert (
        f"--poll-interval {intervals.POLL_INTERVAL} --max-interval {intervals.MAX_POLL_INTERVAL}" in command
    )
    # The agent's own default: an agent older than --idle-exit still starts.
    assert "--idle-exit" not in command


def test_the_local_start_carries_the_agents_defaults(monkeypatch, tmp_path):
    started: list[dict[str, float]] = []

    def start(directory, **settings):
        started.append(settings)
        return agent_layout.AgentInfo(
            pid=1, socket="/x.sock", version="0", started_at=0.0, directory=str(directory)
        )

    monkeypatch.setattr(daemon, "start", start)
    endpoint.endpoint(Machine(name="local", path=str(tmp_path), env_command="", slurm_account=""))
    lifecycle.start_agent(Machine(name="local", path=str(tmp_path), env_command="", slurm_account=""))
    expected = {
        "poll_interval": intervals.POLL_INTERVAL,
        "max_interval": intervals.MAX_POLL_INTERVAL,
        "idle_exit": intervals.IDLE_EXIT,
    }
    assert started == [expected, expected]


def test_the_environment_overrides_every_setting(monkeypatch):
    monkeypatch.setenv(settings.POLL_INTERVAL_ENV, "0.5")
    monkeypatch.setenv(settings.MAX_INTERVAL_ENV, "4")
    monkeypatch.setenv(settings.IDLE_EXIT_ENV, "0")
    assert settings.start_settings() == {"poll_interval": 0.5, "max_interval": 4.0, "idle_exit": 0.0}
    command = commands.remote_agent_command(remote(), "start")
    assert "--poll-interval 0.5 --max-interval 4.0 --idle-exit 0.0" in command


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_override_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(settings.IDLE_EXIT_ENV, value)
    with pytest.raises(MilexError, match=f"{settings.IDLE_EXIT_ENV}='{value}' is not a number of seconds"):
        settings.start_settings()


def test_a_machine_with_a_state_dir_passes_it_to_every_agent_command():
    machine = remote()
    machine.state_dir = "~/node-local state"
    for action in ("start", "stop", "status"):
        _, _, script = shlex.split(commands.remote_agent_command(machine, action))  # bash -lc SCRIPT
        assert """--state-dir "$HOME"/'node-local state'""" in script
    # Without one, nothing new on the command line: an agent older than the key still starts.
    assert "--state-dir" not in commands.remote_agent_command(remote(), "start")
