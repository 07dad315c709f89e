"""The one road to a machine's agent: a checked connection, opened once per process and reused.

A local machine's agent is started on this host (milex.machine.local); a remote one's is reached
through the machine's tunnel, which starts the agent after each SSH (re)connection.
"""

from __future__ import annotations

import threading
from functools import partial
from typing import TYPE_CHECKING

from milex.machine.settings import client_version
from milex_common.connection import AgentConnection

if TYPE_CHECKING:
    from milex.config.file import Machine
    from milex_common.protocol import HelloReply


def endpoint(machine: Machine) -> str:
    """The ZeroMQ endpoint of `machine`'s agent, starting the agent (and tunnel) if needed."""
    if machine.is_remote:
        return remote_endpoint(machine)
    from milex.machine.local import start_local_agent  # the agent's code: only for a local machine

    return f"ipc://{start_local_agent(machine).socket}"


def remote_endpoint(machine: Machine) -> str:
    """The local end of `machine`'s tunnel to its agent; tunnel and agent are started if needed.

    The tunnel runs `milex-agent start` after each SSH (re)connection, so a stopped or crashed
    agent comes back with the link, and learns the agent's socket from what it prints. Its broker
    (tunnel/broker.py) is the endpoint: one connection to the agent, kept open. A tunnel whose last
    attempt to reach the machine failed, or one of an earlier release (no broker), has its link
    checked first (a keepalive, or a new connection): a dead one is a LinkDown within seconds, where
    the command would wait for an answer that cannot come.
    """
    # Here, not at the top: a local machine's commands need none of the tunnel's code (~5 ms).
    from milex.machine.commands import remote_agent_command, remote_relay
    from milex.machine.ssh.errors import PromptUnavailable, TunnelStopping
    from milex.machine.tunnel.control import check_link, start_tunnel, stop_tunnel

    on_connect, relay = remote_agent_command(machine, "start"), remote_relay(machine)
    status = start_tunnel(machine.name, "", relay=relay, on_connect=on_connect)
    if status.broker_socket and not status.link_error:
        # The broker checks the link while the request travels (a lost link fails the request
        # within seconds); its Hello answered there, a request costs one round trip.
        return f"ipc://{status.broker_socket}"
    try:
        check_link(machine.name)
    # The new connection wants an answer (a second factor) the tunnel cannot ask; or the tunnel was
    # found as it stopped for that (a command before this one was told so): a new one, asking here.
    except (PromptUnavailable, TunnelStopping):
        stop_tunnel(machine.name)
        status = start_tunnel(machine.name, "", relay=relay, on_connect=on_connect)  # asks on this terminal
    return f"ipc://{status.broker_socket or status.local_socket}"


_shared: dict[str, AgentConnection] = {}


def shared_connection(machine: Machine) -> AgentConnection:
    """This process's connection to `machine`'s agent, opened (and checked) once and then reused:
    repeated submissions from one program cost one round trip each. One `open_ahead` began is waited
    for, and its error raised here, as if it had been opened here."""
    if machine.name not in _shared:
        opening = _opening.pop(machine.name, None)
        _shared[machine.name] = opening.result() if opening is not None else connect(machine)
    return _shared[machine.name]


class _Opening:
    """`connect(machine)` run in a thread of its own; `result` waits for it."""

    def __init__(self, machine: Machine) -> None:
        self.connection: AgentConnection | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._open, args=(machine,), daemon=True)
        self.thread.start()

    def _open(self, machine: Machine) -> None:
        try:
            self.connection = connect(machine)
        except BaseException as error:  # carried to the thread that waits for it, and raised there
            self.error = error

    def result(self) -> AgentConnection:
        self.thread.join()
        if self.error is not None:
            raise self.error
        assert self.connection is not None  # impossible: the thread ended with one or with an error
        return self.connection


_opening: dict[str, _Opening] = {}  # shared connections being opened ahead, by machine


def open_ahead(machine: Machine) -> None:
    """Begin opening `machine`'s shared connection in a thread while the command goes on, when the
    machine is remote and its tunnel up: the link's check, the channel and the hello are round trips
    through SSH, which then overlap the command's own work (imports, reading the record) instead of
    following it. Nothing otherwise: a tunnel's start may ask for a passphrase, and a local agent's
    socket costs no trip; the connection is then opened when first used, as ever."""
    if not machine.is_remote or machine.name in _shared or machine.name in _opening:
        return
    from milex.machine.tunnel.control import tunnel_status

    if tunnel_status(machine.name).up:
        _opening[machine.name] = _Opening(machine)


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
        from milex.machine.tunnel.control import tunnel_gone

        gone = partial(tunnel_gone, machine.name)
    connection = AgentConnection(endpoint(machine), gone=gone, **({"timeout": timeout} if timeout else {}))
    try:
        return connection, connection.hello(client_version())
    except BaseException:
        connection.close()
        raise
