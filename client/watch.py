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


def follow_events(machine: Machine, since: int, *, heartbeat: float = 5.0) -> Iterator[Event | None]:
    """Each event after `since`, in order, exactly once; None at each heartbeat (nothing new).

    When the agent or the link to it goes quiet for three heartbeats, the watch is re-opened
    from the last event seen, so nothing is missed and nothing repeats.
    """
    last = since
    delay, gave_up_at = 0.2, time.monotonic() + RECONNECT_DEADLINE
    while True:
        try:
            with connect(machine, timeout=heartbeat * 3) as connection:
                delay, gave_up_at = 0.2, time.monotonic() + RECONNECT_DEADLINE
                watch = Watch(since=last, heartbeat=heartbeat)
                for reply in connection.stream(watch, idle_timeout=heartbeat * 3, expect=Events):
                    for event in reply.events:
                        if event.seq > last:
                            last = event.seq
                            yield event
                    yield None
        except AgentUnavailable as error:
            if time.monotonic() > gave_up_at:
                raise MilexError(
                    f"lost the agent of {machine.name!r} and could not reconnect: {error}"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
