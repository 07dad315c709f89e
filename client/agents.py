"""Reaching a machine's agent: started on this host for local machines, through the tunnel for remote ones."""

from __future__ import annotations

import os
from pathlib import Path

from milex.config import Machine
from milex.connection import AgentConnection

POLL_INTERVAL_ENV = "MILEX_AGENT_POLL_INTERVAL"
MAX_INTERVAL_ENV = "MILEX_AGENT_MAX_INTERVAL"


def client_version() -> str:
    from milex.common.version import VERSION

    return VERSION


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


_shared: dict[str, AgentConnection] = {}


def shared_connection(machine: Machine) -> AgentConnection:
    """This process's connection to `machine`'s agent, opened (and checked) once and then reused:
    repeated submissions from one program cost one round trip each."""
    if machine.name not in _shared:
        _shared[machine.name] = connect(machine)
    return _shared[machine.name]


def drop_shared_connection(machine: Machine) -> None:
    """Forget a connection that failed; the next use opens a new one (restarting what is needed)."""
    connection = _shared.pop(machine.name, None)
    if connection is not None:
        connection.close()


def connect(machine: Machine, *, timeout: float | None = None) -> AgentConnection:
    """A connection to `machine`'s agent whose protocol version has been checked."""
    connection = AgentConnection(endpoint(machine), **({"timeout": timeout} if timeout else {}))
    try:
        connection.hello(client_version())
    except BaseException:
        connection.close()
        raise
    return connection
