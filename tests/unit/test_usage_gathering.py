"""The agent's gathering of usage: once per poll, one scheduler call for every job that ended without
usage; asked again while accounting lags, given up after USAGE_WAIT; kept in the journal and read back
(an array's windows together) by `Status(usage=True)`."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from milex_agent.handlers import status
from milex_agent.journal import Journal
from milex_agent.poller import Poller
from milex_agent.usage_gathering import UsageGathering
from milex_common.errors import SchedulerError
from milex_common.model import JobState, JobStatus, TaskStatus
from milex_common.protocol import Status, TrackedJob
from milex_common.usage import NO_ACCOUNTING, NOT_RECORDED, TaskUsage, Usage
from tests.unit.agent_fakes import FakeClock, FakeScheduler, make_agent, wait_until
from tests.unit.served import Served

COMPLETED = JobState.COMPLETED
WAIT = 300.0


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal(tmp_path / "journal.sqlite")
    yield journal
    journal.close()


def used(peak_mib: int, task: int | None = None) -> Usage:
    return Usage(tasks=[TaskUsage(task=task, state="COMPLETED", elapsed=10, max_rss=peak_mib * 2**20)])


def track(journal: Journal, fake: FakeScheduler, key: str, *, part_of: str | None = None) -> str:
    job_id = fake.add()
    job = TrackedJob(key=key, bundle=key.split("/")[0], name=key, job_id="", state=JobState.SUBMITTED)
    journal.begin_many(
        [job], scheduler="fake", machine_path="/m", part_of={key: part_of} if part_of else None
    )
    journal.submitted_many([(key, job_id)])  # (a window has no event of its own)
    return job_id


class Inline:
    """An executor that runs what it is given at once (the poll's worker, in these tests)."""

    def submit(self, call, *args):  # type: ignore[no-untyped-def]
        future: Future[object] = Future()
        future.set_result(call(*args))
        return future


def end(journal: Journal, fake: FakeScheduler, *job_ids: str) -> None:
    """These jobs end, and a poll sees it."""
    for job_id in job_ids:
        fake.set_state(job_id, COMPLETED, 0)
    Poller(journal, lambda kind, path: fake).poll()


def gather(gathering: UsageGathering) -> None:
    """What the server does after each poll: due, then a step that starts and (inline) a step that records."""
    gathering.due = True
    gathering.step(Inline())  # type: ignore[arg-type]
    gathering.step(Inline())  # type: ignore[arg-type]


@pytest.fixture
def fake() -> FakeScheduler:
    return FakeScheduler()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(time.time())


def test_one_usage_call_per_poll_for_every_job_that_ended(journal, fake, clock):
    ids = [track(journal, fake, f"b_20240101000000/j{n}") for n in range(50)]
    fake.used = {job_id: used(100 + n) for n, job_id in enumerate(ids)}
    end(journal, fake, *ids)
    gathering = UsageGathering(journal, lambda kind, path: fake, clock=clock)

    gather(gathering)
    gather(gathering)  # the next poll: nothing left to ask

    assert fake.usage_calls == [ids]
    recorded = journal.usage([f"b_20240101000000/j{n}" for n in range(50)])
    assert recorded["b_20240101000000/j7"] == used(107)
    assert len(recorded) == 50


def test_no_call_before_a_poll_and_none_while_no_job_ended(journal, fake, clock):
    track(journal, fake, "b_20240101000000/running")
    gathering = UsageGathering(journal, lambda kind, path: fake, clock=clock)

    gathering.step(Inline())  # type: ignore[arg-type]
    gather(gathering)

    assert fake.usage_calls == []


def test_a_job_accounting_lacks_yet_is_asked_again_then_recorded_when_it_comes(journal, fake, clock):
    first, late = (
        track(journal, fake, "b_20240101000000/first"),
        track(journal, fake, "b_20240101000000/late"),
    )
    fake.used = {first: used(10)}
    end(journal, fake, first, late)
    gathering = UsageGathering(journal, lambda kind, path: fake, clock=clock)

    gather(gathering)
    fake.used[late] = used(20)
    clock.advance(5)
    gather(gathering)

    assert fake.usage_calls == [[first, late], [late]]
    assert journal.usage(["b_20240101000000/late"]) == {"b_20240101000000/late": used(20)}


def test_an_array_whose_accounting_lacks_a_task_that_ran_is_asked_again_until_it_has_it(journal, fake, clock):
    """slurmdbd records each task of an array on its own: sacct may list task 1 before task 0 (seen on
    cluster1). A task cancelled before it started has no row of its own, and is not waited for."""
    array = track(journal, fake, "b_20240101000000/fan")
    tasks = [TaskStatus(index=index, state=COMPLETED, exit_code=0) for index in (0, 1)]
    tasks.append(TaskStatus(index=2, state=JobState.CANCELLED))
    fake.jobs[array] = JobStatus(job_id=array, state=COMPLETED, exit_code=0, tasks=tasks)
    Poller(journal, lambda kind, path: fake).poll()
    gathering = UsageGathering(journal, lambda kind, path: fake, clock=clock, wait=WAIT)

    fake.used[array] = Usage(tasks=used(2, 1).tasks)  # task 0's account not there yet
    gather(gathering)
    assert journal.usage(["b_20240101000000/fan"]) == {}
    fake.used[array] = Usage(tasks=[*used(1, 0).tasks, *used(2, 1).tasks])
    clock.advance(5)
    gather(gathering)

    assert len(fake.usage_calls) == 2
    [both] = journal.usage(["b_20240101000000/fan"]).values()
    assert [task.task for task in both.tasks] == [0, 1]


def test_an_array_task_never_in_accounting_leaves_the_others_kept_after_the_wait(journal, fake, clock):
    array = track(journal, fake, "b_20240101000000/fan")
    done = [TaskStatus(index=index, state=COMPLETED, exit_code=0) for index in (0, 1)]
    fake.jobs[array] = JobStatus(job_id=array, state=COMPLETED, exit_code=0, tasks=done)
    Poller(journal, lambda kind, path: fake).poll()
    gathering = UsageGathering(journal, lambda kind, path: fake, clock=clock, wait=WAIT)
    fake.used[array] = Usage(tasks=used(2, 1).tasks)

    clock.now = journal.find("b_20240101000000/fan").updated_at + WAIT + 1
    gather(gathering)

    assert journal.usage(["b_20240101000000/fan"]) == {"b_20240101000000/fan": Usage(tasks=used(2, 1).tasks)}


def test_a_job_never_in_accounting_is_given_up_after_the_wait(journal, fake, clock):
    lost = track(journal, fake, "b_20240101000000/lost")
    end(journal, fake, lost)
    gathering = UsageGathering(journal, lambda kind, path: fake, clock=clock, wait=WAIT)
    ended = journal.find("b_20240101000000/lost").updated_at

    clock.now = ended + WAIT - 1
    gather(gathering)
    clock.now = ended + WAIT + 1
    gather(gathering)
    gather(gathering)

    assert len(fake.usage_calls) == 2
    assert journal.usage(["b_20240101000000/lost"]) == {"b_20240101000000/lost": Usage(note=NOT_RECORDED)}


def test_a_cluster_without_accounting_is_said_once_and_is_no_error(journal, fake, clock, caplog):
    caplog.set_level(logging.INFO, logger="milex_agent")
    ids = [track(journal, fake, f"b_20240101000000/j{n}") for n in range(3)]
    fake.used = {job_id: Usage(note=NO_ACCOUNTING) for job_id in ids}
    gathering = UsageGathering(journal, lambda kind, path: fake, clock=clock)

    end(journal, fake, ids[0])
    gather(gathering)
    end(journal, fake, *ids[1:])
    gather(gathering)

    said = [record.message for record in caplog.records if NO_ACCOUNTING in record.message]
    assert len(said) == 1 and not [r for r in caplog.records if r.levelname == "WARNING"]
    assert {u.note for u in journal.usage([f"b_20240101000000/j{n}" for n in range(3)]).values()} == {
        NO_ACCOUNTING
    }


def test_accounting_that_fails_is_asked_again_at_the_next_poll(journal, fake, clock):
    job_id = track(journal, fake, "b_20240101000000/j")
    end(journal, fake, job_id)
    fake.errors["usage"] = SchedulerError("sacct failed: Connection refused")
    gathering = UsageGathering(journal, lambda kind, path: fake, clock=clock)

    gather(gathering)
    del fake.errors["usage"]
    fake.used[job_id] = used(5)
    gather(gathering)

    assert journal.usage(["b_20240101000000/j"]) == {"b_20240101000000/j": used(5)}


def test_an_array_cut_in_windows_reads_as_one_with_each_task_by_its_own_index(journal, fake, clock):
    array = "b_20240101000000/fan"
    journal.begin(TrackedJob(key=array, bundle="b", name="fan", job_id="", state=JobState.SUBMITTED),
                  scheduler="fake", machine_path="/m")  # fmt: skip
    journal.split(array, 2, [(f"{array}~0", 2), (f"{array}~2", 2)])
    windows = [track(journal, fake, f"{array}~{offset}", part_of=array) for offset in (0, 2)]
    fake.used = {windows[0]: Usage(tasks=[used(1, 0).tasks[0], used(2, 1).tasks[0]]),
                 windows[1]: Usage(tasks=[used(3, 0).tasks[0], used(4, 1).tasks[0]])}  # fmt: skip
    end(journal, fake, *windows)

    gather(gathering := UsageGathering(journal, lambda kind, path: fake, clock=clock))

    assert gathering.queries == 1
    [merged] = journal.usage([array]).values()
    assert [(t.task, t.max_rss // 2**20) for t in merged.tasks] == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_status_with_usage_carries_it_by_key_and_without_it_stays_light(journal, fake, clock):
    job_id = track(journal, fake, "b_20240101000000/j")
    track(journal, fake, "b_20240101000000/running")
    fake.used[job_id] = used(42)
    end(journal, fake, job_id)
    gather(UsageGathering(journal, lambda kind, path: fake, clock=clock))
    agent = make_agent(journal, fake)

    light = status(agent, Status(bundle="b"))
    full = status(agent, Status(bundle="b", usage=True))

    assert light.usage == {}
    assert full.usage == {"b_20240101000000/j": used(42)}


def test_the_server_gathers_after_its_polls_on_the_poll_worker(served: Served):
    served.start()
    connection = served.connect()
    reply = served.submit(connection, "a")
    [job] = reply.jobs
    served.fake.used[job.job_id] = used(64)
    served.fake.set_state(job.job_id, COMPLETED, 0)

    wait_until(lambda: served.agent.journal.usage([job.key]))
    assert served.agent.journal.usage([job.key]) == {job.key: used(64)}
    assert served.fake.usage_calls == [[job.job_id]]


def test_a_journal_of_an_earlier_release_gains_the_table_and_asks_nothing_of_its_old_jobs(tmp_path, fake):
    from tests.unit.test_release_690690e import restore

    journal = Journal(restore(tmp_path))
    try:
        keys = [job.key for job in journal.jobs()]
        ended = [job for job in journal.jobs() if job.state.finished]
        assert ended and journal.usage(keys) == {}
        gathering = UsageGathering(journal, lambda kind, path: fake)
        gather(gathering)
        assert fake.usage_calls == []  # they ended long ago: no accounting to wait for
    finally:
        journal.close()
