"""Arrays bigger than the scheduler takes, through the agent's queue: cut in windows, each submitted
once, seen by the user as one array (one job, one id, one status)."""

from __future__ import annotations

from pathlib import Path

import pytest

from milex_agent.handlers import handle
from milex_agent.state import Agent
from milex_common.model import Bundle, Job, JobState, MachineSettings, SlurmOptions
from milex_common.protocol import Cancel, Cancelled, Error, LogChunk, Logs, Submitted
from tests.unit.agent_fakes import (
    CREATED,
    PEER,
    FakeScheduler,
    poll_and_release,
    submit_request,
    submitted,
)

QUEUED, COMPLETED, FAILED = JobState.QUEUED, JobState.COMPLETED, JobState.FAILED


@pytest.fixture
def fake() -> FakeScheduler:
    return FakeScheduler(max_array_size=10)


def bundle_of(**jobs: tuple[str | None, list[str], str]) -> Bundle:
    """Jobs by name: (array spec, dependencies, dependency type)."""
    return Bundle(name="sweep", created=CREATED, jobs={
        name: Job(name=name, script="run.py", dependencies=after,
                  slurm=SlurmOptions(array=array, dependency_type=kind))
        for name, (array, after, kind) in jobs.items()
    })  # fmt: skip


def submit(agent: Agent, bundle: Bundle, settings: MachineSettings) -> Submitted:
    return submitted(agent, submit_request(bundle, settings))


def test_an_array_past_max_array_size_goes_as_windows_and_is_seen_as_one(agent, fake, settings):
    reply = submit(agent, bundle_of(big=("0-24", [], "afterok")), settings)
    asked = [call.asked for call in fake.calls]
    assert [(call.script.name, call.text.count("MILEX_ARRAY_OFFSET=")) for call in asked] == [
        ("sweep_20240101000000_big~0.sh", 0), ("sweep_20240101000000_big~10.sh", 1),
        ("sweep_20240101000000_big~20.sh", 1),
    ]  # fmt: skip
    assert ["#SBATCH --array=0-9" in c.text and "#SBATCH --array=0-4" not in c.text for c in asked] == [
        True, True, False,
    ]  # fmt: skip
    [job] = reply.jobs
    assert (job.name, job.job_id, job.state) == ("big", "1000", JobState.SUBMITTED)
    [shown] = agent.journal.jobs()
    assert shown.key == job.key
    for job_id in ("1000", "1001"):
        fake.set_state(job_id, COMPLETED, exit_code=0)
    poll_and_release(agent)
    assert agent.journal.jobs()[0].state is JobState.PENDING  # one window still pending
    fake.set_state("1002", FAILED, exit_code=3)
    poll_and_release(agent)
    [done] = agent.journal.jobs()
    assert (done.state, done.exit_code) == (FAILED, 3)
    assert [(e.name, e.state) for e in agent.journal.events_since(0)] == [
        ("big", JobState.SUBMITTED), ("big", JobState.PENDING), ("big", FAILED),
    ]  # fmt: skip


def test_windows_go_as_room_frees_up_and_dependents_wait_for_every_window(agent, fake, settings):
    fake.max_submitted = 10
    bundle = bundle_of(big=("0-24", [], "afterok"), after=(None, ["big"], "afterok"))
    reply = submit(agent, bundle, settings)
    assert [job.state for job in reply.jobs] == [JobState.SUBMITTED, QUEUED]
    assert len(fake.calls) == 1
    for job_id in ("1000", "1001"):
        fake.set_state(job_id, COMPLETED, exit_code=0)
        poll_and_release(agent)
    # The last window and the dependent fit together; it waits only for the window not ended yet.
    assert [(call.job, call.asked.after) for call in fake.calls] == [
        ("big~0", []), ("big~10", []), ("big~20", []), ("after", ["1002"]),
    ]  # fmt: skip


def test_aftercorr_pairs_windows_and_afterok_waits_for_them_all(agent, fake, settings):
    bundle = bundle_of(
        big=("0-24", [], "afterok"), corr=("0-24", ["big"], "aftercorr"), ok=(None, ["big"], "afterok")
    )
    submit(agent, bundle, settings)
    assert [(call.job, call.asked.after, call.asked.dependency_type) for call in fake.calls] == [
        ("big~0", [], "afterok"), ("big~10", [], "afterok"), ("big~20", [], "afterok"),
        ("corr~0", ["1000"], "aftercorr"), ("corr~10", ["1001"], "aftercorr"),
        ("corr~20", ["1002"], "aftercorr"),
        ("ok", ["1000", "1001", "1002"], "afterok"),
    ]  # fmt: skip


def test_cancel_of_a_cut_array_cancels_every_window_and_queues_none(agent, fake, settings):
    fake.max_submitted = 10
    bundle = bundle_of(big=("0-24", [], "afterok"))
    submit(agent, bundle, settings)
    reply = handle(agent, PEER, Cancel(id="c", bundle=bundle.stem))
    assert isinstance(reply, Cancelled) and reply.job_ids == ["1000"] and reply.queued == 2
    fake.set_state("1000", JobState.CANCELLED)
    poll_and_release(agent)
    poll_and_release(agent)
    assert len(fake.calls) == 1
    assert agent.journal.jobs()[0].state is JobState.CANCELLED


def test_a_window_refused_for_a_limit_waits_and_goes_later(agent, fake, settings):
    fake.limit = 2  # SLURM's MaxSubmitJobs, unread: the third window is refused
    reply = submit(agent, bundle_of(big=("0-24", [], "afterok")), settings)
    assert reply.error == "" and [job.state for job in reply.jobs] == [JobState.SUBMITTED]
    fake.set_state("1000", COMPLETED, exit_code=0)
    poll_and_release(agent)
    assert [call.job for call in fake.calls if call.job_id] == ["big~0", "big~10", "big~20"]


def test_the_log_of_a_task_is_read_from_its_window(agent, fake, settings):
    submit(agent, bundle_of(big=("0-24", [], "afterok")), settings)
    log = Path(settings.path) / "slurm" / "sweep_20240101000000_big~10-1001_5.out"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("task fifteen\n")
    reply = handle(agent, PEER, Logs(id="l", job_id="1000", array_task=15))
    assert isinstance(reply, LogChunk) and reply.data == b"task fifteen\n", reply


@pytest.mark.parametrize("task", [-1, 27, 40])  # 27: in the last window's range, not in the spec
def test_the_log_of_a_task_outside_every_window_is_not_found(agent, fake, settings, task):
    submit(agent, bundle_of(big=("0-24", [], "afterok")), settings)
    reply = handle(agent, PEER, Logs(id="l", job_id="1000", array_task=task))
    assert isinstance(reply, Error) and reply.code == "not_found" and f"no task {task}" in reply.message
