"""When the agent leaves: idle for its idle exit with no job, client or request; its directory gone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from milex_agent.journal import Journal
from milex_agent.lifetime import Lifetime
from milex_agent.server import AgentServer
from milex_common.connection import AgentConnection
from milex_common.model import JobState, MachineSettings
from milex_common.protocol import Events, HelloReply, Submitted, Watch
from tests.unit.agent_fakes import (
    FakeClock,
    FakeScheduler,
    chain_bundle,
    make_agent,
    submit_request,
    wait_until,
)

DEADLINE = 3.0


def never() -> bool:
    return False


def always() -> bool:
    return True


# ---- Lifetime alone ------------------------------------------------------------------------------


def test_idle_for_the_idle_exit_is_a_reason_to_stop_and_being_busy_resets_it(tmp_path):
    clock = FakeClock()
    lifetime = Lifetime(idle_exit=60.0, check_every=5.0, clock=clock)
    clock.advance(59.0)
    assert lifetime.reason_to_stop(never) is None
    lifetime.busy()
    clock.advance(59.0)
    assert lifetime.reason_to_stop(never) is None
    clock.advance(1.0)
    reason = lifetime.reason_to_stop(never)
    assert reason is not None and "idle for 60 s" in reason and "--idle-exit 60" in reason


def test_an_unfinished_job_keeps_the_agent_and_the_idle_time_counts_from_the_last_check_that_saw_it(
    tmp_path,
):
    clock = FakeClock()
    lifetime = Lifetime(idle_exit=60.0, check_every=5.0, clock=clock)
    for _ in range(100):  # a job running for 1000 s
        clock.advance(10.0)
        assert lifetime.reason_to_stop(always) is None
    clock.advance(5.0)
    assert lifetime.reason_to_stop(never) is None  # it has ended
    clock.advance(54.0)
    assert lifetime.reason_to_stop(never) is None
    clock.advance(1.0)
    assert lifetime.reason_to_stop(never) is not None


def test_an_idle_exit_of_zero_never_stops(tmp_path):
    clock = FakeClock()
    lifetime = Lifetime(idle_exit=0, home=[tmp_path], clock=clock)
    clock.advance(10.0**7)
    assert lifetime.reason_to_stop(never) is None


def test_a_removed_directory_is_a_reason_to_stop_seen_at_the_next_check(tmp_path):
    clock = FakeClock()
    home = tmp_path / "agent"
    home.mkdir()
    lifetime = Lifetime(idle_exit=0, home=[home], check_every=5.0, clock=clock)
    home.rmdir()
    clock.advance(4.0)
    assert lifetime.reason_to_stop(never) is None  # a stat every 5 s, not at every turn of the loop
    clock.advance(1.0)
    reason = lifetime.reason_to_stop(never)
    assert reason is not None and f"{home} was removed" in reason


def test_a_journal_replaced_by_another_file_is_a_reason_to_stop(tmp_path):
    clock = FakeClock()
    journal = tmp_path / "journal.sqlite"
    journal.write_bytes(b"ours")
    lifetime = Lifetime(idle_exit=0, home=[tmp_path, journal], check_every=5.0, clock=clock)
    clock.advance(5.0)
    assert lifetime.reason_to_stop(never) is None
    replacement = tmp_path / "new.sqlite"
    replacement.write_bytes(b"theirs")
    replacement.replace(journal)
    clock.advance(5.0)
    reason = lifetime.reason_to_stop(never)
    assert reason is not None and f"{journal} was replaced" in reason


# ---- the server's loop ---------------------------------------------------------------------------


class Idling:
    """An AgentServer with a Lifetime on a fake clock, serving in a thread."""

    def __init__(self, tmp_path: Path) -> None:
        self.clock = FakeClock()
        self.journal = Journal(tmp_path / "journal.sqlite")
        self.fake = FakeScheduler()
        self.agent = make_agent(self.journal, self.fake, interval=0.02, max_interval=0.1)
        self.endpoint = f"ipc://{tmp_path / 'agent.sock'}"
        lifetime = Lifetime(idle_exit=60.0, check_every=1.0, clock=self.clock)
        self.server = AgentServer(self.agent, self.endpoint, lifetime=lifetime)
        self.settings = MachineSettings(name="cluster", path=str(tmp_path / "milex"))
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.connections: list[AgentConnection] = []

    def connect(self) -> AgentConnection:
        self.connections.append(AgentConnection(self.endpoint, timeout=DEADLINE))
        return self.connections[-1]

    def close(self) -> None:
        self.agent.stopping = True
        self.thread.join(DEADLINE)
        for connection in self.connections:
            connection.close()
        self.server.close()
        self.journal.close()


@pytest.fixture
def idling(tmp_path: Path) -> Iterator[Idling]:
    idling = Idling(tmp_path)
    idling.thread.start()
    try:
        yield idling
    finally:
        idling.close()


def test_the_server_stops_by_itself_once_idle_for_its_idle_exit(idling):
    assert isinstance(idling.connect().hello("0.1.0"), HelloReply)
    idling.clock.advance(59.0)
    assert isinstance(idling.connect().hello("0.1.0"), HelloReply)  # a request: idle from now on
    idling.clock.advance(59.0)
    assert isinstance(idling.connect().hello("0.1.0"), HelloReply)
    idling.clock.advance(60.0)
    idling.thread.join(DEADLINE)
    assert not idling.thread.is_alive() and idling.agent.stopping


def test_a_connected_watcher_keeps_the_server(idling):
    connection = idling.connect()
    stream = connection.stream(Watch(since=0, heartbeat=0.05), idle_timeout=DEADLINE, expect=Events)
    next(stream)
    idling.clock.advance(61.0)
    next(stream), next(stream)  # heartbeats: the loop turned with the clock past the idle exit
    assert idling.thread.is_alive()
    connection.close()  # the watcher goes: the next heartbeat finds it gone, then idle time counts
    wait_until(lambda: not idling.agent.watches)
    idling.clock.advance(61.0)
    idling.thread.join(DEADLINE)
    assert not idling.thread.is_alive()


def test_an_unfinished_job_keeps_the_server_until_it_ends(idling):
    reply = idling.connect().request(
        submit_request(chain_bundle("exp", "a"), idling.settings), expect=Submitted
    )
    job = reply.jobs[0]
    idling.fake.set_state(job.job_id, JobState.RUNNING)
    for turn in range(1, 4):
        idling.clock.advance(61.0)
        polls = idling.agent.poller.queries
        wait_until(lambda: idling.agent.poller.queries >= polls + 2)  # noqa: B023 (the loop turned since)
        assert idling.thread.is_alive(), f"stopped after {turn * 61} s with a running job"
    idling.fake.set_state(job.job_id, JobState.COMPLETED, 0)
    wait_until(lambda: idling.journal.find(job.key).state is JobState.COMPLETED)
    idling.clock.advance(61.0)
    idling.thread.join(DEADLINE)
    assert not idling.thread.is_alive()
