"""A controller that does not answer: submissions in doubt are looked up, never doubled, never lost."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from milex_agent.handlers import handle
from milex_agent.journal import Journal
from milex_agent.ledger import comment_of
from milex_agent.pending import PendingSubmit
from milex_agent.recovery import InDoubtRecovery
from milex_agent.scheduler.base import SubmitCall
from milex_agent.state import Agent
from milex_common.errors import SchedulerError, SchedulerUnavailable
from milex_common.model import JobState, MachineSettings
from milex_common.protocol import Submitted, TrackedJob
from tests.unit.agent_fakes import (
    NO_ANSWER,
    FakeClock,
    FakeScheduler,
    chain_bundle,
    make_agent,
    submit_request,
)

PEER = b"peer-1"
SETTLE, RETRY_FOR = 5.0, 30.0
KEY_B = "exp_20240101000000/b"


@pytest.fixture
def fake() -> FakeScheduler:
    return FakeScheduler()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(tmp_path: Path) -> MachineSettings:
    return MachineSettings(name="cluster", path=str(tmp_path / "milex"))


@pytest.fixture
def agent(tmp_path: Path, fake: FakeScheduler, clock: FakeClock) -> Iterator[Agent]:
    journal = Journal(tmp_path / "journal.sqlite")
    yield make_agent(journal, fake, clock=clock, settle=SETTLE, retry_for=RETRY_FOR)
    journal.close()


def drive(agent: Agent, clock: FakeClock, settings: MachineSettings) -> Submitted:
    """Submit a, b, c (a chain) and step the submission to its reply, moving the clock while it waits."""
    pending = handle(agent, PEER, submit_request(chain_bundle(), settings))
    assert isinstance(pending, PendingSubmit)
    for _ in range(1000):
        reply = pending.step()
        if reply is not None:
            return reply
        clock.advance(max(pending.submission.next_event_in(), 0.1))
    raise AssertionError("the submission never ended")


def in_doubt(key: str) -> TrackedJob:
    return TrackedJob(key=key, bundle="other", name="x", job_id="", state=JobState.SUBMITTED)


def ids(reply: Submitted) -> dict[str, str]:
    return {job.name: job.job_id for job in reply.jobs}


def test_an_unanswered_submission_that_was_accepted_is_found_not_submitted_again(
    agent, fake, clock, settings
):
    fake.accepted_silently = {"b"}
    reply = drive(agent, clock, settings)
    assert reply.error == ""
    assert ids(reply) == {"a": "1000", "b": "1001", "c": "1002"}
    assert [call.job for call in fake.calls] == ["a", "b", "c"]
    assert fake.lookups == [[comment_of(KEY_B)]]
    assert fake.calls[2].asked.after == ["1001"]


def silent_from_b(fake: FakeScheduler, calls: int) -> None:
    """The controller stops answering at the first submit of `b`, for `calls` calls (that one included)."""
    submit = fake.submit

    def submit_or_stall(asked: SubmitCall) -> str:
        if asked.script.stem.endswith("_b") and not any(call.job == "b" for call in fake.calls):
            fake.silent = calls
        return submit(asked)

    fake.submit = submit_or_stall  # type: ignore[method-assign]


def test_an_unanswered_submission_proven_absent_is_submitted_again_once(agent, fake, clock, settings):
    silent_from_b(fake, 1)
    reply = drive(agent, clock, settings)
    assert reply.error == ""
    assert [call.job for call in fake.calls] == ["a", "b", "b", "c"]
    assert fake.calls[1].asked.comment == fake.calls[2].asked.comment == comment_of(KEY_B)  # same key
    assert fake.submitted == [("a", "1000"), ("b", "1001"), ("c", "1002")]
    # The first lookup came as the controller answered again: only one made `SETTLE` s later proves
    # that `b` is absent.
    assert len(fake.lookups) == 2


def test_a_job_that_appears_after_the_first_lookup_is_not_doubled(agent, fake, clock, settings):
    fake.queued = {"b"}  # sbatch gave up; its request waits in the controller and is done later
    reply = drive(agent, clock, settings)
    assert reply.error == ""
    assert [call.job for call in fake.calls] == ["a", "b", "c"]
    assert fake.submitted == [("a", "1000"), ("b", "1001"), ("c", "1002")]
    assert ids(reply) == {"a": "1000", "b": "1001", "c": "1002"}
    assert len(fake.lookups) == 2  # the first missed it


def test_lookups_back_off_while_the_controller_is_silent(agent, fake, clock, settings):
    silent_from_b(fake, 4)  # b gets no answer (it was not accepted), nor do the next three lookups
    started = clock.now
    reply = drive(agent, clock, settings)
    assert reply.error == "" and ids(reply) == {"a": "1000", "b": "1001", "c": "1002"}
    assert [call.job for call in fake.calls] == ["a", "b", "b", "c"]
    assert clock.now - started >= 1 + 2 + 4  # waited 1, 2 and 4 s between the failed lookups


def test_a_silence_that_outlasts_the_retries_answers_with_the_jobs_submitted(agent, fake, clock, settings):
    fake.accepted_silently = {"b"}
    silent_from_b(fake, 10**6)
    started = clock.now
    reply = drive(agent, clock, settings)
    assert RETRY_FOR <= clock.now - started < RETRY_FOR + 15
    assert ids(reply) == {"a": "1000"}
    assert "has not answered for 30 s" in reply.error
    assert NO_ANSWER in reply.error
    assert "Already submitted: a (job 1000)" in reply.error
    assert "Not submitted: c" in reply.error
    assert "In doubt" in reply.error and ": b." in reply.error
    assert [job.key for job, _, _ in agent.journal.in_doubt()] == [KEY_B]


def test_any_scheduler_error_mid_bundle_answers_with_the_jobs_submitted(agent, fake, clock, settings):
    fake.broken = {"b": SchedulerError("'sbatch' is not installed or not on PATH")}
    reply = drive(agent, clock, settings)
    assert isinstance(reply, Submitted)
    assert ids(reply) == {"a": "1000"}
    assert "'sbatch' is not installed" in reply.error and "Not submitted: b, c" in reply.error


def test_jobs_left_in_doubt_are_resolved_while_the_agent_runs(agent, fake, clock, settings):
    fake.accepted_silently = {"b"}  # accepted, but no answer came, nor to any lookup
    fake.errors["lookup"] = SchedulerUnavailable(NO_ANSWER)
    assert "In doubt" in drive(agent, clock, settings).error  # gave up with b in doubt
    lost = in_doubt("lost")
    agent.journal.begin(lost, scheduler=settings.scheduler, machine_path=settings.path)
    del fake.errors["lookup"]
    recovery = InDoubtRecovery(agent)
    recovery.step(owned=set())
    assert fake.lookups[-1] == [comment_of(KEY_B), comment_of("lost")]
    assert agent.journal.find(KEY_B).job_id == "1001"
    assert agent.journal.find("lost") is not None  # the controller just answered: not proof yet
    clock.advance(SETTLE)
    recovery.step(owned=set())
    assert agent.journal.find("lost") is None  # proven absent: a retry will submit it
    assert agent.journal.in_doubt() == []


def test_recovery_leaves_the_jobs_of_a_submission_in_progress_alone(agent, fake, clock, settings):
    agent.journal.begin(in_doubt("mine"), scheduler="fake", machine_path=settings.path)
    clock.advance(SETTLE)
    InDoubtRecovery(agent).step(owned={"mine"})
    assert fake.lookups == [] and agent.journal.find("mine") is not None


def test_a_timed_out_command_is_an_unknown_outcome_and_a_refusal_is_not(monkeypatch):
    from milex_agent.scheduler.slurm import command
    from milex_agent.scheduler.slurm.command import CommandResult
    from milex_agent.scheduler.slurm.scheduler import SlurmScheduler
    from milex_common.errors import SubmitError

    results = iter(
        [
            CommandResult(("sbatch",), 1, "", NO_ANSWER),
            CommandResult(
                ("sbatch",), 1, "", "sbatch: error: Unable to contact slurm controller (connect failure)"
            ),
            CommandResult(("sbatch",), -9, "", ""),
            CommandResult(("sbatch",), 1, "", "sbatch: error: Batch job submission failed: Invalid account"),
        ]
    )
    monkeypatch.setattr("milex_agent.scheduler.slurm.sbatch.Sbatch.start", lambda *a: lambda: next(results))
    scheduler = SlurmScheduler()
    for _ in range(3):
        with pytest.raises(SchedulerUnavailable):
            scheduler.submit(SubmitCall(Path("a.sh"), text="#!/bin/sh\n"))
    with pytest.raises(SubmitError, match="Invalid account"):
        scheduler.submit(SubmitCall(Path("a.sh"), text="#!/bin/sh\n"))
    with pytest.raises(SchedulerUnavailable, match="did not answer within 0 s"):
        command.run_command(["sleep", "5"], timeout=0.05)


def test_an_agent_starts_even_when_the_controller_does_not_answer(agent, fake, clock, settings):
    from milex_agent.recovery import recover

    agent.journal.begin(in_doubt("cut"), scheduler=settings.scheduler, machine_path=settings.path)
    fake.errors["lookup"] = SchedulerUnavailable(NO_ANSWER)
    recover(agent)  # does not raise: the loop's recovery goes on
    assert agent.journal.find("cut") is not None and agent.controller.silent
