"""A controller restarted from state saved before it accepted the agent's latest jobs (the fake's
`restart`: it forgets them and gives their ids out again): the agent confirms its accepted jobs by
comment after any silence and when it starts, and submits each lost job again, once, wired to the
jobs it depends on by their new ids."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from milex_agent import submission
from milex_agent.confirmation import CLOCK_ALLOWANCE
from milex_agent.controller import ControllerWatch
from milex_agent.journal import Journal, Watched
from milex_agent.ledger import comment_of
from milex_agent.lifetime import Lifetime
from milex_agent.scheduler.base import SubmitCall
from milex_agent.server import AgentServer
from milex_common.model import JobState, JobStatus, MachineSettings
from milex_common.protocol import Submitted, TrackedJob
from tests.unit.agent_fakes import FakeScheduler, chain_bundle, make_agent, submit_request, wait_until
from tests.unit.served import Served

JOBS = ("a", "b", "c", "d", "e")
KEY = "exp_20240101000000/{}"


def journal_ids(journal: Journal) -> dict[str, str]:
    return {name: job.job_id for name in JOBS if (job := journal.find(KEY.format(name))) is not None}


def all_submitted(served: Served, unlike: dict[str, str] | None = None) -> bool:
    """Whether every job has an id (with `unlike`: those it names, another than there), read at once."""
    ids = journal_ids(served.agent.journal)
    if len(ids) < len(JOBS) or not all(ids.values()):
        return False
    return all(ids[name] != job_id for name, job_id in (unlike or {}).items())


def assert_each_once_in_order(served: Served) -> None:
    """Each job is in the scheduler once, under the id the journal has, after the job before it."""
    fake, ids = served.fake, journal_ids(served.agent.journal)
    assert len(set(ids.values())) == len(JOBS), ids
    for name in JOBS:
        assert fake.comments[comment_of(KEY.format(name))] == ids[name]
    accepted = {call.job_id: call for call in fake.calls if call.job_id}
    for before, after in itertools.pairwise(JOBS):
        waits_for = accepted[ids[after]].asked.after
        assert waits_for == [ids[before]], f"{after} waits for {waits_for}"


def test_jobs_lost_by_a_restart_mid_chain_are_submitted_again_once_after_the_right_jobs(running):
    running.fake.restart_at = {"d": 2}  # submitting d: the controller comes back without b and c
    connection = running.connect()
    reply = connection.request(submit_request(chain_bundle("exp", *JOBS), running.settings), expect=Submitted)
    assert isinstance(reply, Submitted) and reply.error == "", reply
    wait_until(lambda: all_submitted(running))
    assert_each_once_in_order(running)
    resubmitted = [call.job for call in running.fake.calls if call.job_id]
    assert resubmitted == ["a", "b", "c", "b", "c", "d", "e"]  # b and c twice in all: once lost, once kept
    assert len(running.fake.confirms) >= 1


@contextmanager
def serving(journal: Journal, fake: FakeScheduler, tmp_path: Path, name: str) -> Iterator[Served]:
    """An agent on `journal` serving in a thread, stopped (its journal left open) on leaving."""
    agent = make_agent(journal, fake, interval=0.02, max_interval=0.1)
    endpoint = f"ipc://{tmp_path / name}.sock"
    server = AgentServer(agent, endpoint, lifetime=Lifetime(idle_exit=0))
    served = Served(
        agent, fake, server, endpoint, MachineSettings(name="cluster", path=str(tmp_path / "milex"))
    )
    served.start()
    try:
        yield served
    finally:
        agent.stopping = True
        assert served.thread is not None
        served.thread.join(3)
        for connection in served.connections:
            connection.close()
        server.close()


def test_jobs_lost_while_the_agent_was_away_are_submitted_again_when_it_starts(tmp_path: Path):
    fake, journal = FakeScheduler(), Journal(tmp_path / "journal.sqlite")
    with serving(journal, fake, tmp_path, "first") as first:
        first.submit(first.connect(), *JOBS)
        wait_until(lambda: all_submitted(first))
    before = journal_ids(journal)
    assert fake.restart(forget=2) == [before["d"], before["e"]]  # their ids go to others
    assert fake.add() == before["d"]  # someone else's job now has d's old id
    with serving(journal, fake, tmp_path, "second") as second:
        wait_until(lambda: all_submitted(second, unlike={"d": before["d"], "e": before["e"]}))
        assert_each_once_in_order(second)
        assert {name: journal_ids(journal)[name] for name in "abc"} == {name: before[name] for name in "abc"}
    journal.close()


def test_a_lost_job_loses_its_id_and_waits_in_the_queue_with_its_request_kept(tmp_path: Path):
    journal = Journal(tmp_path / "journal.sqlite")
    job = TrackedJob(key="b/x", bundle="b", name="x", job_id="", state=JobState.QUEUED)
    journal.enqueue("b", b"request", [(job, 1)], scheduler="slurm", machine_path="/m")
    journal.submitted("b/x", "1001")
    journal.drop_settled_requests()  # the job is out of the queue, but may come back to it
    assert journal.lost([("b/x", "999")], "lost") == []  # its id is no longer 999: left alone
    [event] = journal.lost([("b/x", "1001")], "lost by a restart")
    assert (event.key, event.state, event.job_id) == ("b/x", JobState.QUEUED, "")
    assert event.reason == "lost by a restart"
    assert journal.queued_requests() == [(1, b"request")]
    journal.close()


def test_a_poll_planned_before_a_job_was_lost_does_not_give_it_its_old_ids_state(tmp_path: Path):
    """Seen on the test cluster: the restarted controller gave the lost job's id to another job, which
    the agent then cancelled; a poll planned before the loss applied that CANCELLED to the job queued
    again, which was never submitted again."""
    journal = Journal(tmp_path / "journal.sqlite")
    job = TrackedJob(key="b/x", bundle="b", name="x", job_id="", state=JobState.QUEUED)
    journal.enqueue("b", b"request", [(job, 1)], scheduler="slurm", machine_path="/m")
    journal.submitted("b/x", "1001")
    journal.lost([("b/x", "1001")], "lost by a restart")
    assert journal.update([("b/x", JobStatus(job_id="1001", state=JobState.CANCELLED))]) == []
    assert [(row.state, row.job_id) for row in journal.watched()] == []  # queued, not watched
    assert journal.queued_requests() == [(1, b"request")]
    journal.close()


def test_a_job_refused_for_a_dependency_the_restart_lost_goes_again_after_it(running):
    running.fake.check_dependencies = True
    running.fake.waited_through = {"d": 2}  # d reaches the restarted controller, which lacks c
    running.submit(running.connect(), *JOBS)
    wait_until(lambda: all_submitted(running))
    assert_each_once_in_order(running)
    refused = [call.job for call in running.fake.calls if not call.job_id]
    assert refused == ["d"]  # once: the check found b and c lost, and d went after their new ids


def test_a_job_accepted_while_the_controller_restarted_waiting_for_a_lost_id_is_cancelled_and_sent_again(
    running, monkeypatch
):
    monkeypatch.setattr(submission, "SLOW_ANSWER", 0.1)
    running.fake.waited_through = {"d": 2}  # d waits for c's old id, which went to someone else
    running.fake.taken_meanwhile, running.fake.retry_delay = 2, 0.2
    running.submit(running.connect(), *JOBS)
    wait_until(lambda: bool(running.fake.cancelled))
    [first_d] = [call.job_id for call in running.fake.calls if call.job == "d"][:1]
    assert running.fake.cancelled == [[first_d]]
    wait_until(lambda: all_submitted(running, unlike={"d": first_d}))
    assert_each_once_in_order(running)


def test_without_a_restart_a_dependency_refusal_stands(running, monkeypatch):
    fake = running.fake
    fake.check_dependencies = True
    submit = fake.submit

    def forgetting_a(asked: SubmitCall) -> str:  # a ended and left the controller
        if asked.script.stem.endswith("_b"):
            fake.jobs.pop(journal_ids(running.agent.journal)["a"], None)
        return submit(asked)

    monkeypatch.setattr(fake, "submit", forgetting_a)
    request = submit_request(chain_bundle("exp", "a", "b"), running.settings)
    reply = running.connect().request(request, expect=Submitted)
    assert isinstance(reply, Submitted) and "Job dependency problem" in reply.error
    assert [call.job for call in fake.calls] == ["a", "b", "b"]  # tried again once, after a check
    assert fake.confirms == []  # the controller did not restart: nothing to look up


def test_an_id_well_below_those_given_out_before_is_a_sign_of_restart():
    watch = ControllerWatch(settle=0, retry_for=0)
    watch.confirms = True
    watch.accepted("slurm", ["1000", "1010"])
    watch.accepted("slurm", ["1005"])  # answered out of order: its call was out with the others
    assert not watch.confirm_due
    watch.accepted("slurm", ["1001"])  # the counter went back: the controller restarted
    assert watch.confirm_due


def test_a_check_that_fails_unexpectedly_is_logged_and_tried_again(running, caplog):
    running.submit(running.connect(), "a")
    running.fake.errors["lookup"] = KeyError("a defect")  # the check's boot_time raises it
    running.agent.controller.suspect()
    wait_until(lambda: "confirming the jobs the scheduler accepted failed" in caplog.text)
    del running.fake.errors["lookup"]
    wait_until(lambda: not running.agent.controller.confirm_due)
    assert running.thread is not None and running.thread.is_alive()


def test_at_start_a_controller_that_did_not_restart_is_asked_only_its_boot_time(tmp_path: Path, monkeypatch):
    fake, journal = FakeScheduler(), Journal(tmp_path / "journal.sqlite")
    with serving(journal, fake, tmp_path, "first") as first:
        first.submit(first.connect(), *JOBS)
        wait_until(lambda: all_submitted(first))
    read: list[float | None] = []
    watched = journal.watched

    def reading(*, begun_before: float | None = None) -> Iterator[Watched]:
        read.append(begun_before)
        return watched(begun_before=begun_before)

    monkeypatch.setattr(journal, "watched", reading)
    with serving(journal, fake, tmp_path, "second") as second:
        wait_until(lambda: not second.agent.controller.confirm_due)
    assert fake.confirms == []  # booted an hour ago: no job of ours was begun before
    assert fake.booted + CLOCK_ALLOWANCE in read  # the jobs begun before it (none), not all of them
    journal.close()
