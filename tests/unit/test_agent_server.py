"""The agent's ZeroMQ loop over a real ipc socket, driven by the real client connection."""

from __future__ import annotations

import itertools
import threading
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from milex import watch
from milex.config.file import Machine
from milex_agent.handlers import SUBMITTING
from milex_agent.scheduler.base import SubmitCall
from milex_common.connection import AgentConnection, AgentError, AgentUnavailable
from milex_common.errors import SchedulerError
from milex_common.model import JobState
from milex_common.protocol import (
    LOG_HEARTBEAT,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    Ack,
    Cancel,
    Cancelled,
    Error,
    ErrorCode,
    Event,
    Events,
    Hello,
    HelloReply,
    LogChunk,
    Logs,
    Reply,
    Shutdown,
    Status,
    StatusReply,
    Submitted,
    Unwatch,
    Watch,
)
from tests.unit.agent_fakes import FakeScheduler, chain_bundle, submit_request, wait_until
from tests.unit.served import DEADLINE, Served

LOCAL = Machine(name="local", path="/unused", env_command="", slurm_account="")
RUNNING, COMPLETED = JobState.RUNNING, JobState.COMPLETED


def collect_events(stream: Iterator[Reply], until: Callable[[list[Event]], bool]) -> list[Events]:
    """Replies of a watch stream until the events received so far satisfy `until`."""
    replies: list[Events] = []
    seen: list[Event] = []
    while not until(seen):
        reply = next(stream)
        assert isinstance(reply, Events)
        replies.append(reply)
        seen += reply.events
    return replies


def states_of(replies: list[Events]) -> list[tuple[str, JobState]]:
    return [(event.name, event.state) for reply in replies for event in reply.events]


# ---- requests and replies ------------------------------------------------------------------------


def test_hello(running):
    reply = running.connect().hello("0.1.0")
    assert isinstance(reply, HelloReply)
    assert (reply.agent_version, reply.protocol, reply.last_seq) == ("9.9.9-test", PROTOCOL_VERSION, 0)


def test_submit_status_and_shutdown(running):
    connection = running.connect()
    reply = running.submit(connection)
    assert [(job.name, job.job_id) for job in reply.jobs] == [("a", "1000"), ("b", "1001"), ("c", "1002")]
    status = connection.request(Status(bundle="exp"), expect=StatusReply)
    assert isinstance(status, StatusReply) and len(status.jobs) == 3
    assert connection.request(Shutdown(), expect=Ack) == Ack(id=connection._prefix + "-3")
    running.thread.join(DEADLINE)
    assert not running.thread.is_alive()


def test_garbage_gets_a_bad_request_error_and_the_server_keeps_serving(running):
    connection = running.connect()
    for frame in (b"\xc1 not msgpack", msgspec.msgpack.encode([1, 2]), b""):
        reply = running.raw(connection, frame)
        assert isinstance(reply, Error) and reply.code == "bad_request", reply
    assert isinstance(connection.hello("0.1.0"), HelloReply)


def test_an_invalid_request_is_a_bad_request_naming_the_field(running):
    connection = running.connect()
    reply = running.raw(
        connection, msgspec.msgpack.encode({"type": "logs", "v": PROTOCOL_VERSION, "id": "x", "job_id": 7})
    )
    assert isinstance(reply, Error) and (reply.code, reply.id) == ("bad_request", "x")
    assert "$.job_id" in reply.message


def test_a_request_of_another_version_gets_a_version_mismatch(running):
    connection = running.connect()
    reply = running.raw(
        connection, msgspec.msgpack.encode({"type": "hello", "v": PROTOCOL_VERSION + 1, "id": "x"})
    )
    assert isinstance(reply, Error) and (reply.code, reply.id) == ("version_mismatch", "x")
    assert "the client is newer" in reply.message


def test_a_frame_over_the_limit_gets_too_large_and_the_server_keeps_serving(running):
    connection = running.connect()
    reply = running.raw(connection, b"\x00" * (MAX_MESSAGE_BYTES + 1))
    assert isinstance(reply, Error) and reply.code == "too_large"
    assert isinstance(connection.hello("0.1.0"), HelloReply)


def test_a_handler_failing_unexpectedly_is_an_internal_error_and_the_loop_survives(running):
    connection = running.connect()
    running.submit(connection)
    running.fake.errors["cancel"] = RuntimeError("boom")
    with pytest.raises(AgentError) as caught:
        connection.request(Cancel(bundle="exp"), expect=Cancelled)
    assert caught.value.error.code == "internal"
    assert "boom" in caught.value.error.message
    assert "RuntimeError" in caught.value.error.detail
    assert isinstance(connection.hello("0.1.0"), HelloReply)
    assert running.thread.is_alive()


def test_a_scheduler_error_reaches_the_client_as_a_readable_error(running):
    connection = running.connect()
    running.submit(connection)
    running.fake.errors["cancel"] = SchedulerError(
        "scancel: error: Kill job error on job id 1001: Access denied"
    )
    with pytest.raises(AgentError) as caught:
        connection.request(Cancel(bundle="exp"), expect=Cancelled)
    assert caught.value.error.code in typing.get_args(ErrorCode)
    assert "Access denied" in str(caught.value)
    assert isinstance(connection.hello("0.1.0"), HelloReply)


def test_a_submission_missing_a_key_is_an_error_the_client_can_read(running):
    connection = running.connect()
    request = submit_request(chain_bundle(), running.settings, keys={"a": "ka", "c": "kc"})
    with pytest.raises(AgentError) as caught:
        connection.request(request, expect=Submitted)
    assert "'b'" in str(caught.value)


def slow_submissions(fake: FakeScheduler, seconds: float) -> None:
    """Make every submit call of `fake` take `seconds`, as sbatch does on a busy controller."""
    submit = fake.submit

    def slow(asked: SubmitCall) -> str:
        time.sleep(seconds)
        return submit(asked)

    fake.submit = slow  # type: ignore[method-assign]


def submit_in_background(served: Served, jobs: int) -> tuple[threading.Thread, list[Reply]]:
    replies: list[Reply] = []
    names = [f"j{i:02d}" for i in range(jobs)]
    request = submit_request(chain_bundle("big", *names), served.settings)
    connection = served.connect(timeout=10)
    thread = threading.Thread(
        target=lambda: replies.append(connection.request(request, expect=Submitted)), daemon=True
    )
    thread.start()
    wait_until(lambda: served.fake.calls)
    return thread, replies


def test_the_agent_answers_others_while_it_submits_a_big_bundle(running):
    slow_submissions(running.fake, 0.05)
    submitting, replies = submit_in_background(running, 40)  # two seconds of sbatch
    started = time.monotonic()
    assert isinstance(running.connect().hello("0.1.0"), HelloReply)
    assert time.monotonic() - started < 0.5
    status = running.connect().request(Status(bundle="big"), expect=StatusReply)
    assert isinstance(status, StatusReply) and len(status.jobs) == 40  # those on their way too
    assert 0 < len([job for job in status.jobs if job.job_id]) < 40  # the jobs so far, with ids
    under_way = [job.reason for job in status.jobs if not job.job_id and job.state is JobState.SUBMITTED]
    assert under_way == [SUBMITTING]  # one call at a time (the fake takes one): out, not in doubt
    assert submitting.is_alive()
    submitting.join(10)
    [reply] = replies
    assert isinstance(reply, Submitted) and len(reply.jobs) == 40 and reply.error == ""


def test_a_shutdown_during_a_submission_answers_it_with_what_was_submitted(running):
    slow_submissions(running.fake, 0.05)
    submitting, replies = submit_in_background(running, 40)
    assert running.connect().request(Shutdown(), expect=Ack).id
    running.thread.join(DEADLINE)
    running.server.close()
    submitting.join(DEADLINE)
    [reply] = replies
    assert isinstance(reply, Submitted) and 0 < len(reply.jobs) < 40
    assert "the agent was stopped during the submission; submit again for the rest" in reply.error
    assert running.agent.journal.in_doubt() == []  # the call in flight finished and was recorded


def test_the_submitter_runs_its_bookkeeping_while_the_agent_submits(running, tmp_path):
    from milex.config.file import Machine
    from milex.machine.submitter import AgentSubmitter

    connection = running.connect()

    class Direct(AgentSubmitter):
        @property
        def connection(self) -> AgentConnection:
            return connection

    slow_submissions(running.fake, 0.1)
    submitter = Direct(Machine(name="cluster", path=running.settings.path, env_command="", slurm_account=""))
    seen: list[str] = []
    calls_when_waiting: list[int] = []

    def bookkeeping() -> None:
        wait_until(lambda: running.fake.calls)  # the request is at the agent already
        calls_when_waiting.append(len(running.fake.calls))
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        submitter.submit(
            chain_bundle("exp", "a"), running.settings, lambda job: seen.append(job.job_id), bookkeeping
        )
    assert calls_when_waiting == [1]
    assert seen == ["1000"]  # the submission was reported before the bookkeeping's error


def test_serve_returns_once_the_agent_is_stopped(running):
    connection = running.connect()
    assert isinstance(connection.hello("0.1.0"), HelloReply)
    running.agent.stopping = True  # what the agent's SIGTERM handler does
    running.thread.join(DEADLINE)
    assert not running.thread.is_alive()
    with pytest.raises(AgentUnavailable):
        connection.request(Hello(), timeout=0.2, expect=HelloReply)


def test_replies_reach_the_client_that_asked(running):
    first, second = running.connect(), running.connect()
    first_id, second_id = first.send(Status()), second.send(Hello())
    assert isinstance(second.receive(second_id, expect=HelloReply), HelloReply)
    assert isinstance(first.receive(first_id, expect=StatusReply), StatusReply)


# ---- watch streams -------------------------------------------------------------------------------


def test_watch_follow_pushes_the_events_of_each_poll(running):
    connection = running.connect()
    stream = connection.stream(Watch(since=0, heartbeat=1.0), idle_timeout=DEADLINE, expect=Events)
    first = next(stream)
    assert isinstance(first, Events) and (first.events, first.last_seq) == ([], 0)
    running.submit(running.connect(), "a")
    replies = collect_events(stream, lambda seen: any(e.state is JobState.PENDING for e in seen))
    assert states_of(replies) == [("a", JobState.SUBMITTED), ("a", JobState.PENDING)]
    running.fake.set_state("1000", RUNNING)
    replies = collect_events(stream, lambda seen: any(e.state is RUNNING for e in seen))
    assert states_of(replies)[-1] == ("a", RUNNING)
    assert replies[-1].last_seq == replies[-1].events[-1].seq == 3


def test_watch_since_replays_history_first(running):
    connection = running.connect()
    running.submit(connection, "a", "b")
    wait_until(lambda: running.agent.journal.last_seq >= 4)  # submitted and pending, twice
    reply = connection.request(Watch(since=1, follow=False), expect=Events)
    assert isinstance(reply, Events)
    assert [event.seq for event in reply.events] == [2, 3, 4]
    assert running.agent.watches == {}


def test_heartbeats_are_empty_events_at_the_heartbeat_interval(running):
    connection = running.connect()
    stream = connection.stream(Watch(since=0, heartbeat=0.1), idle_timeout=DEADLINE, expect=Events)
    next(stream)
    started = time.monotonic()
    beats = [next(stream) for _ in range(4)]
    elapsed = time.monotonic() - started
    assert all(isinstance(beat, Events) and beat.events == [] and beat.last_seq == 0 for beat in beats)
    assert 0.3 <= elapsed < 2.0


def test_two_watchers_both_get_each_event(running):
    watchers = [
        running.connect().stream(Watch(since=0, heartbeat=1.0), idle_timeout=DEADLINE, expect=Events)
        for _ in range(2)
    ]
    for stream in watchers:
        next(stream)
    running.submit(running.connect(), "a")
    running.fake.set_state("1000", RUNNING)
    for stream in watchers:
        replies = collect_events(stream, lambda seen: any(e.state is RUNNING for e in seen))
        seqs = [event.seq for reply in replies for event in reply.events]
        assert seqs == sorted(set(seqs))
        assert states_of(replies)[0] == ("a", JobState.SUBMITTED)
        assert states_of(replies)[-1] == ("a", RUNNING)


def test_a_watcher_that_disconnects_is_dropped(running):
    gone = running.connect()
    stream = gone.stream(Watch(since=0, heartbeat=0.05), idle_timeout=DEADLINE, expect=Events)
    next(stream)
    stayed = running.connect()
    kept = stayed.stream(Watch(since=0, heartbeat=0.05), idle_timeout=DEADLINE, expect=Events)
    next(kept)
    assert len(running.agent.watches) == 2
    gone.close()
    wait_until(lambda: len(running.agent.watches) == 1)
    assert isinstance(next(kept), Events)  # the other watcher still gets its heartbeats
    assert isinstance(running.connect().hello("0.1.0"), HelloReply)
    assert running.thread.is_alive()


def test_unwatch_stops_the_stream(running):
    connection = running.connect()
    watch_id = connection.send(Watch(since=0, heartbeat=0.05))
    connection.receive(watch_id, expect=Events)
    assert connection.request(Unwatch(watch_id=watch_id), expect=Ack) == Ack(id=connection._prefix + "-2")
    assert running.agent.watches == {}


# ---- log streams ---------------------------------------------------------------------------------


def test_logs_follow_streams_chunks_as_the_log_grows_then_eof_when_the_job_ends(running):
    connection = running.connect()
    running.submit(connection, "a")
    log = Path(running.settings.path) / "slurm" / "exp_20240101000000_a-1000.out"
    log.write_bytes(b"one\n")
    stream = connection.stream(Logs(job_id="1000", follow=True), idle_timeout=DEADLINE, expect=LogChunk)
    first = next(stream)
    assert isinstance(first, LogChunk) and (first.offset, first.data, first.eof) == (0, b"one\n", False)
    assert first.path == str(log)
    received = b""
    for line in (b"two\n", b"three\n"):
        with log.open("ab") as file:
            file.write(line)
        chunk = next(stream)
        assert isinstance(chunk, LogChunk) and chunk.offset == 4 + len(received) and not chunk.eof
        received += chunk.data
        assert chunk.data == line
    running.fake.set_state("1000", COMPLETED, 0)
    last = next(stream)
    assert isinstance(last, LogChunk) and (last.data, last.eof, last.offset) == (b"", True, 4 + len(received))
    wait_until(lambda: running.agent.log_streams == {})


def test_logs_follow_of_a_finished_job_ends_at_once(running):
    connection = running.connect()
    running.submit(connection, "a")
    (Path(running.settings.path) / "slurm" / "exp_20240101000000_a-1000.out").write_bytes(b"all\n")
    running.fake.set_state("1000", COMPLETED, 0)
    wait_until(lambda: running.agent.journal.find("exp_20240101000000/a").state is COMPLETED)
    stream = connection.stream(Logs(job_id="1000", follow=True), idle_timeout=DEADLINE, expect=LogChunk)
    assert (next(stream).data, next(stream).eof) == (b"all\n", True)


def test_a_quiet_followed_log_gets_empty_chunks_at_the_heartbeat_interval(running):
    connection = running.connect()
    running.submit(connection, "a")
    (Path(running.settings.path) / "slurm" / "exp_20240101000000_a-1000.out").write_bytes(b"one\n")
    request = Logs(job_id="1000", follow=True, heartbeat=0.3)
    stream = connection.stream(request, idle_timeout=DEADLINE, expect=LogChunk)
    assert next(stream).data == b"one\n"
    started = time.monotonic()
    beats = [next(stream) for _ in range(3)]
    elapsed = time.monotonic() - started
    assert [(beat.offset, beat.data, beat.eof) for beat in beats] == [(4, b"", False)] * 3
    assert 0.8 <= elapsed < 2.0
    assert LOG_HEARTBEAT in connection.hello("0.1.0").features


@pytest.mark.parametrize(
    ("features", "idle"), [([LOG_HEARTBEAT], 0.6), ([], watch.NO_IDLE_TIMEOUT)], ids=["heartbeats", "older"]
)
def test_a_follow_trusts_a_quiet_link_for_three_heartbeats_only_when_the_agent_sends_them(
    running: Served, monkeypatch: pytest.MonkeyPatch, features: list[str], idle: float
) -> None:
    connection = running.connect()
    running.submit(connection, "a")
    (Path(running.settings.path) / "slurm" / "exp_20240101000000_a-1000.out").write_bytes(b"one\ntwo\n")
    running.fake.set_state("1000", JobState.COMPLETED, 0)
    wait_until(lambda: running.agent.journal.find("exp_20240101000000/a").state is JobState.COMPLETED)
    hello = HelloReply(agent_version="0", features=features)
    monkeypatch.setattr(watch, "greeted", lambda machine, timeout: (running.connect(), hello))
    idle_timeouts: list[float | None] = []
    stream = AgentConnection.stream

    def recorded(self, request, idle_timeout=None, *, expect):  # type: ignore[no-untyped-def]
        idle_timeouts.append(idle_timeout)
        return stream(self, request, idle_timeout, expect=expect)

    monkeypatch.setattr(AgentConnection, "stream", recorded)

    received = b"".join(watch.follow_log(LOCAL, Logs(job_id="1000", offset=4, heartbeat=0.2)))

    assert received == b"two\n"  # from the offset asked, up to the end of the finished job's log
    assert idle_timeouts == [pytest.approx(idle)]


# ---- progress while submitting, and retries of one submission -----------------------------------


def test_a_submission_asking_for_progress_gets_some_at_least_every_second(running):
    from milex_common.protocol import SUBMIT_PROGRESS, SubmitProgress

    slow_submissions(running.fake, 0.1)
    connection = running.connect()
    assert SUBMIT_PROGRESS in connection.hello("0.1.0").features
    names = [f"j{i:02d}" for i in range(25)]
    request = submit_request(chain_bundle("big", *names), running.settings)
    request.progress = True
    request_id = connection.send(request)
    arrivals: list[tuple[float, SubmitProgress | Submitted]] = []
    while not arrivals or not isinstance(arrivals[-1][1], Submitted):
        reply = connection.receive(request_id, 1.5, expect=(SubmitProgress, Submitted))
        arrivals.append((time.monotonic(), reply))
    progress = [reply for _, reply in arrivals if isinstance(reply, SubmitProgress)]
    assert len(progress) >= 3 and all(p.total == 25 for p in progress)
    assert [p.submitted for p in progress] == sorted(p.submitted for p in progress)
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(arrivals)]
    assert max(gaps) < 1.0
    assert len(arrivals[-1][1].jobs) == 25


def test_progress_goes_on_while_the_controller_is_silent(running):
    from milex_common.errors import SchedulerUnavailable
    from milex_common.protocol import SubmitProgress

    running.fake.errors["lookup"] = SchedulerUnavailable("squeue: Socket timed out on send/recv operation")
    running.fake.accepted_silently = {"b"}
    connection = running.connect()
    request = submit_request(chain_bundle(), running.settings)
    request.progress = True
    request_id = connection.send(request)
    replies = [connection.receive(request_id, 1.5, expect=(SubmitProgress, Submitted)) for _ in range(4)]
    assert all(isinstance(reply, SubmitProgress) for reply in replies)
    assert replies[-1].waiting_for_controller and replies[-1].in_doubt == 1 and replies[-1].submitted == 1
    assert isinstance(running.connect().hello("0.1.0"), HelloReply)  # others are answered meanwhile
    del running.fake.errors["lookup"]
    reply = connection.receive(request_id, 3, expect=(SubmitProgress, Submitted))
    while isinstance(reply, SubmitProgress):
        reply = connection.receive(request_id, 3, expect=(SubmitProgress, Submitted))
    assert [job.name for job in reply.jobs] == ["a", "b", "c"] and reply.error == ""
    assert [call.job for call in running.fake.calls] == ["a", "b", "c"]


def test_a_retried_submission_while_the_first_is_in_progress_submits_nothing_twice(running):
    slow_submissions(running.fake, 0.05)
    names = [f"j{i:02d}" for i in range(20)]
    request = submit_request(chain_bundle("big", *names), running.settings)
    first, second = running.connect(timeout=10), running.connect(timeout=10)
    first_id = first.send(request)
    wait_until(lambda: len(running.fake.calls) >= 3)
    second_id = second.send(submit_request(chain_bundle("big", *names), running.settings))
    replies = [first.receive(first_id, expect=Submitted), second.receive(second_id, expect=Submitted)]
    assert [call.job for call in running.fake.calls] == names
    assert replies[0].jobs == replies[1].jobs and len(replies[0].jobs) == 20
