"""The tunnel's broker: one ZeroMQ connection to the agent, kept open, shared by every local client.

A new process that connected through the tunnel's spliced socket paid, each time, an SSH channel
and ZeroMQ's handshake over the link (three round trips), and a Hello (a fourth) before its request.
The broker holds one connection to the agent, through one channel of the tunnel's session (the
spliced socket: the SSH side is unchanged, relay mode and the agent's restart included), greeted
once per agent start. Local clients connect to its ROUTER socket (`NAME.zmq`): their Hello is
answered here from the agent's own HelloReply, and each request is passed on as is, its replies
routed back by request id (tunnel/routes.py), so that a request costs one round trip.

The connection is made when a client first needs it, not remade by itself once it has reached the
agent: an agent that left (idle) is started again by the next request, not by the broker. A
connection that ends before ZeroMQ's handshake (a relay that found no agent, which the tunnel then
starts) is made again once by ZeroMQ, with the requests it holds: none of them reached the agent.
When it is lost after that (the link, the agent), every request in flight is answered at once by an
`unavailable` error, which the client raises as AgentUnavailable (a submission is retried under the
same keys): nothing waits for a reply that cannot come; so are they when the tunnel stops (with the
prompt that stopped it, if one did). A client that goes has its streams stopped at the agent (an
Unwatch), as the agent stops those of a client it can no longer reach.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import zmq

from milex.machine.tunnel.routes import RequestHead, Route, Routes, reply_head, request_head
from milex_common.protocol import (
    Error,
    Hello,
    HelloReply,
    Message,
    ProtocolError,
    Unwatch,
    decode_reply,
    decode_request,
    encode,
)

log = logging.getLogger("milex.machine.tunnel.broker")

TICK = 0.5  # the longest the loop sleeps before it looks whether it is asked to stop
# The upstream connection's end, as its monitor reports it. A connection that ends before its
# handshake reports HANDSHAKE_FAILED_NO_DETAIL then DISCONNECTED: the latter is the end.
LOST = {
    zmq.EVENT_DISCONNECTED,
    zmq.EVENT_CLOSED,
    zmq.EVENT_MONITOR_STOPPED,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
    zmq.EVENT_HANDSHAKE_FAILED_AUTH,
}


class Broker:
    """Serves local clients on `local` (ipc) through one connection to `upstream`, the agent's end."""

    def __init__(
        self,
        local: Path,
        upstream: str,
        *,
        client_version: str,
        on_request: Callable[[], None] = lambda: None,
        settled: Callable[[], bool] = lambda: True,
        why_lost: Callable[[], str] = lambda: "",
    ) -> None:
        """`on_request` runs as each request is passed on (the tunnel checks its link meanwhile).
        Once the connection is lost, the requests in flight are answered when `settled` (no check of
        the link under way: it may be what dropped the connection), with `why_lost`'s message (the
        link's failure, or "" for a generic one)."""
        self.local, self.upstream = local, upstream
        self.client_version, self.on_request = client_version, on_request
        self.settled, self.why_lost = settled, why_lost
        self.front: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
        self.front.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a client gone: its streams are stopped
        self.front.setsockopt(zmq.LINGER, 0)
        local.unlink(missing_ok=True)  # a dead service's socket: the tunnel's lock is ours
        old = os.umask(0o077)  # born closed to others, as the tunnel's other sockets
        try:
            self.front.bind(f"ipc://{local}")
        finally:
            os.umask(old)
        self.back: zmq.Socket[bytes] | None = None
        self.monitor: zmq.Socket[bytes] | None = None
        self.hello: HelloReply | None = None  # the agent's answer to our Hello on this connection
        self.handshaken = False  # whether this connection reached the agent (ZeroMQ's handshake)
        self.retried = False  # whether it ended once before its handshake, and was made again
        self.hello_id = ""  # our Hello's id while its answer is awaited
        self.held: list[tuple[bytes, RequestHead, bytes]] = []  # clients' Hellos awaiting ours
        self.orphans: list[tuple[bytes, str]] = []  # (client, request id) of a lost connection
        self.routes = Routes()
        self._ids = itertools.count(1)
        self.last_activity = time.monotonic()
        self.stop = threading.Event()

    @property
    def connected(self) -> bool:
        """Whether the broker holds a connection to the upstream end (one spliced connection)."""
        return self.back is not None

    @property
    def busy(self) -> bool:
        return bool(self.routes) or bool(self.held) or bool(self.orphans)

    def serve(self) -> None:
        """Pass requests and replies on until `stop` is set; then answer every request in flight
        (the tunnel stops: `why_lost` may say why) and close every socket."""
        try:
            while not self.stop.is_set():
                try:
                    self._turn()
                except Exception:  # the tunnel's clients never lose their broker to one message
                    log.exception("broker: a turn failed")
                    time.sleep(TICK)
        finally:
            self._orphan_in_flight()
            self._answer_orphans()
            self.front.close(linger=1000)  # those answers are sent by the context's end (service.run)
            self.local.unlink(missing_ok=True)

    def _turn(self) -> None:
        """Wait up to TICK for a message, and pass on all that came."""
        poller = zmq.Poller()
        for socket in (self.front, self.back, self.monitor):
            if socket is not None:
                poller.register(socket, zmq.POLLIN)
        ready = dict(poller.poll(int(TICK * 1000)))
        if self.back is not None and self.back in ready:  # replies that came before a loss first
            self._from_agent()
        if self.monitor is not None and self.monitor in ready:
            self._watch_upstream()
        if self.front in ready:
            self._from_clients()
        if self.orphans and self.settled():
            self._answer_orphans()

    # ---- clients -> agent

    def _from_clients(self) -> None:
        while True:
            try:
                frames = self.front.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.last_activity = time.monotonic()
            self._request(frames[0], frames[-1])

    def _request(self, client: bytes, frame: bytes) -> None:
        head = request_head(frame)
        if head is None:  # not a message at all: the codec's own answer, with the id it could read
            try:
                decode_request(frame)
            except ProtocolError as error:
                self._to_client(client, encode(error.reply))
            return
        if self.routes.taken(head, client):
            refused = Error(id=head.id, code="bad_request", message=f"request id {head.id!r} is in use")
            self._to_client(client, encode(refused))
            return
        self._connect_upstream()
        if head.type == "hello" and not head.fresh and (self.hello is not None or self.hello_id):
            if self.hello is None:  # ours is on its way
                self.held.append((client, head, frame))
            else:
                self._to_client(client, encode(msgspec.structs.replace(self.hello, id=head.id)))
            return
        self._pass_on(client, head, frame)  # an agent that refused our Hello answers each itself

    def _pass_on(self, client: bytes, head: RequestHead, frame: bytes) -> None:
        """Send the request on, its replies routed to `client`; never blocking the loop: a connection
        whose queue is full (a link that stalled) refuses it at once."""
        assert self.back is not None  # _connect_upstream made it
        try:
            self.back.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            message = "the tunnel's connection to the agent is stalled: try again in a moment."
            self._to_client(client, encode(_unavailable(head.id, message)))
            return
        self.routes.add(head, client)
        self.on_request()

    # ---- agent -> clients

    def _from_agent(self) -> None:
        while self.back is not None:
            try:
                frame = self.back.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            head = reply_head(frame)
            if head is None:
                log.warning("the agent sent a frame that is not a message: dropped")
            elif head.id == self.hello_id:
                self._greeted(frame)
            elif (route := self.routes.reply(head)) is not None:
                self.last_activity = time.monotonic()
                if not self._to_client(route.client, frame):
                    self._client_gone(head.id, route)

    def _greeted(self, frame: bytes) -> None:
        """Our Hello answered: clients' Hellos are answered from it; an agent that refused it (another
        protocol) answers each of theirs itself, so that they get its own error."""
        self.hello_id = ""
        try:
            reply = decode_reply(frame)
        except ProtocolError:
            reply = None
        held, self.held = self.held, []
        if isinstance(reply, HelloReply):
            self.hello = reply
            for client, _, hello in held:
                self._request(client, hello)
            return
        for client, head, hello in held:
            self._pass_on(client, head, hello)

    def _to_client(self, client: bytes, frame: bytes) -> bool:
        """Send `frame` to `client`; False when it is gone."""
        try:
            self.front.send_multipart([client, frame], zmq.NOBLOCK)
        except zmq.ZMQError:
            return False
        return True

    def _client_gone(self, request_id: str, route: Route) -> None:
        """The client of `request_id` went: its replies are dropped, and a stream it followed stopped."""
        self.routes.drop(request_id)
        if route.follows and self.back is not None:
            with contextlib.suppress(zmq.Again):  # a stalled connection: it goes, and the stream with it
                self.back.send(encode(Unwatch(id=self._own_id(), watch_id=request_id)), zmq.NOBLOCK)

    # ---- the upstream connection

    def _own_id(self) -> str:
        return f"tunnel-{os.getpid():x}-{next(self._ids)}"

    def _connect_upstream(self) -> None:
        """Connect to the agent's end unless connected, and greet it: one Hello per connection."""
        if self.back is not None:
            return
        back: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        back.setsockopt(zmq.LINGER, 0)
        self.monitor = back.get_monitor_socket(zmq.EVENT_ALL)
        back.connect(self.upstream)  # ZeroMQ connects again by itself: see _watch_upstream
        self.back, self.hello = back, None
        self.handshaken = self.retried = False
        hello = Hello(id=self._own_id(), client_version=self.client_version)
        self.hello_id = hello.id
        back.send(encode(hello), zmq.NOBLOCK)  # the first message of an empty queue

    def _watch_upstream(self) -> None:
        assert self.monitor is not None
        from zmq.utils.monitor import recv_monitor_message  # only where a monitor runs

        while self.monitor is not None:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.handshaken = True
            elif kind == zmq.EVENT_DISCONNECTED and not self.handshaken and not self.retried:
                # Nothing reached the agent (no data passes before the handshake): ZeroMQ connects
                # again in a moment with what it holds, once, where the tunnel has meanwhile started
                # an agent that a relay found gone.
                log.info("connection to the agent ended before its handshake: connecting again")
                self.retried = True
            elif kind in LOST:
                self._lost()

    def _lost(self) -> None:
        """The connection to the agent ended: close it; every request in flight is answered as soon
        as the tunnel knows why (`settled`), not after the client's timeout."""
        if in_flight := len(self.routes) + len(self.held):
            log.warning("connection to the agent lost: %d request(s) in flight", in_flight)
        else:
            log.info("connection to the agent ended (none in flight)")
        self._orphan_in_flight()

    def _orphan_in_flight(self) -> None:
        """Close the connection; the requests in flight on it become orphans, to be answered."""
        self._close_upstream()
        self.orphans += [(route.client, request_id) for request_id, route in self.routes.clear().items()]
        self.orphans += [(client, head.id) for client, head, _ in self.held]
        self.held = []

    def _answer_orphans(self) -> None:
        message = self.why_lost() or (
            "the tunnel lost its connection to the agent before the answer came; the next command "
            "connects again (`milex tunnel status` shows the link)."
        )
        orphans, self.orphans = self.orphans, []
        for client, request_id in orphans:
            self._to_client(client, encode(_unavailable(request_id, message)))

    def _close_upstream(self) -> None:
        if self.back is not None:
            with contextlib.suppress(zmq.ZMQError):
                self.back.disable_monitor()
            self.back.close(linger=0)
        if self.monitor is not None:
            self.monitor.close(linger=0)
        self.back = self.monitor = None
        self.hello, self.hello_id = None, ""


def _unavailable(request_id: str, message: str) -> Message:
    return Error(id=request_id, code="unavailable", message=message)
