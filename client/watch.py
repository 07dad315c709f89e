"""Following an agent's events across dropped links: reconnect, resume from the last sequence number."""

from __future__ import annotations

import time
from collections.abc import Iterator

from milex.agents import connect
from milex.common.errors import MilexError
from milex.common.protocol import Event, Events, Watch
from milex.config import Machine
from milex.connection import AgentUnavailable

RECONNECT_DEADLINE = 120.0


def link_down(machine: Machine) -> str:
    """What the machine's tunnel last failed on, as advice; "" when it is local or its link is fine."""
    if not machine.is_remote:
        return ""
    from milex.tunnel_control import tunnel_status

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
    from the last event seen, so nothing is missed and nothing repeats.
    """
    last = since
    lost_at: float | None = None  # when the link was lost; None while it is up
    delay = 0.2
    while True:
        try:
            with connect(machine, timeout=heartbeat * 3) as connection:
                delay, lost_at = 0.2, None
                watch = Watch(since=last, heartbeat=heartbeat)
                for reply in connection.stream(watch, idle_timeout=heartbeat * 3, expect=Events):
                    for event in reply.events:
                        if event.seq > last:
                            last = event.seq
                            yield event
                    yield None
        except AgentUnavailable as error:
            if lost_at is None:  # the deadline counts from the loss, not from the connection
                lost_at = time.monotonic()
            if time.monotonic() - lost_at > RECONNECT_DEADLINE:
                raise MilexError(
                    f"lost the agent of {machine.name!r} and could not reconnect within "
                    f"{RECONNECT_DEADLINE:.0f} s: {link_down(machine) or error}"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
