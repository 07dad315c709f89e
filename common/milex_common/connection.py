"""A connection to an agent: a ZeroMQ DEALER, request ids, timeouts, and streamed replies."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import zmq

from milex_common.errors import MilexError
from milex_common.protocol import (
    PROTOCOL_VERSION,
    Error,
    Hello,
    HelloReply,
    Message,
    ProtocolError,
    Reply,
    decode_reply,
    encode,
)

DEFAULT_TIMEOUT = 30.0
GONE_CHECK = 0.5  # while awaiting a reply, how often `gone` is asked
R = TypeVar("R", bound=Reply)


class AgentUnavailable(MilexError):
    """The agent did not answer in time: it is down, or the link to it is."""


class UnexpectedReply(MilexError):
    """The agent answered with a reply of another kind than the request calls for."""


class AgentError(MilexError):
    """The agent answered with an error reply."""

    def __init__(self, error: Error) -> None:
        super().__init__(error.message)
        self.error = error


class AgentConnection:
    """Requests to one agent endpoint; replies to other requests are dropped, as the protocol says."""

    def __init__(
        self, endpoint: str, *, timeout: float = DEFAULT_TIMEOUT, gone: Callable[[], str] | None = None
    ) -> None:
        """`gone`, asked while a reply is awaited, says why the endpoint went for good ("" while it has
        not): a wait then ends at once, not after `timeout`."""
        self.endpoint = endpoint
        self.timeout = timeout
        self.gone = gone
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}-{os.urandom(3).hex()}"
        self.socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self.features: frozenset[str] = frozenset()  # what the agent named in its HelloReply
        self.agent_host = ""  # the host the agent runs on, as its HelloReply names it

    def close(self) -> None:
        self.socket.close(linger=0)

    def __enter__(self) -> AgentConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, request: Message) -> str:
        """Send `request` with a fresh id; return the id its replies will carry."""
        request.id = f"{self._prefix}-{next(self._ids)}"
        self.socket.send(encode(request))
        return request.id

    def receive(
        self, request_id: str, timeout: float | None = None, *, expect: type[R] | tuple[type[R], ...]
    ) -> R:
        """The next reply to `request_id`, of the kind `expect` (or one of them); AgentUnavailable after
        `timeout` seconds of silence, AgentError for an error reply, UnexpectedReply for any other kind."""
        timeout = self.timeout if timeout is None else timeout
        while True:
            if not self._poll(timeout):
                raise AgentUnavailable(
                    f"no answer from the agent at {self.endpoint} within {timeout:.0f} s; "
                    "check it with `milex agent status` (and `milex tunnel status` for a remote machine)."
                )
            try:
                reply = decode_reply(self.socket.recv())
            except ProtocolError as error:
                raise AgentError(error.reply) from None
            if reply.id == request_id:
                if isinstance(reply, Error) and reply.code == "unavailable":  # said by the tunnel's broker
                    raise AgentUnavailable(reply.message)
                if isinstance(reply, Error):
                    raise AgentError(reply)
                if not isinstance(reply, expect):
                    raise UnexpectedReply(
                        f"the agent at {self.endpoint} answered a {type(reply).__name__} where a "
                        f"{_names(expect)} was due; are client and agent the same Milex version "
                        "(`milex agent status`)?"
                    )
                return reply

    def _poll(self, timeout: float) -> bool:
        """Whether a reply came within `timeout` s; AgentUnavailable as soon as `gone` says why none will."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            step = left if self.gone is None else min(left, GONE_CHECK)
            if self.socket.poll(max(0, int(step * 1000)), zmq.POLLIN):
                return True
            if self.gone is not None and (reason := self.gone()):
                raise AgentUnavailable(reason)
            if left <= step:
                return False

    def request(self, request: Message, timeout: float | None = None, *, expect: type[R]) -> R:
        """Send `request` and return its reply, which must be of the kind `expect`."""
        return self.receive(self.send(request), timeout, expect=expect)

    def stream(self, request: Message, idle_timeout: float | None = None, *, expect: type[R]) -> Iterator[R]:
        """Every reply to `request` (each of the kind `expect`) as it arrives, until the caller stops."""
        request_id = self.send(request)
        while True:
            yield self.receive(request_id, idle_timeout, expect=expect)

    def hello(self, client_version: str, *, fresh: bool = False) -> HelloReply:
        """Check that the agent speaks our protocol; AgentError with the fix when it does not. Through
        the tunnel's broker, the answer is the one the agent gave it, unless `fresh` (see Hello)."""
        reply = self.request(Hello(client_version=client_version, fresh=fresh), expect=HelloReply)
        if reply.protocol != PROTOCOL_VERSION:
            raise MilexError(f"the agent speaks protocol {reply.protocol}, this client {PROTOCOL_VERSION}.")
        self.features = frozenset(reply.features)
        self.agent_host = reply.host
        return reply


def _names(kinds: type | tuple[type, ...]) -> str:
    return " or ".join(kind.__name__ for kind in (kinds if isinstance(kinds, tuple) else (kinds,)))
