"""Which local client each reply of the agent goes to, for the tunnel's broker (tunnel/broker.py).

The broker speaks to the agent over one connection, so the agent sees one peer; replies are routed
back by the id of the request they answer (ids are made unique per client by AgentConnection: its
pid and random bytes). A route lasts until its request's last reply: at once for most kinds, after
the `Submitted` that ends a submission's progress, and never for a following `Watch` or `Logs`
(until an `Unwatch`, a `LogChunk` at its end, an error, or the client's going).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

# Reply kinds that come before the last one of their request (the protocol's tags).
NOT_LAST = frozenset({"submit_progress"})
STREAMED = frozenset({"events", "log_chunk"})  # the replies of a following Watch or Logs


class RequestHead(msgspec.Struct):
    """What the broker reads of a request: enough to route its replies and to answer a Hello."""

    type: str = ""
    id: str = ""
    follow: bool | None = None  # Watch follows unless told not to; Logs only when told to
    watch_id: str = ""
    fresh: bool = False

    @property
    def follows(self) -> bool:
        return bool(self.follow) if self.follow is not None else self.type == "watch"


class ReplyHead(msgspec.Struct):
    """What the broker reads of a reply: its kind, the request it answers, a log's end."""

    type: str = ""
    id: str = ""
    eof: bool = False


_request_head = msgspec.msgpack.Decoder(RequestHead)
_reply_head = msgspec.msgpack.Decoder(ReplyHead)


def request_head(frame: bytes) -> RequestHead | None:
    """The head of a request frame; None when it is no msgpack map (the agent answers that itself)."""
    try:
        return _request_head.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def reply_head(frame: bytes) -> ReplyHead | None:
    try:
        return _reply_head.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


@dataclass
class Route:
    client: bytes
    follows: bool


class Routes:
    """The requests in flight through the broker, by id: whose they are and whether they stream."""

    def __init__(self) -> None:
        self.by_id: dict[str, Route] = {}

    def __len__(self) -> int:
        return len(self.by_id)

    def taken(self, head: RequestHead, client: bytes) -> bool:
        """Whether `head`'s id is in flight for another client (the request is then refused)."""
        route = self.by_id.get(head.id)
        return route is not None and route.client != client

    def add(self, head: RequestHead, client: bytes) -> None:
        """Route the replies to `head` to `client`; an Unwatch ends the route of the stream it stops."""
        if head.type == "unwatch" and self.by_id.get(head.watch_id, Route(client, False)).client == client:
            self.by_id.pop(head.watch_id, None)
        self.by_id[head.id] = Route(client, head.follows)

    def reply(self, head: ReplyHead) -> Route | None:
        """The route of `head` (None: no client waits for it), ended when it is its request's last."""
        route = self.by_id.get(head.id)
        if route is None:
            return None
        streaming = route.follows and head.type in STREAMED and not head.eof
        if head.type not in NOT_LAST and not streaming:
            del self.by_id[head.id]
        return route

    def drop(self, request_id: str) -> Route | None:
        """Forget a request whose client has gone; its route, if it had one."""
        return self.by_id.pop(request_id, None)

    def clear(self) -> dict[str, Route]:
        """Every route, forgotten: the connection to the agent was lost."""
        routes, self.by_id = self.by_id, {}
        return routes
