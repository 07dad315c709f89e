"""Reaching a machine's agent: started on this host for local machines, through the tunnel for remote ones."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypedDict

from milex.config.file import Machine
from milex_common.connection import AgentConnection
from milex_common.errors import MilexError
from milex_common.protocol import HelloReply

POLL_INTERVAL_ENV = "MILEX_AGENT_POLL_INTERVAL"
MAX_INTERVAL_ENV = "MILEX_AGENT_MAX_INTERVAL"
IDLE_EXIT_ENV = "MILEX_AGENT_IDLE_EXIT"


def client_version() -> str:
    from milex_common.version import VERSION

    return VERSION


class PollSettings(TypedDict):
    poll_interval: float
    max_interval: float


class StartSettings(PollSettings):
    idle_exit: float


def poll_settings() -> PollSettings:
    """The agent's SLURM poll interval and its back-off ceiling: the agent's own defaults
    (`milex_common.intervals`) unless the environment overrides them."""
    from milex_common import intervals

    return PollSettings(
        poll_interval=_seconds(POLL_INTERVAL_ENV, intervals.POLL_INTERVAL),
        max_interval=_seconds(MAX_INTERVAL_ENV, intervals.MAX_POLL_INTERVAL),
    )


def start_settings() -> StartSettings:
    """What a detached agent starts with: the poll settings, and how long it stays when idle."""
    from milex_common.intervals import IDLE_EXIT

    return StartSettings(**poll_settings(), idle_exit=_seconds(IDLE_EXIT_ENV, IDLE_EXIT))


def _seconds(variable: str, default: float) -> float:
    text = os.environ.get(variable)
    if text is None:
        return default
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise MilexError(f"{variable}={text!r} is not a number of seconds; set it to one, or unset it.")
    return seconds


def local_agent_dir(machine: Machine) -> Path:
    from milex_agent.daemon import machine_agent_dir

    return machine_agent_dir(machine.path, machine.state_dir)


def endpoint(machine: Machine) -> str:
    """The ZeroMQ endpoint of `machine`'s agent, starting the agent (and tunnel) if needed."""
    if machine.is_remote:
        from milex.machine.deploy import remote_endpoint

        return remote_endpoint(machine)
    from milex_agent.daemon import start

    info = start(local_agent_dir(machine), **start_settings())
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
    return greeted(machine, timeout=timeout)[0]


def greeted(machine: Machine, *, timeout: float | None = None) -> tuple[AgentConnection, HelloReply]:
    """A checked connection to `machine`'s agent, and what the agent said of itself (its features)."""
    gone = None
    if machine.is_remote:  # a tunnel that stops (it needs a code no one can type) ends the wait at once
        from functools import partial

        from milex.machine.tunnel.control import tunnel_gone

        gone = partial(tunnel_gone, machine.name)
    connection = AgentConnection(endpoint(machine), gone=gone, **({"timeout": timeout} if timeout else {}))
    try:
        return connection, connection.hello(client_version())
    except BaseException:
        connection.close()
        raise
