"""A machine on this host: its agent started, stopped and looked up here. The one place where the
client runs the agent's own code (import-linter's contracts in pyproject.toml keep it so)."""

from __future__ import annotations

from pathlib import Path

from milex.config.file import Machine
from milex.machine.settings import start_settings
from milex_agent import daemon
from milex_common.agent_layout import AgentInfo, machine_agent_dir


def local_agent_dir(machine: Machine) -> Path:
    return machine_agent_dir(machine.path, machine.state_dir)


def start_local_agent(machine: Machine) -> AgentInfo:
    """The running agent of `machine`, started detached here first if there is none."""
    return daemon.start(local_agent_dir(machine), **start_settings())


def stop_local_agent(machine: Machine) -> AgentInfo | None:
    """Stop `machine`'s agent here: what it was, or None when none was running."""
    return daemon.stop(local_agent_dir(machine))


def local_agent_info(machine: Machine) -> AgentInfo | None:
    """`machine`'s running agent here, or None."""
    return daemon.read_info(local_agent_dir(machine))
