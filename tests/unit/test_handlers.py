"""The request handlers on a real journal with an in-memory scheduler: exactly-once submission above all."""

from __future__ import annotations

import getpass
import os
from pathlib import Path

import pytest

from milex_agent.handlers import handle
from milex_agent.ledger import JournalLedger, comment_of
from milex_agent.recovery import recover
from milex_agent.scheduler.base import SubmitCall
from milex_agent.state import Agent
from milex_agent.submission import IN_DOUBT, SubmittedJob
from milex_common.errors import MilexError
from milex_common.model import JobState, MachineSettings
from milex_common.protocol import (
    Ack,
    Cancel,
    Cancelled,
    Error,
    Events,
    Hello,
    HelloReply,
    LogChunk,
    Logs,
    Shutdown,
    Status,
    StatusReply,
    Unwatch,
    Watch,
)
from tests.unit.agent_fakes import (
    PEER,
    FakeScheduler,
    SchedulerCrash,
    answer,
    chain_bundle,
    submit_request,
    submitted,
)

RUNNING, COMPLETED = JobState.RUNNING, JobState.COMPLETED


def test_hello_says_who_and_where_the_agent_is(agent):
    reply = handle(agent, PEER, Hello(id="r1", client_version="0.1.0"))
    assert isinstance(reply, HelloReply)
    assert (reply.id, reply.agent_version, reply.pid, reply.user) == (
        "r1",
        "9.9.9-test",
        os.getpid(),
        getpass.getuser(),
    )
    assert reply.host and reply.last_seq == 0


# ---- submission ----------------------------------------------------------------------------------


def test_submit_submits_in_dependency_order_wired_by_real_ids(agent, fake, settings):
    bundle = chain_bundle("exp", "c", "b", "a")  # b after c, a after b: declared out of name order
    reply = submitted(agent, submit_request(bundle, settings))
    assert reply.error == ""
    assert [(call.job, call.asked.after, call.asked.dependency_type) for call in fake.calls] == [
        ("c", [], "afterok"),
        ("b", ["1000"], "afterok"),
        ("a", ["1001"], "afterany"),
    ]
    asked = [call.asked for call in fake.calls]
    assert [call.comment for call in asked] == [comment_of(f"{bundle.stem}/{job}") for job in "cba"]
    assert fake.calls[0].asked.comment == "milex:exp_20240101000000/c"
    assert all(
        call.asked.script == Path(settings.path) / "slurm" / f"{bundle.stem}_{call.job}.sh"
        for call in fake.calls
    )
    assert all(call.asked.script.is_file() for call in fake.calls)
    assert {job.name: job.job_id for job in reply.jobs} == {"c": "1000", "b": "1001", "a": "1002"}
    assert all(job.state is JobState.SUBMITTED and job.bundle == bundle.stem for job in reply.jobs)
    assert reply.id == "r-submit"


def test_submit_records_every_job_with_its_files_and_first_event(agent, fake, settings):
    bundle = chain_bundle()
    submitted(agent, submit_request(bundle, settings))
    job = agent.journal.find(f"{bundle.stem}/b")
    assert job.job_id == "1001"
    assert job.script.endswith("exp_20240101000000_b.sh")
    assert job.stdout == f"{settings.path}/slurm/exp_20240101000000_b-%j.out"
    assert [(e.name, e.state) for e in agent.journal.events_since(0)] == [
        (n, JobState.SUBMITTED) for n in "abc"
    ]
    assert agent.poller.due_in() == 0  # a submission makes the next poll due now


def test_a_machine_path_under_the_home_is_the_agents_home(agent, fake, settings, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    settings.path = "~/milex"
    bundle = chain_bundle()
    submitted(agent, submit_request(bundle, settings))
    job = agent.journal.find(f"{bundle.stem}/a")
    assert job.script == f"{tmp_path}/home/milex/slurm/exp_20240101000000_a.sh"
    assert job.stdout == f"{tmp_path}/home/milex/slurm/exp_20240101000000_a-%j.out"
    assert f"export MILEX={tmp_path}/home/milex" in fake.calls[0].asked.text


def test_resending_the_same_submission_submits_nothing_new(agent, fake, settings):
    request = submit_request(chain_bundle(), settings)
    first = submitted(agent, request)
    again = submitted(agent, request)
    assert len(fake.calls) == 3
    assert [job.job_id for job in again.jobs] == [job.job_id for job in first.jobs]
    assert again.error == ""
    assert agent.journal.last_seq == 3


def test_the_same_bundle_with_new_keys_is_submitted_again(agent, fake, settings):
    submitted(agent, submit_request(chain_bundle(), settings))
    second = submitted(
        agent, submit_request(chain_bundle(), settings, keys={j: f"second/{j}" for j in "abc"})
    )
    assert len(fake.calls) == 6
    assert [job.job_id for job in second.jobs] == ["1003", "1004", "1005"]


def test_a_refused_job_stops_the_bundle_and_the_reply_says_which_and_why(agent, fake, settings):
    fake.refuse["b"] = "sbatch: error: Batch job submission failed: Invalid account or account/partition"
    reply = submitted(agent, submit_request(chain_bundle(), settings))
    assert [call.job for call in fake.calls] == ["a", "b"]  # c, which depends on b, never
    assert [(job.name, job.job_id) for job in reply.jobs] == [("a", "1000")]
    assert "'b'" in reply.error
    assert "Invalid account or account/partition" in reply.error
    assert "c" in reply.error.split("Not submitted:")[1]
    assert agent.journal.find("exp_20240101000000/b") is None  # refused: not tracked, not in doubt
    assert agent.journal.in_doubt() == []


def test_after_a_refusal_a_retry_submits_only_what_is_missing(agent, fake, settings):
    request = submit_request(chain_bundle(), settings)
    fake.refuse["b"] = "sbatch: error: QOSMaxSubmitJobPerUserLimit"
    submitted(agent, request)
    del fake.refuse["b"]
    reply = submitted(agent, request)
    assert reply.error == ""
    assert [(call.job, call.asked.after) for call in fake.calls] == [
        ("a", []),
        ("b", ["1000"]),
        ("b", ["1000"]),
        ("c", ["1001"]),
    ]
    assert [job.name for job in reply.jobs] == ["a", "b", "c"]


def test_a_job_without_an_idempotency_key_is_an_error_naming_it(agent, settings):
    request = submit_request(chain_bundle(), settings, keys={"a": "ka", "c": "kc"})
    reply = handle(agent, PEER, request)
    assert isinstance(reply, Error) and reply.code == "bad_request" and "'b'" in reply.message


def test_a_missing_idempotency_key_is_found_before_anything_is_submitted(agent, fake, settings):
    # Submitting `a` and then failing on `b` leaves a job running that the client never hears of.
    request = submit_request(chain_bundle(), settings, keys={"a": "ka", "c": "kc"})
    assert isinstance(handle(agent, PEER, request), Error)
    assert fake.calls == []


def test_a_bundle_with_a_dependency_cycle_submits_nothing(agent, fake, settings):
    bundle = chain_bundle()
    bundle.jobs["a"].dependencies = ["c"]
    with pytest.raises(MilexError, match="cycle"):
        handle(agent, PEER, submit_request(bundle, settings))
    assert fake.calls == []


# ---- crashes mid-submission ----------------------------------------------------------------------


def test_recovery_adopts_what_the_scheduler_got_and_queues_again_what_it_did_not(agent, fake, settings):
    got = submit_request(chain_bundle("got"), settings)
    lost = submit_request(chain_bundle("lost"), settings)
    fake.crash_after = {"b"}  # sbatch accepted got's b, then the agent died before the journal write
    with pytest.raises(SchedulerCrash):
        answer(agent, got)
    fake.crash_after, fake.crash_before = set(), {"b"}  # the agent died before lost's b reached sbatch
    with pytest.raises(SchedulerCrash):
        answer(agent, lost)
    assert sorted(job.key for job, _, _ in agent.journal.in_doubt()) == [
        "got_20240101000000/b",
        "lost_20240101000000/b",
    ]
    fake.crash_before = set()
    got_b = fake.comments[comment_of("got_20240101000000/b")]

    recover(agent)
    assert len(fake.lookups) == 1  # one query for every interrupted submission of a scheduler
    assert sorted(fake.lookups[0]) == [
        comment_of("got_20240101000000/b"),
        comment_of("lost_20240101000000/b"),
    ]
    assert agent.journal.in_doubt() == []
    assert agent.journal.find("got_20240101000000/b").job_id == got_b
    assert agent.journal.find("lost_20240101000000/b").state is JobState.QUEUED  # its request is kept
    assert agent.poller.due_in() == 0

    calls = len(fake.calls)
    got_reply = submitted(agent, got)
    assert [(call.job, call.asked.after) for call in fake.calls[calls:]] == [("c", [got_b])]
    assert [job.name for job in got_reply.jobs] == ["a", "b", "c"]
    calls = len(fake.calls)
    lost_reply = submitted(agent, lost)
    lost_a = lost_reply.jobs[0].job_id
    assert [(call.job, call.asked.after) for call in fake.calls[calls:]] == [
        ("b", [lost_a]),
        ("c", [fake.calls[-2].job_id]),
    ]
    b_comment = comment_of("got_20240101000000/b")
    assert [call.job for call in fake.calls if call.asked.comment == b_comment] == ["b"]


def test_a_retry_without_recovery_looks_up_an_interrupted_submission_first(agent, fake, settings):
    request = submit_request(chain_bundle(), settings)
    fake.crash_after = {"a"}
    with pytest.raises(SchedulerCrash):
        answer(agent, request)
    fake.crash_after = set()
    reply = submitted(agent, request)
    assert [call.job for call in fake.calls] == ["a", "b", "c"]  # `a` not again
    assert [(job.name, job.job_id) for job in reply.jobs] == [("a", "1000"), ("b", "1001"), ("c", "1002")]
    assert fake.calls[1].asked.after == ["1000"]
    assert fake.lookups == [[comment_of("exp_20240101000000/a")]]


def test_ledger_begin_before_sbatch_leaves_a_trace_that_a_retry_resubmits(agent, fake, settings):
    request = submit_request(chain_bundle("solo", "only"), settings)
    ledger = JournalLedger(agent.journal, request, fake)
    job = request.bundle.jobs["only"]
    [comment] = ledger.begin([(job, SubmittedJob(name="only", job_id="", script="/s.sh"))])
    assert comment == "milex:solo_20240101000000/only"
    assert ledger.known(job) == IN_DOUBT  # the submission looks it up before submitting it again
    assert [job.key for job, _, _ in agent.journal.in_doubt()] == ["solo_20240101000000/only"]
    reply = submitted(agent, request)
    assert [call.job for call in fake.calls] == ["only"]
    assert reply.jobs[0].job_id == "1000"
    assert agent.journal.in_doubt() == []


def test_each_sbatch_finds_its_intent_and_its_dependencys_id_committed(agent, fake, settings):
    """The submission records the id that came back and the next job's intent in one commit, made
    before that job's call: another process reading the journal file at each call (as a restarted
    agent would after a crash there) sees both."""
    import sqlite3

    request = submit_request(chain_bundle("exp", "a", "b", "c"), settings)
    seen: list[tuple[str, list[tuple[str, str, str]]]] = []
    submit = fake.submit

    def checked(asked: SubmitCall) -> str:
        reader = sqlite3.connect(agent.journal.path)  # committed rows only
        rows = reader.execute("SELECT name, job_id, state FROM jobs WHERE state != 'QUEUED' ORDER BY name")
        seen.append((asked.script.name, rows.fetchall()))
        reader.close()
        return submit(asked)

    fake.submit = checked  # type: ignore[method-assign]
    submitted(agent, request)
    assert [rows for _, rows in seen] == [
        [("a", "", "SUBMITTED")],
        [("a", "1000", "SUBMITTED"), ("b", "", "SUBMITTED")],
        [("a", "1000", "SUBMITTED"), ("b", "1001", "SUBMITTED"), ("c", "", "SUBMITTED")],
    ]


# ---- cancel and status ---------------------------------------------------------------------------


def _two_bundles(agent: Agent, fake: FakeScheduler, settings: MachineSettings) -> None:
    """exp (a done, b and c pending) and other (a, b pending): ids 1000-1002 and 1003-1004."""
    submitted(agent, submit_request(chain_bundle("exp"), settings))
    submitted(agent, submit_request(chain_bundle("other", "a", "b"), settings))
    fake.set_state("1000", COMPLETED, 0)
    agent.poller.poll()


def test_cancel_a_bundle_cancels_its_unfinished_jobs_only(agent, fake, settings):
    _two_bundles(agent, fake, settings)
    reply = handle(agent, PEER, Cancel(id="r", bundle="exp"))
    assert reply == Cancelled(id="r", job_ids=["1001", "1002"])
    assert [sorted(call) for call in fake.cancelled] == [["1001", "1002"]]
    assert agent.poller.due_in() <= agent.poller.interval  # the cancellation is seen within one interval


def test_cancel_by_ids(agent, fake, settings):
    _two_bundles(agent, fake, settings)
    reply = handle(agent, PEER, Cancel(id="r", job_ids=["1000", "1003"]))
    assert reply == Cancelled(id="r", job_ids=["1003"])
    assert fake.cancelled == [["1003"]]


def test_cancel_of_only_finished_jobs_asks_the_scheduler_nothing(agent, fake, settings):
    _two_bundles(agent, fake, settings)
    assert handle(agent, PEER, Cancel(id="r", job_ids=["1000"])) == Cancelled(id="r", job_ids=[])
    assert fake.cancelled == []


def test_cancel_of_nothing_tracked_is_not_found(agent, fake, settings):
    _two_bundles(agent, fake, settings)
    reply = handle(agent, PEER, Cancel(id="r", bundle="nope"))
    assert isinstance(reply, Error) and (reply.code, reply.id) == ("not_found", "r")
    assert "nope" in reply.message
    reply = handle(agent, PEER, Cancel(id="r", job_ids=["77"]))
    assert isinstance(reply, Error) and reply.code == "not_found" and "77" in reply.message
    assert fake.cancelled == []


def test_status_of_all_of_a_bundle_and_of_ids(agent, fake, settings):
    _two_bundles(agent, fake, settings)
    everything = handle(agent, PEER, Status(id="r"))
    assert isinstance(everything, StatusReply)
    assert [job.job_id for job in everything.jobs] == ["1000", "1001", "1002", "1003", "1004"]
    assert everything.last_seq == agent.journal.last_seq
    exp = handle(agent, PEER, Status(id="r", bundle="exp"))
    assert [(job.name, job.state) for job in exp.jobs] == [
        ("a", COMPLETED), ("b", JobState.PENDING), ("c", JobState.PENDING),
    ]  # fmt: skip
    assert exp.jobs[0].exit_code == 0
    some = handle(agent, PEER, Status(id="r", job_ids=["1004"]))
    assert [(job.bundle, job.name) for job in some.jobs] == [("other_20240101000000", "b")]


def test_status_shows_a_job_whose_sbatch_is_under_way_then_in_doubt(agent, fake, settings):
    from concurrent.futures import Future

    from milex_agent.handlers import IN_DOUBT_SILENT, SUBMITTING
    from milex_agent.pending import PendingSubmit
    from milex_common.errors import SchedulerUnavailable

    calls: list[tuple[object, Future]] = []

    def held(call):  # every call waits until the test ends it
        future: Future = Future()
        calls.append((call, future))
        return future

    agent.dispatch = held
    pending = handle(agent, PEER, submit_request(chain_bundle("exp", "a"), settings))
    assert isinstance(pending, PendingSubmit)
    agent.in_flight = pending.in_flight  # as the server does, over its submissions
    ((limits, read),) = calls
    read.set_result(limits())
    pending.step()
    [(_, sbatch)] = calls[1:]
    [job] = handle(agent, PEER, Status(id="r", bundle="exp")).jobs
    assert (job.name, job.job_id, job.state, job.reason) == ("a", "", JobState.SUBMITTED, SUBMITTING)
    assert handle(agent, PEER, Status(id="r")).jobs == [job]
    assert handle(agent, PEER, Status(id="r", job_ids=[""])).jobs == []  # by id: only jobs that have one

    sbatch.set_exception(SchedulerUnavailable("Socket timed out on send/recv operation"))
    pending.step()
    [job] = handle(agent, PEER, Status(id="r", bundle="exp")).jobs
    assert (job.job_id, job.state, job.reason) == ("", JobState.SUBMITTED, IN_DOUBT_SILENT)


def test_status_shows_a_job_left_in_doubt_by_an_earlier_agent(agent, fake, settings):
    from milex_agent.handlers import IN_DOUBT as ASKING

    ledger = JournalLedger(agent.journal, submit_request(chain_bundle("exp", "a"), settings), fake)
    job = chain_bundle("exp", "a").jobs["a"]
    ledger.begin([(job, SubmittedJob(name="a", job_id="", script="/s/a.sh"))])  # then the agent died
    [shown] = handle(agent, PEER, Status(id="r")).jobs
    assert (shown.key, shown.job_id, shown.state, shown.reason) == (
        "exp_20240101000000/a",
        "",
        JobState.SUBMITTED,
        ASKING,
    )


# ---- watch ---------------------------------------------------------------------------------------


def test_watch_returns_the_events_since_n_and_registers_a_stream(agent, fake, settings):
    submitted(agent, submit_request(chain_bundle(), settings))
    reply = handle(agent, PEER, Watch(id="w1", since=1, heartbeat=2.0))
    assert isinstance(reply, Events)
    assert ([e.seq for e in reply.events], reply.last_seq, reply.id) == ([2, 3], 3, "w1")
    stream = agent.watches[(PEER, "w1")]
    assert (stream.peer, stream.request_id, stream.heartbeat) == (PEER, "w1", 2.0)


def test_watch_without_follow_registers_nothing(agent, fake, settings):
    submitted(agent, submit_request(chain_bundle(), settings))
    reply = handle(agent, PEER, Watch(id="w1", since=3, follow=False))
    assert (reply.events, reply.last_seq) == ([], 3)
    assert agent.watches == {}


def test_watch_heartbeat_has_a_floor(agent):
    handle(agent, PEER, Watch(id="w1", heartbeat=0))
    assert agent.watches[(PEER, "w1")].heartbeat > 0


def test_unwatch_drops_the_stream(agent):
    handle(agent, PEER, Watch(id="w1"))
    handle(agent, b"other", Watch(id="w1"))
    assert handle(agent, PEER, Unwatch(id="u", watch_id="w1")) == Ack(id="u")
    assert list(agent.watches) == [(b"other", "w1")]
    assert handle(agent, PEER, Unwatch(id="u", watch_id="never")) == Ack(id="u")


def test_shutdown_stops_the_agent(agent):
    assert handle(agent, PEER, Shutdown(id="s")) == Ack(id="s")
    assert agent.stopping


# ---- logs ----------------------------------------------------------------------------------------


def _log(settings: MachineSettings, stem: str, job_id: str, stream: str = "out") -> Path:
    return Path(settings.path) / "slurm" / f"{stem}-{job_id}.{stream}"


def test_logs_of_a_job_from_an_offset(agent, fake, settings):
    submitted(agent, submit_request(chain_bundle("exp", "a"), settings))
    _log(settings, "exp_20240101000000_a", "1000").write_bytes(b"hello\nworld\n")
    _log(settings, "exp_20240101000000_a", "1000", "err").write_bytes(b"oops\n")
    reply = handle(agent, PEER, Logs(id="l", job_id="1000"))
    assert isinstance(reply, LogChunk)
    assert (reply.data, reply.offset, reply.eof) == (b"hello\nworld\n", 0, False)
    assert reply.path == str(_log(settings, "exp_20240101000000_a", "1000"))
    assert handle(agent, PEER, Logs(id="l", job_id="1000", offset=6)).data == b"world\n"
    assert handle(agent, PEER, Logs(id="l", job_id="1000", stream="err")).data == b"oops\n"
    assert agent.log_streams == {}


def test_logs_of_a_finished_job_read_to_the_end_is_eof(agent, fake, settings):
    submitted(agent, submit_request(chain_bundle("exp", "a"), settings))
    _log(settings, "exp_20240101000000_a", "1000").write_bytes(b"done\n")
    fake.set_state("1000", COMPLETED, 0)
    agent.poller.poll()
    assert handle(agent, PEER, Logs(id="l", job_id="1000")).eof is False  # data first
    end = handle(agent, PEER, Logs(id="l", job_id="1000", offset=5, follow=True))
    assert (end.data, end.eof) == (b"", True)
    assert agent.log_streams == {}  # nothing more will come: no stream


def test_logs_follow_registers_a_stream_from_where_it_read(agent, fake, settings):
    submitted(agent, submit_request(chain_bundle("exp", "a"), settings))
    _log(settings, "exp_20240101000000_a", "1000").write_bytes(b"12345")
    handle(agent, PEER, Logs(id="l", job_id="1000", offset=2, follow=True))
    stream = agent.log_streams[(PEER, "l")]
    assert (stream.offset, stream.job_key, stream.path) == (
        5,
        "exp_20240101000000/a",
        str(_log(settings, "exp_20240101000000_a", "1000")),
    )
    assert handle(agent, PEER, Unwatch(id="u", watch_id="l")) == Ack(id="u")
    assert agent.log_streams == {}


def test_logs_not_written_yet_are_empty_not_an_error(agent, fake, settings):
    submitted(agent, submit_request(chain_bundle("exp", "a"), settings))
    reply = handle(agent, PEER, Logs(id="l", job_id="1000"))
    assert (reply.data, reply.eof) == (b"", False)


def test_logs_of_an_array_job_need_a_task(agent, fake, settings):
    submitted(agent, submit_request(chain_bundle("arr", "a", array="0-3"), settings))
    reply = handle(agent, PEER, Logs(id="l", job_id="1000"))
    assert isinstance(reply, Error) and (reply.code, reply.id) == ("not_found", "l")
    assert "array" in reply.message and "task" in reply.message
    _log(settings, "arr_20240101000000_a", "1000_2").write_bytes(b"task two\n")
    assert handle(agent, PEER, Logs(id="l", job_id="1000", array_task=2)).data == b"task two\n"


def test_logs_of_an_unknown_job_are_not_found(agent):
    reply = handle(agent, PEER, Logs(id="l", job_id="404"))
    assert isinstance(reply, Error) and reply.code == "not_found" and "404" in reply.message
