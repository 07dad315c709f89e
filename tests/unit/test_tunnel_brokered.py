"""The tunnel service with its broker, end to end on this host: client -> broker (ipc) -> the service's
spliced socket -> a "channel" (a unix socket to the agent, where SSH would carry it) -> a real agent.
The SSH session is a stand-in that only opens such channels and counts link checks."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from milex.machine.ssh.errors import LinkDown, PromptUnavailable
from milex.machine.tunnel.broker import Broker
from milex.machine.tunnel.control import TunnelFiles, TunnelStatus
from milex.machine.tunnel.service import RemoteAgent, TunnelService, _listen
from milex_common.connection import AgentConnection, AgentUnavailable
from milex_common.protocol import Events, Status, StatusReply, Watch
from tests.unit.agent_fakes import wait_until
from tests.unit.served import Served
from tests.unit.ssh_fakes import SocketChannel

DEADLINE = 3.0


class LocalSession:
    """An SSH session that opens channels to a local socket, and whose link checks are counted; a
    check told to fail drops every channel, as a reconnection would. Its first `dead_ends` channels
    end at once, as a relay's that found no agent."""

    mode, connected_at, last_failure, is_connected = "streamlocal", 1.0, "", True

    def __init__(self) -> None:
        self.channels: list[SocketChannel] = []
        self.checks = 0
        self.fail_checks = False
        self.dead_ends = 0
        self.prompt = ""  # a check that finds the link dead and a reconnection asking this

    def open_streamlocal(self, path: str) -> SocketChannel:
        if self.dead_ends:
            self.dead_ends -= 1
            end, far = socket.socketpair()
            far.close()
            self.channels.append(SocketChannel(end))
        else:
            self.channels.append(SocketChannel.to_unix(path))
        return self.channels[-1]

    def ensure_live(self, fresh: float = 0.0) -> None:
        self.checks += 1
        if self.prompt:
            for channel in self.channels:
                channel.socket.shutdown(socket.SHUT_RDWR)
            raise PromptUnavailable(self.prompt)
        if self.fail_checks:
            self.last_failure = "cluster did not answer"
            for channel in self.channels:
                channel.socket.shutdown(socket.SHUT_RDWR)
            raise LinkDown(self.last_failure)


class Tunnel:
    def __init__(self, served: Served, directory: Path, idle: float) -> None:
        self.session = LocalSession()
        agent_socket = served.endpoint.removeprefix("ipc://")
        files = TunnelFiles("cluster", directory)
        status = TunnelStatus(machine="cluster", state="up", mode="streamlocal", connected_at=1.0)
        self.service = TunnelService(self.session, RemoteAgent(None, agent_socket), status, files, idle)  # type: ignore[arg-type]
        spliced = directory / "cluster.sock"
        listener = _listen(spliced)
        self.broker = Broker(
            directory / "cluster.zmq",
            f"ipc://{spliced}",
            client_version="test",
            on_request=self.service.check_meanwhile,
            settled=self.service.checked,
            why_lost=self.service.why_lost,
        )
        self.service.broker = self.broker
        self.serving = threading.Thread(target=self._serve, args=(listener,), daemon=True)
        self.brokering = threading.Thread(target=self.broker.serve, daemon=True)
        self.serving.start()
        self.brokering.start()
        self.listener = listener
        self.clients: list[AgentConnection] = []

    def _serve(self, listener: socket.socket) -> None:
        """As the tunnel's process runs: its broker stops when it does."""
        try:
            self.service.serve(listener)
        finally:
            self.broker.stop.set()

    def client(self, timeout: float = DEADLINE) -> AgentConnection:
        self.clients.append(AgentConnection(f"ipc://{self.broker.local}", timeout=timeout))
        return self.clients[-1]

    def close(self) -> None:
        self.service.stop.set()
        self.broker.stop.set()
        for thread in (self.serving, self.brokering):
            thread.join(DEADLINE)
        for connection in self.clients:
            connection.close()
        self.listener.close()


@pytest.fixture
def tunnel(running: Served, tmp_path: Path) -> Iterator[Tunnel]:
    made = Tunnel(running, tmp_path, idle=60.0)
    try:
        yield made
    finally:
        made.close()


def test_clients_share_one_channel_and_the_link_is_checked_while_requests_travel(tunnel: Tunnel) -> None:
    for _ in range(3):  # three commands, each a new connection
        client = tunnel.client()
        client.hello("test")
        assert client.request(Status(), expect=StatusReply).jobs == []
        client.close()
    assert len(tunnel.session.channels) == 1  # one channel, one handshake over the link
    assert tunnel.session.checks >= 1  # made sure of meanwhile, not before


def test_a_connection_ended_before_its_handshake_is_made_again_once_with_its_requests(
    tunnel: Tunnel,
) -> None:
    """A relay that found no agent ends its channel before ZeroMQ's handshake, and the tunnel starts
    the agent meanwhile: nothing reached it, so the connection is made again, and answered."""
    tunnel.session.dead_ends = 1
    client = tunnel.client()
    client.hello("test")
    assert client.request(Status(), expect=StatusReply).jobs == []
    assert len(tunnel.session.channels) == 2


def test_a_connection_ended_twice_before_its_handshake_fails_its_requests(tunnel: Tunnel) -> None:
    tunnel.session.dead_ends = 2
    started = time.monotonic()
    with pytest.raises(AgentUnavailable, match="the tunnel lost its connection to the agent"):
        tunnel.client(timeout=30.0).hello("test")
    assert time.monotonic() - started < DEADLINE  # answered, not timed out
    assert len(tunnel.session.channels) == 2


def test_a_link_found_dead_fails_the_request_in_flight_with_its_reason(tunnel: Tunnel) -> None:
    client = tunnel.client(timeout=30.0)
    watch_id = client.send(Watch(since=0, heartbeat=5.0))
    client.receive(watch_id, expect=Events)
    wait_until(tunnel.service.checked)  # the watch's check of the link is over
    tunnel.session.fail_checks = True
    for channel in tunnel.session.channels:  # the link dies: what is sent on it goes nowhere
        channel.cut = True
    started = time.monotonic()
    waiting = tunnel.client(timeout=30.0)
    waiting.hello("test")  # answered by the broker
    status_id = waiting.send(Status())  # its check finds the link dead: the channel goes with it
    down = r"the link to cluster is down \(cluster did not answer\).*milex tunnel status --machine cluster"
    with pytest.raises(AgentUnavailable, match=down):
        waiting.receive(status_id, expect=StatusReply)
    with pytest.raises(AgentUnavailable, match=down):  # the watch's too
        client.receive(watch_id, expect=Events)
    assert time.monotonic() - started < DEADLINE


def test_a_tunnel_stopped_for_a_prompt_tells_the_requests_in_flight_how_to_open_it(tunnel: Tunnel) -> None:
    client = tunnel.client(timeout=30.0)
    watch_id = client.send(Watch(since=0, heartbeat=5.0))
    client.receive(watch_id, expect=Events)
    tunnel.session.prompt = "the server asks 'Verification code:': restart the tunnel from a terminal"
    started = time.monotonic()
    tunnel.service.check_meanwhile()  # as the next request through the broker would
    advice = r"the tunnel to cluster stopped: the server asks .*`milex tunnel up --machine cluster`"
    with pytest.raises(AgentUnavailable, match=advice):
        client.receive(watch_id, expect=Events)
    assert time.monotonic() - started < DEADLINE
    tunnel.serving.join(DEADLINE)
    assert not tunnel.serving.is_alive()


def test_the_tunnel_stops_when_idle_though_the_broker_holds_its_channel(
    running: Served, tmp_path: Path
) -> None:
    tunnel = Tunnel(running, tmp_path, idle=0.5)
    try:
        client = tunnel.client()
        client.request(Status(), expect=StatusReply)
        wait_until(lambda: tunnel.service.active == 1)  # the broker's channel, spliced
        client.close()
        tunnel.serving.join(5.0)
        assert not tunnel.serving.is_alive()  # stopped: the broker's own channel is not a client
    finally:
        tunnel.close()


def test_a_watched_tunnel_is_not_idle(running: Served, tmp_path: Path) -> None:
    tunnel = Tunnel(running, tmp_path, idle=0.5)
    try:
        client = tunnel.client()
        watch_id = client.send(Watch(since=0, heartbeat=0.1))
        client.receive(watch_id, expect=Events)
        time.sleep(1.0)
        assert tunnel.serving.is_alive()  # the watch's heartbeats are activity
        assert client.receive(watch_id, expect=Events).events == []
    finally:
        tunnel.close()
