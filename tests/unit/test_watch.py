"""Following events across lost links: when a watch gives up, and what it says then."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from milex import watch
from milex.config.file import Machine
from milex.machine.ssh.errors import LinkDown
from milex_common.connection import AgentUnavailable
from milex_common.errors import MilexError
from milex_common.model import JobState
from milex_common.protocol import Event, Events, HelloReply

MACHINE = Machine(name="m", path="/p", env_command="", slurm_account="")


class Clock:
    """Time that passes only when the watch sleeps or the fake agent says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def event(seq: int, state: JobState) -> Event:
    return Event(seq=seq, key=f"k{seq}", bundle="b", name="job", job_id="1", state=state)


class Agent:
    """Each connection streams its script of replies (None: an hour of heartbeats), then loses the link;
    connections past the scripts fail at once."""

    def __init__(self, clock: Clock, scripts: list[list[Events | None]]) -> None:
        self.clock, self.scripts = clock, scripts

    def greeted(self, machine: Machine, *, timeout: float) -> tuple[Agent.Connection, HelloReply]:
        if not self.scripts:
            raise AgentUnavailable("no answer")
        return self.Connection(self.clock, self.scripts.pop(0)), HelloReply(agent_version="0")

    class Connection:
        def __init__(self, clock: Clock, script: list[Events | None]) -> None:
            self.clock, self.script = clock, script

        def __enter__(self) -> Agent.Connection:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def stream(self, request: object, *, idle_timeout: float, expect: type) -> Iterator[Events]:
            for reply in self.script:
                if reply is None:
                    self.clock.now += 3600
                    reply = Events()
                yield reply
            raise AgentUnavailable("the link is gone")


def sequence_until_finished() -> list[int]:
    """The sequence numbers `follow_events` yields for MACHINE, until a job finishes."""
    seen = []
    for followed in watch.follow_events(MACHINE, 0):
        if followed is not None:
            seen.append(followed.seq)
            if followed.state.finished:
                break
    return seen


def test_a_watch_that_ran_longer_than_the_deadline_still_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    running, completed = event(1, JobState.RUNNING), event(2, JobState.COMPLETED)
    # An hour of watching, the link lost, then a new connection that repeats the last event seen.
    agent = Agent(clock, [[Events(events=[running]), None], [Events(events=[running, completed])]])
    monkeypatch.setattr(watch, "time", clock)
    monkeypatch.setattr(watch, "greeted", agent.greeted)
    seen = sequence_until_finished()
    assert seen == [1, 2]


def test_a_watch_gives_up_a_deadline_after_the_link_was_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    agent = Agent(clock, [[None]])
    monkeypatch.setattr(watch, "time", clock)
    monkeypatch.setattr(watch, "greeted", agent.greeted)
    events = watch.follow_events(MACHINE, 0)
    assert next(events) is None
    lost_at = clock.now
    with pytest.raises(
        MilexError, match=f"could not reconnect within {watch.RECONNECT_DEADLINE:.0f} s: no answer"
    ):
        next(events)
    assert watch.RECONNECT_DEADLINE <= clock.now - lost_at <= watch.RECONNECT_DEADLINE + 5


def test_a_watch_rides_out_two_minutes_of_link_down_and_misses_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A closed lid: the reconnections fail at once (LinkDown) for two minutes, then the link is back."""
    clock = Clock()
    running, completed = event(1, JobState.RUNNING), event(2, JobState.COMPLETED)
    agent = Agent(clock, [[Events(events=[running])], [Events(events=[running, completed])]])
    back_at = clock.now + 120

    def greeted(machine: Machine, *, timeout: float) -> tuple[Agent.Connection, HelloReply]:
        if len(agent.scripts) == 1 and clock.now < back_at:  # lost after the first connection
            raise LinkDown("the link to m is down")
        return agent.greeted(machine, timeout=timeout)

    monkeypatch.setattr(watch, "time", clock)
    monkeypatch.setattr(watch, "greeted", greeted)
    seen = sequence_until_finished()
    assert seen == [1, 2] and back_at <= clock.now < back_at + 10
