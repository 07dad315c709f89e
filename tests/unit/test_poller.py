"""The poller: one batched state query per scheduler per poll, and a backing-off interval."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from milex_agent.journal import Journal
from milex_agent.poller import Poller
from milex_common.model import JobState, JobStatus, TaskStatus
from milex_common.protocol import TrackedJob
from tests.unit.agent_fakes import FakeClock, FakeScheduler

RUNNING, COMPLETED = JobState.RUNNING, JobState.COMPLETED


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal(tmp_path / "journal.sqlite")
    yield journal
    journal.close()


class Schedulers:
    """A fake per (kind, machine path) asked for, so a test sees which the poller asked."""

    def __init__(self) -> None:
        self.made: dict[tuple[str, str], FakeScheduler] = {}

    def __call__(self, kind: str, machine_path: str) -> FakeScheduler:
        return self.made.setdefault(
            (kind, machine_path), FakeScheduler(first_id=1000 + 1000 * len(self.made))
        )

    @property
    def state_calls(self) -> int:
        return sum(len(fake.state_calls) for fake in self.made.values())


def track(
    journal: Journal, scheduler: FakeScheduler, key: str, *, kind: str = "slurm", path: str = "/m"
) -> str:
    """A job `scheduler` has (pending) that the journal tracks; its id."""
    job_id = scheduler.add()
    bundle = key.split("/")[0]
    job = TrackedJob(key=key, bundle=bundle, name=key, job_id="", state=JobState.SUBMITTED)
    journal.begin(job, scheduler=kind, machine_path=path)
    journal.submitted(key, job_id)
    return job_id


def test_one_states_call_per_poll_for_many_jobs_of_many_bundles(journal):
    schedulers = Schedulers()
    slurm = schedulers("slurm", "")
    ids = [track(journal, slurm, f"b{b}_20240101000000/j{j}") for b in range(20) for j in range(10)]
    poller = Poller(journal, schedulers)
    events = poller.poll()
    assert len(slurm.state_calls) == 1
    assert sorted(slurm.state_calls[0]) == sorted(ids)
    assert {e.state for e in events} == {JobState.PENDING}
    assert len(events) == 200
    poller.poll()
    assert len(slurm.state_calls) == 2
    assert poller.queries == 2


def test_local_jobs_of_two_machine_paths_are_two_queries_slurm_jobs_one(journal):
    schedulers = Schedulers()
    local_a, local_b, slurm = schedulers("local", "/a"), schedulers("local", "/b"), schedulers("slurm", "")
    a = [track(journal, local_a, f"a/{i}", kind="local", path="/a") for i in range(3)]
    b = [track(journal, local_b, f"b/{i}", kind="local", path="/b") for i in range(2)]
    s = [track(journal, slurm, f"s{i}/{i}", kind="slurm", path=p) for i, p in enumerate(["/a", "/b", "/c"])]
    Poller(journal, schedulers).poll()
    assert [sorted(call) for call in local_a.state_calls] == [sorted(a)]
    assert [sorted(call) for call in local_b.state_calls] == [sorted(b)]
    assert [sorted(call) for call in slurm.state_calls] == [sorted(s)]
    assert schedulers.state_calls == 3
    assert set(schedulers.made) == {("local", "/a"), ("local", "/b"), ("slurm", "")}


def test_local_job_ids_that_collide_across_machine_paths_update_their_own_jobs(journal):
    schedulers = Schedulers()
    first, second = FakeScheduler(), FakeScheduler()  # both number their jobs from 1000
    schedulers.made.update({("local", "/a"): first, ("local", "/b"): second})
    track(journal, first, "a/x", kind="local", path="/a")
    track(journal, second, "b/x", kind="local", path="/b")
    first.set_state("1000", COMPLETED, 0)
    second.set_state("1000", RUNNING)
    poller = Poller(journal, schedulers)
    events = poller.poll()
    assert {(e.key, e.state) for e in events} == {("a/x", COMPLETED), ("b/x", RUNNING)}


def test_finished_jobs_are_not_asked_about_again(journal):
    schedulers = Schedulers()
    slurm = schedulers("slurm", "")
    done, running = track(journal, slurm, "x/done"), track(journal, slurm, "x/running")
    slurm.set_state(done, COMPLETED, 0)
    poller = Poller(journal, schedulers)
    poller.poll()
    poller.poll()
    assert sorted(slurm.state_calls[0]) == sorted([done, running])
    assert slurm.state_calls[1] == [running]


def test_no_tracked_jobs_means_no_query(journal):
    schedulers = Schedulers()
    assert Poller(journal, schedulers).poll() == []
    assert schedulers.made == {}


def test_jobs_the_scheduler_does_not_report_stay_as_they_were(journal):
    schedulers = Schedulers()
    slurm = schedulers("slurm", "")
    job_id = track(journal, slurm, "x/gone")
    del slurm.jobs[job_id]
    assert Poller(journal, schedulers).poll() == []
    assert journal.find("x/gone").state is JobState.SUBMITTED


def test_events_returned_carry_the_new_states(journal):
    schedulers = Schedulers()
    slurm = schedulers("slurm", "")
    job_id = track(journal, slurm, "x/a")
    poller = Poller(journal, schedulers)
    poller.poll()
    slurm.set_state(job_id, JobState.FAILED, 2, "NonZeroExitCode")
    [event] = poller.poll()
    assert (event.key, event.job_id, event.state, event.exit_code, event.reason) == (
        "x/a", job_id, JobState.FAILED, 2, "NonZeroExitCode",
    )  # fmt: skip
    assert event.seq == journal.last_seq
    assert poller.poll() == []


# ---- backoff -------------------------------------------------------------------------------------


def test_backoff_doubles_to_the_ceiling_while_nothing_changes(journal):
    clock = FakeClock()
    schedulers = Schedulers()
    track(journal, schedulers("slurm", ""), "x/a")
    poller = Poller(journal, schedulers, interval=1.0, max_interval=8.0, clock=clock)
    assert poller.due_in() == 0
    assert poller.poll() != []  # SUBMITTED -> PENDING
    assert poller.due_in() == 1.0
    waits = []
    for _ in range(5):
        clock.advance(poller.due_in())
        assert poller.due_in() == 0
        assert poller.poll() == []
        waits.append(poller.due_in())
    assert waits == [2.0, 4.0, 8.0, 8.0, 8.0]


def test_backoff_resets_when_something_changes(journal):
    clock = FakeClock()
    schedulers = Schedulers()
    slurm = schedulers("slurm", "")
    job_id = track(journal, slurm, "x/a")
    poller = Poller(journal, schedulers, interval=1.0, max_interval=8.0, clock=clock)
    for _ in range(4):
        poller.poll()
    assert poller.due_in() == 8.0
    clock.advance(8.0)
    slurm.set_state(job_id, RUNNING)
    assert len(poller.poll()) == 1
    assert poller.due_in() == 1.0


def test_nudge_makes_a_poll_due_within_the_base_interval(journal):
    clock = FakeClock()
    schedulers = Schedulers()
    track(journal, schedulers("slurm", ""), "x/a")
    poller = Poller(journal, schedulers, interval=1.0, max_interval=8.0, clock=clock)
    for _ in range(4):
        poller.poll()
    assert poller.due_in() == 8.0
    clock.advance(3.0)
    poller.nudge()
    assert poller.due_in() == 1.0  # not at once: a burst of submissions is not a burst of queries
    clock.advance(1.0)
    assert poller.poll() == []
    assert poller.due_in() == 2.0  # the doubling starts over from the base interval


def test_due_in_counts_down_with_the_clock(journal):
    clock = FakeClock()
    poller = Poller(journal, Schedulers(), interval=2.0, max_interval=30.0, clock=clock)
    poller.poll()
    assert poller.due_in() == 4.0
    clock.advance(1.5)
    assert poller.due_in() == 2.5
    clock.advance(10)
    assert poller.due_in() == 0


def test_a_ceiling_below_the_interval_is_raised_to_it(journal):
    clock = FakeClock()
    poller = Poller(journal, Schedulers(), interval=5.0, max_interval=1.0, clock=clock)
    poller.poll()
    assert poller.due_in() == 5.0


def test_a_poll_hands_the_journal_only_the_statuses_that_differ_from_its_own(journal):
    schedulers = Schedulers()
    slurm = schedulers("slurm", "")
    ids = [track(journal, slurm, f"x/{i}") for i in range(5)]
    poller = Poller(journal, schedulers)
    assert len(poller.poll()) == 5  # SUBMITTED -> PENDING: every one is news
    assert poller.query(poller.plan()) == []  # nothing changed: the journal is not asked
    slurm.set_state(ids[2], RUNNING)
    updates = poller.query(poller.plan())
    assert [(key, status.state) for key, status in updates] == [("x/2", RUNNING)]
    assert [(e.key, e.state) for e in poller.apply(updates)] == [("x/2", RUNNING)]


def test_a_new_reason_alone_is_handed_to_the_journal(journal):
    schedulers = Schedulers()
    slurm = schedulers("slurm", "")
    job_id = track(journal, slurm, "x/1")
    poller = Poller(journal, schedulers)
    poller.poll()
    slurm.jobs[job_id] = msgspec.structs.replace(slurm.jobs[job_id], reason="Resources")
    assert poller.poll() == []  # no event for a reason alone, but the journal keeps it
    assert journal.find("x/1").reason == "Resources"
    assert poller.query(poller.plan()) == []


def test_an_arrays_status_is_always_handed_to_the_journal(journal):
    schedulers = Schedulers()
    slurm = schedulers("slurm", "")
    job_id = track(journal, slurm, "x/array")
    tasks = [TaskStatus(index=0, state=JobState.PENDING), TaskStatus(index=1, state=JobState.PENDING)]
    slurm.jobs[job_id] = JobStatus(job_id=job_id, state=JobState.PENDING, tasks=tasks)
    poller = Poller(journal, schedulers)
    poller.poll()
    assert [key for key, _ in poller.query(poller.plan())] == [
        "x/array"
    ]  # its tasks: the journal's to compare
