"""Following an agent across dropped links: events from the last sequence number, logs from their offset."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import msgspec

from milex.config.file import Machine
from milex.machine.endpoint import greeted
from milex.machine.ssh.errors import LinkDown
from milex.machine.tunnel.control import tunnel_status
from milex_common.connection import AgentConnection, AgentUnavailable
from milex_common.errors import MilexError
from milex_common.protocol import LOG_HEARTBEAT, TASK_EVENTS, Event, Events, HelloReply, LogChunk, Logs, Watch

# How long a watch tries to get its link back: longer than a closed lid or a change of network takes.
RECONNECT_DEADLINE = 300.0
# An agent without log heartbeats is silent while a log is: wait for it as long as zmq_poll can
# (an int of milliseconds: 24 days), then reconnect and resume.
NO_IDLE_TIMEOUT = 24 * 24 * 3600.0
T = TypeVar("T")
Follow = Callable[[AgentConnection, HelloReply], Iterator[T]]


def link_down(machine: Machine) -> str:
    """What the machine's tunnel last failed on, as advice; "" when it is local or its link is fine."""
    if not machine.is_remote:
        return ""
    status = tunnel_status(machine.name)
    if not status.link_error:
        return ""
    return (
        f"the link to {machine.name} is down ({status.link_error}); "
        f"check it with `milex tunnel status --machine {machine.name}`."
    )


def follow_events(machine: Machine, since: int, *, heartbeat: float = 5.0) -> Iterator[Event | None]:
    """Each event after `since`, in order, exactly once; None at each heartbeat (nothing new).

    When the agent or the link to it goes quiet for three heartbeats, the watch is re-opened
    from the last event seen, so nothing is missed and nothing repeats. An agent that has them sends
    the events of arrays' tasks too (each carries its task: `JobStatus.take` merges it in).
    """
    last = since

    def follow(connection: AgentConnection, hello: HelloReply) -> Iterator[Event | None]:
        nonlocal last
        watch = Watch(since=last, heartbeat=heartbeat, tasks=TASK_EVENTS in hello.features)
        for reply in connection.stream(watch, idle_timeout=heartbeat * 3, expect=Events):
            for event in reply.events:
                if event.seq > last:
                    last = event.seq
                    yield event
            yield None

    return reconnecting(machine, follow, timeout=heartbeat * 3)


def follow_log(machine: Machine, request: Logs) -> Iterator[bytes]:
    """The bytes of the log `request` names as they come, until the job ends.

    When the agent or the link goes quiet for three heartbeats, the follow is re-opened from
    the last offset received, so nothing is missed and nothing repeats. An agent without
    heartbeats is waited for however long the log stays quiet.
    """
    offset = request.offset

    def follow(connection: AgentConnection, hello: HelloReply) -> Iterator[bytes]:
        nonlocal offset
        idle = request.heartbeat * 3 if LOG_HEARTBEAT in hello.features else NO_IDLE_TIMEOUT
        resumed = msgspec.structs.replace(request, offset=offset, follow=True)
        for chunk in connection.stream(resumed, idle_timeout=idle, expect=LogChunk):
            if chunk.offset == offset and chunk.data:
                offset += len(chunk.data)
                yield chunk.data
            if chunk.eof:
                return

    return reconnecting(machine, follow, timeout=max(request.heartbeat * 3, 10.0))


def reconnecting(machine: Machine, follow: Follow[T], *, timeout: float) -> Iterator[T]:
    """What `follow` yields on a connection to `machine`'s agent, until it returns; a link that
    drops (AgentUnavailable, LinkDown) is reopened with back-off and `follow` called again to resume, for up
    to RECONNECT_DEADLINE seconds from the loss of the link."""
    lost_at: float | None = None  # when the link was lost; None while it is up
    delay = 0.2
    while True:
        try:
            connection, hello = greeted(machine, timeout=timeout)
            with connection:
                delay, lost_at = 0.2, None
                yield from follow(connection, hello)
                return
        except (AgentUnavailable, LinkDown) as error:
            if lost_at is None:  # the deadline counts from the loss, not from the connection
                lost_at = time.monotonic()
            if time.monotonic() - lost_at > RECONNECT_DEADLINE:
                raise MilexError(
                    f"lost the agent of {machine.name!r} and could not reconnect within "
                    f"{RECONNECT_DEADLINE:.0f} s: {link_down(machine) or error}"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
