"""Reaching a machine's agent: started on this host for local machines, through the tunnel for remote ones."""

from __future__ import annotations

import os
from pathlib import Path

from milex.config import Machine
from milex.connection import AgentConnection

POLL_INTERVAL_ENV = "MILEX_AGENT_POLL_INTERVAL"
MAX_INTERVAL_ENV = "MILEX_AGENT_MAX_INTERVAL"


def client_version() -> str:
    from importlib.metadata import version

    return version("milex-scheduler")


def poll_settings() -> dict[str, float]:
    """The agent's SLURM poll interval and its back-off ceiling (environment overrides)."""
    return {
        "poll_interval": float(os.environ.get(POLL_INTERVAL_ENV, 2.0)),
        "max_interval": float(os.environ.get(MAX_INTERVAL_ENV, 30.0)),
    }


def local_agent_dir(machine: Machine) -> Path:
    from milex.agent.daemon import agent_dir

    return agent_dir(machine.path)


def endpoint(machine: Machine) -> str:
    """The ZeroMQ endpoint of `machine`'s agent, starting the agent (and tunnel) if needed."""
    if machine.is_remote:
        from milex.remote import remote_endpoint

        return remote_endpoint(machine)
    from milex.agent.daemon import start

    info = start(local_agent_dir(machine), **poll_settings())
    return f"ipc://{info.socket}"


def connect(machine: Machine, *, timeout: float | None = None) -> AgentConnection:
    """A connection to `machine`'s agent whose protocol version has been checked."""
    connection = AgentConnection(endpoint(machine), **({"timeout": timeout} if timeout else {}))
    try:
        connection.hello(client_version())
    except BaseException:
        connection.close()
        raise
    return connection
