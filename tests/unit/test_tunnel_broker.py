"""The tunnel's broker (milex.machine.tunnel.broker) in front of a real agent (served.py), over ipc:
requests, Hellos, watch streams, two clients at once, a client that goes, the agent lost and back."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import zmq

from milex.machine.tunnel.broker import Broker
from milex.machine.tunnel.routes import ReplyHead, RequestHead, Routes
from milex_agent.lifetime import Lifetime
from milex_agent.server import AgentServer
from milex_common.connection import AgentConnection, AgentError, AgentUnavailable
from milex_common.protocol import (
    Ack,
    Events,
    Status,
    StatusReply,
    Submitted,
    Unwatch,
    Watch,
    decode_reply,
    encode,
    version_mismatch,
)
from tests.unit.agent_fakes import chain_bundle, submit_request, wait_until
from tests.unit.served import Served

DEADLINE = 3.0


class Front:
    """A broker serving in a thread in front of `served`'s agent, and the clients a test opened."""

    def __init__(self, served: Served, socket: Path, **options: object) -> None:
        self.served = served
        self.broker = Broker(socket, served.endpoint, client_version="test", **options)  # type: ignore[arg-type]
        self.endpoint = f"ipc://{socket}"
        self.thread = threading.Thread(target=self.broker.serve, daemon=True)
        self.thread.start()
        self.clients: list[AgentConnection] = []

    def client(self, timeout: float = DEADLINE) -> AgentConnection:
        connection = AgentConnection(self.endpoint, timeout=timeout)
        self.clients.append(connection)
        return connection

    def close(self) -> None:
        self.broker.stop.set()
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "the broker did not stop"
        for connection in self.clients:
            connection.close()


@pytest.fixture
def front(running: Served, tmp_path: Path) -> Iterator[Front]:
    served = Front(running, tmp_path / "m.zmq")
    try:
        yield served
    finally:
        served.close()


def test_a_request_and_its_reply_pass_through(front: Front) -> None:
    client = front.client()
    assert client.hello("test").protocol == 1
    request = submit_request(chain_bundle("exp", "a", "b"), front.served.settings)
    reply = client.request(request, expect=Submitted)
    assert [job.name for job in reply.jobs] == ["a", "b"] and reply.error == ""
    status = client.request(Status(bundle="exp"), expect=StatusReply)
    assert {job.name for job in status.jobs} == {"a", "b"}
    assert len(front.broker.routes) == 0  # every route ended with its reply


def test_hellos_are_answered_by_the_broker_from_the_agents_reply(front: Front) -> None:
    first = front.client().hello("test")
    front.served.agent.stopping = True  # the agent answers no more (its socket stays open)
    assert front.served.thread is not None
    front.served.thread.join(DEADLINE)
    second = front.client()
    reply = second.hello("test")  # no round trip to the agent
    assert (reply.pid, reply.host, reply.features, reply.protocol) == (
        first.pid,
        first.host,
        first.features,
        first.protocol,
    )
    with pytest.raises(AgentUnavailable):  # the agent's own answer is asked for: none comes
        second.hello("test", fresh=True)


def test_a_fresh_hello_gets_the_agents_events_now(front: Front) -> None:
    client = front.client()
    before = client.hello("test").last_seq
    front.served.submit(client, "a")
    assert client.hello("test").last_seq == before  # the broker's, from its connection's start
    assert client.hello("test", fresh=True).last_seq > before


def test_two_clients_watch_at_once_and_each_gets_its_stream(front: Front) -> None:
    watchers = [front.client(), front.client()]
    ids = []
    for watcher in watchers:
        watcher.hello("test")
        ids.append(watcher.send(Watch(since=0, heartbeat=0.2)))
        assert watcher.receive(ids[-1], expect=Events).events == []  # the backlog: none yet
    front.served.submit(front.client(), "a", "b")
    for watcher, watch_id in zip(watchers, ids, strict=True):
        seen: set[str] = set()
        while {"a", "b"} - seen:
            seen |= {event.name for event in watcher.receive(watch_id, expect=Events).events}
    assert len(front.served.agent.watches) == 2
    assert len({route.client for route in front.broker.routes.by_id.values()}) == 2  # one route each
    first = watchers[0]
    first.request(Unwatch(watch_id=ids[0]), expect=Ack)
    wait_until(lambda: len(front.served.agent.watches) == 1)
    assert ids[0] not in front.broker.routes.by_id  # its route ended with the Unwatch
    assert isinstance(watchers[1].receive(ids[1], expect=Events), Events)  # the other's heartbeats go on


def test_a_client_that_goes_has_its_watch_stopped_at_the_agent(front: Front) -> None:
    watcher = front.client()
    watch_id = watcher.send(Watch(since=0, heartbeat=0.1))
    watcher.receive(watch_id, expect=Events)
    assert len(front.served.agent.watches) == 1
    watcher.close()
    wait_until(lambda: not front.served.agent.watches)  # the broker's Unwatch, at the next heartbeat
    wait_until(lambda: len(front.broker.routes) == 0)


def test_requests_in_flight_fail_at_once_when_the_agent_is_lost_and_the_next_reconnects(
    front: Front, tmp_path: Path
) -> None:
    served = front.served
    client = front.client(timeout=30.0)
    client.hello("test")
    watch_id = client.send(Watch(since=0, heartbeat=5.0))
    client.receive(watch_id, expect=Events)
    served.agent.stopping = True
    assert served.thread is not None
    served.thread.join(DEADLINE)
    served.server.close()  # the agent's socket closes: the broker's connection ends
    started = time.monotonic()
    with pytest.raises(AgentUnavailable, match="lost its connection to the agent"):
        client.receive(watch_id, expect=Events)
    assert time.monotonic() - started < DEADLINE  # not after the client's 30 s
    assert not front.broker.connected and len(front.broker.routes) == 0
    # An agent started again behind the broker: the next request connects and greets it anew.
    served.agent.stopping = False
    served.server = AgentServer(served.agent, served.endpoint, lifetime=Lifetime(idle_exit=0))
    served.start()
    again = front.client()
    assert again.hello("test").protocol == 1
    assert again.request(Status(), expect=StatusReply).jobs == []


def test_a_request_while_the_agent_is_away_fails_at_once(front: Front) -> None:
    served = front.served
    front.client().hello("test")
    served.agent.stopping = True
    assert served.thread is not None
    served.thread.join(DEADLINE)
    served.server.close()
    wait_until(lambda: not front.broker.connected)
    client = front.client(timeout=30.0)
    started = time.monotonic()
    with pytest.raises(AgentUnavailable):  # connected again, to no one: refused at once
        client.hello("test")
    assert time.monotonic() - started < DEADLINE


def test_garbage_and_an_id_in_use_by_another_client_are_refused(front: Front) -> None:
    client = front.client()
    client.socket.send(b"\xc1 not msgpack")
    assert client.socket.poll(int(DEADLINE * 1000), zmq.POLLIN)
    assert decode_reply(client.socket.recv()).code == "bad_request"  # type: ignore[union-attr]
    watcher = front.client()
    watch_id = watcher.send(Watch(since=0, heartbeat=5.0))
    watcher.receive(watch_id, expect=Events)
    intruder = front.client()

    intruder.socket.send(encode(Status(id=watch_id)))
    with pytest.raises(AgentError, match="in use"):
        intruder.receive(watch_id, expect=StatusReply)


def test_routes_end_with_the_last_reply_of_each_kind() -> None:
    routes = Routes()
    routes.add(RequestHead(type="submit", id="s"), b"c")
    assert routes.reply(ReplyHead(type="submit_progress", id="s")) is not None and "s" in routes.by_id
    assert routes.reply(ReplyHead(type="submitted", id="s")) is not None and "s" not in routes.by_id
    routes.add(RequestHead(type="logs", id="l", follow=True), b"c")
    routes.reply(ReplyHead(type="log_chunk", id="l"))
    assert "l" in routes.by_id
    routes.reply(ReplyHead(type="log_chunk", id="l", eof=True))
    assert "l" not in routes.by_id
    routes.add(RequestHead(type="logs", id="once"), b"c")  # not following: one chunk
    routes.reply(ReplyHead(type="log_chunk", id="once"))
    assert "once" not in routes.by_id
    routes.add(RequestHead(type="watch", id="w", follow=False), b"c")
    routes.reply(ReplyHead(type="events", id="w"))
    assert "w" not in routes.by_id
    routes.add(RequestHead(type="watch", id="w"), b"c")
    routes.reply(ReplyHead(type="error", id="w"))
    assert "w" not in routes.by_id
    assert routes.reply(ReplyHead(type="ack", id="unknown")) is None


def test_an_agent_that_refuses_the_brokers_hello_answers_each_clients_itself(tmp_path: Path) -> None:
    """An agent of another protocol: every client gets the agent's own error, now and later."""
    agent = zmq.Context.instance().socket(zmq.ROUTER)
    agent.setsockopt(zmq.LINGER, 0)
    agent.bind(f"ipc://{tmp_path / 'other.sock'}")
    hellos: list[str] = []

    def answer() -> None:
        while agent.poll(int(DEADLINE * 1000)):
            peer, frame = agent.recv_multipart()
            request_id = msgspec.msgpack.decode(frame)["id"]
            hellos.append(request_id)
            agent.send_multipart([peer, encode(version_mismatch(request_id, peer=1, side="client"))])

    answering = threading.Thread(target=answer, daemon=True)
    answering.start()
    broker = Broker(tmp_path / "b.zmq", f"ipc://{tmp_path / 'other.sock'}", client_version="test")
    brokering = threading.Thread(target=broker.serve, daemon=True)
    brokering.start()
    try:
        for _ in range(2):
            client = AgentConnection(f"ipc://{tmp_path / 'b.zmq'}", timeout=DEADLINE)
            with client, pytest.raises(AgentError, match="speaks Milex protocol 1"):
                client.hello("test")
        assert len(hellos) == 3 and hellos[0].startswith("tunnel-")  # the broker's, then each client's
    finally:
        broker.stop.set()
        brokering.join(DEADLINE)
        answering.join(DEADLINE)
        agent.close()
