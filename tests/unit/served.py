"""An AgentServer serving in a thread over a real ipc socket, with a fake scheduler: the `served` and
`running` fixtures (conftest.py offers them to every unit test)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zmq

from milex_agent.journal import Journal
from milex_agent.lifetime import Lifetime
from milex_agent.server import AgentServer
from milex_agent.state import Agent
from milex_common.connection import AgentConnection
from milex_common.model import MachineSettings
from milex_common.protocol import Reply, Submitted, decode_reply
from tests.unit.agent_fakes import FakeScheduler, chain_bundle, make_agent, submit_request

DEADLINE = 3.0


@dataclass
class Served:
    """An AgentServer serving in a thread, with a fake scheduler, and the clients a test opened."""

    agent: Agent
    fake: FakeScheduler
    server: AgentServer
    endpoint: str
    settings: MachineSettings
    thread: threading.Thread | None = None
    connections: list[AgentConnection] = field(default_factory=list)

    def start(self) -> None:
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()

    def connect(self, timeout: float = DEADLINE) -> AgentConnection:
        connection = AgentConnection(self.endpoint, timeout=timeout)
        self.connections.append(connection)
        return connection

    def submit(self, connection: AgentConnection, *jobs: str, name: str = "exp") -> Submitted:
        reply = connection.request(submit_request(chain_bundle(name, *jobs), self.settings), expect=Submitted)
        assert isinstance(reply, Submitted) and reply.error == "", reply
        return reply

    def raw(self, connection: AgentConnection, frame: bytes) -> Reply:
        """The reply to a frame sent as is, bypassing the client's encoding and id matching."""
        connection.socket.send(frame)
        assert connection.socket.poll(int(DEADLINE * 1000), zmq.POLLIN), "no reply"
        return decode_reply(connection.socket.recv())


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    journal = Journal(tmp_path / "journal.sqlite")
    fake = FakeScheduler()
    agent = make_agent(journal, fake, interval=0.02, max_interval=0.1)
    endpoint = f"ipc://{tmp_path / 'agent.sock'}"
    settings = MachineSettings(name="cluster", path=str(tmp_path / "milex"))
    server = AgentServer(agent, endpoint, lifetime=Lifetime(idle_exit=0))  # it stops when asked to only
    served = Served(agent, fake, server, endpoint, settings)
    try:
        yield served
    finally:
        agent.stopping = True
        if served.thread is not None:
            served.thread.join(DEADLINE)
            assert not served.thread.is_alive(), "the server did not stop"
        for connection in served.connections:
            connection.close()
        served.server.close()
        journal.close()


@pytest.fixture
def running(served: Served) -> Served:
    served.start()
    return served
