"""The agent's own queue on a real journal with an in-memory scheduler that has a limit."""

from __future__ import annotations

import pytest

from milex_agent.handlers import cancel_late, handle
from milex_agent.job_queue import enqueue
from milex_agent.journal import Journal
from milex_agent.room import RELEASE_PER_POLL
from milex_agent.state import Agent
from milex_common.errors import SchedulerError
from milex_common.model import Bundle, Job, JobState, MachineSettings, SlurmOptions
from milex_common.protocol import Cancel, Cancelled, Submitted, TrackedJob
from tests.unit.agent_fakes import (
    CREATED,
    PEER,
    FakeScheduler,
    chain_bundle,
    make_agent,
    poll_and_release,
    submit_request,
    submitted,
)

QUEUED, COMPLETED, FAILED, CANCELLED = (
    JobState.QUEUED,
    JobState.COMPLETED,
    JobState.FAILED,
    JobState.CANCELLED,
)


@pytest.fixture
def fake() -> FakeScheduler:
    return FakeScheduler(max_submitted=2)


def independent(count: int, name: str = "sweep", **slurm: str) -> Bundle:
    jobs = {
        f"j{i:03d}": Job(name=f"j{i:03d}", script="run.py", slurm=SlurmOptions(**slurm)) for i in range(count)
    }
    return Bundle(name=name, created=CREATED, jobs=jobs)


def submit(agent: Agent, bundle: Bundle, settings: MachineSettings) -> Submitted:
    return submitted(agent, submit_request(bundle, settings))


def finish_all(fake: FakeScheduler, state: JobState = COMPLETED) -> None:
    for job_id, status in list(fake.jobs.items()):
        if not status.state.finished:
            fake.set_state(job_id, state, exit_code=0 if state is COMPLETED else 1)


def states(agent: Agent, bundle: Bundle) -> dict[str, JobState]:
    return {job.name: job.state for job in agent.journal.jobs(bundle=bundle.stem)}


def test_a_bundle_bigger_than_the_limit_goes_in_as_room_frees_up(agent, fake, settings):
    bundle = independent(5)
    reply = submit(agent, bundle, settings)
    assert reply.error == ""
    assert [(job.name, job.state) for job in reply.jobs] == [
        ("j000", JobState.SUBMITTED), ("j001", JobState.SUBMITTED), ("j002", QUEUED), ("j003", QUEUED),
        ("j004", QUEUED),
    ]  # fmt: skip
    assert all("MaxSubmitJobs=2" in job.reason for job in reply.jobs[2:])
    assert poll_and_release(agent) == []  # nothing ended: no room, no release, no sbatch
    assert len(fake.calls) == 2
    finish_all(fake)
    poll_and_release(agent)
    assert len(fake.calls) == 4
    finish_all(fake)
    poll_and_release(agent)
    finish_all(fake)
    poll_and_release(agent)
    assert sorted(call.job for call in fake.calls) == sorted(bundle.jobs)  # each once
    assert set(states(agent, bundle).values()) == {COMPLETED}
    assert agent.journal.queued() == 0
    assert agent.journal.queued_requests() == []  # the kept request is dropped once nothing waits


def test_a_chain_is_released_in_order_without_the_ids_of_ended_dependencies(agent, fake, settings):
    bundle = chain_bundle("chain", "a", "b", "c", "d")  # c runs afterany b, the others afterok
    submit(agent, bundle, settings)
    assert [(call.job, call.asked.after) for call in fake.calls] == [("a", []), ("b", ["1000"])]
    fake.set_state("1000", COMPLETED, exit_code=0)  # a ended: room for c, which waits for b
    poll_and_release(agent)
    assert [(call.job, call.asked.after) for call in fake.calls[2:]] == [("c", ["1001"])]
    finish_all(fake)  # b and c ended: d goes without a dependency that SLURM may have forgotten
    poll_and_release(agent)
    assert [(call.job, call.asked.after) for call in fake.calls[3:]] == [("d", [])]


def test_a_queued_job_whose_dependency_failed_is_never_run_and_says_why(agent, fake, settings):
    fake.max_submitted = 1
    bundle = chain_bundle("chain", "a", "b", "c")  # b afterok a, c afterany b
    submit(agent, bundle, settings)
    fake.set_state("1000", FAILED, exit_code=1)
    agent.poller.poll()
    poll_and_release(agent)
    jobs = {job.name: job for job in agent.journal.jobs(bundle=bundle.stem)}
    assert (jobs["b"].state, jobs["b"].job_id) == (CANCELLED, "")
    assert "never run: its dependency 'a' ended FAILED" in jobs["b"].reason
    assert [(call.job, call.asked.after) for call in fake.calls] == [("a", []), ("c", [])]  # afterany: c runs
    events = [(event.name, event.state) for event in agent.journal.events_since(0)]
    assert ("b", CANCELLED) in events


def test_the_machines_max_submitted_below_the_clusters_limit_is_honoured(agent, fake, settings):
    fake.max_submitted = None  # the cluster sets none
    reply = submit(agent, independent(3), MachineSettings(name="c", path=settings.path, max_submitted=1))
    assert [job.state for job in reply.jobs] == [JobState.SUBMITTED, QUEUED, QUEUED]
    assert "max_submitted=1 in the machine's configuration" in reply.jobs[1].reason


def test_a_refusal_for_a_limit_the_agent_could_not_read_queues_the_job_again(agent, fake, settings):
    fake.max_submitted, fake.limit = None, 2  # the cluster enforces 2 but says nothing of it
    reply = submit(agent, independent(4), settings)
    assert reply.error == ""
    assert [job.state for job in reply.jobs] == [JobState.SUBMITTED, JobState.SUBMITTED, QUEUED, QUEUED]
    assert "job submit limit" in reply.jobs[2].reason
    assert (
        poll_and_release(agent) == []
    )  # closed until one of ours ends: no sbatch that would be refused again
    assert len(fake.calls) == 3
    fake.set_state("1000", COMPLETED, exit_code=0)
    poll_and_release(agent)
    assert [call.job for call in fake.calls if call.job_id] == ["j000", "j001", "j002"]


def test_a_restarted_agent_releases_what_its_predecessor_kept(tmp_path, fake, settings):
    path = tmp_path / "agent" / "journal.sqlite"
    first = Journal(path)
    bundle = independent(4)
    submit(make_agent(first, fake), bundle, settings)
    first.close()  # as after kill -9: only the journal remains
    finish_all(fake)
    journal = Journal(path)
    agent = make_agent(journal, fake)
    poll_and_release(agent)
    finish_all(fake)
    poll_and_release(agent)
    assert sorted(call.job for call in fake.calls) == sorted(bundle.jobs)
    assert set(states(agent, bundle).values()) == {COMPLETED}
    journal.close()


def test_cancel_takes_queued_jobs_out_and_none_of_them_is_ever_submitted(agent, fake, settings):
    bundle = independent(5)
    submit(agent, bundle, settings)
    reply = handle(agent, PEER, Cancel(id="c", bundle=bundle.stem))
    assert isinstance(reply, Cancelled)
    assert (reply.job_ids, reply.queued) == (["1000", "1001"], 3)
    poll_and_release(agent)
    poll_and_release(agent)
    assert len(fake.calls) == 2
    assert set(states(agent, bundle).values()) == {CANCELLED}
    assert agent.journal.queued() == 0


def test_a_poll_releases_a_bounded_number_of_jobs(agent, fake, settings):
    fake.max_submitted = 10
    submit(agent, independent(2 * RELEASE_PER_POLL + 20), settings)
    fake.max_submitted = None  # the cluster's limit is lifted: room for every job at once
    agent.rooms.clear()
    finish_all(fake)
    poll_and_release(agent)
    assert len(fake.calls) == 10 + RELEASE_PER_POLL
    poll_and_release(agent)
    assert len(fake.calls) == 10 + 2 * RELEASE_PER_POLL


def test_a_refusal_met_by_a_release_is_kept_with_its_reason_for_the_user(agent, fake, settings):
    fake.max_submitted = 1
    fake.refuse["j001"] = "sbatch: error: Batch job submission failed: Invalid partition name specified"
    bundle = independent(3)
    submit(agent, bundle, settings)
    finish_all(fake)
    poll_and_release(
        agent
    )  # j001 is refused: no client waits for this release, the journal keeps what happened
    finish_all(fake)
    poll_and_release(agent)
    jobs = {job.name: job for job in agent.journal.jobs(bundle=bundle.stem)}
    assert [(name, job.state) for name, job in jobs.items()] == [
        ("j000", COMPLETED), ("j001", CANCELLED), ("j002", CANCELLED),
    ]  # fmt: skip
    assert "never submitted: " in jobs["j001"].reason and "Invalid partition" in jobs["j001"].reason
    assert "stopped at a refusal" in jobs["j002"].reason
    assert [call.job for call in fake.calls] == ["j000", "j001"]


def test_a_job_whose_sbatch_was_on_its_way_when_its_bundle_was_cancelled_is_cancelled_once_known(
    agent, fake, settings
):
    bundle = independent(2)
    request = submit_request(bundle, settings)
    enqueue(agent, request)
    key = request.keys["j000"]
    planned = TrackedJob(key=key, bundle=bundle.stem, name="j000", job_id="", state=JobState.SUBMITTED)
    agent.journal.begin(planned, scheduler="fake", machine_path=settings.path)  # its sbatch is on its way
    reply = handle(agent, PEER, Cancel(id="c", bundle=bundle.stem))
    assert isinstance(reply, Cancelled) and (reply.job_ids, reply.queued) == ([], 1)
    cancel_late(agent)
    assert fake.cancelled == [] and agent.cancel_requested == {key}  # still on its way
    agent.journal.submitted(key, fake.add())  # its answer comes
    cancel_late(agent)
    assert fake.cancelled == [[agent.journal.find(key).job_id]] and not agent.cancel_requested


def test_limits_that_cannot_be_read_leave_only_slurms_refusals_to_hold_jobs(agent, fake, settings):
    fake.errors["limits"] = SchedulerError("sacctmgr: error: Problem talking to the database")
    fake.limit = 2
    reply = submit(agent, independent(3), settings)
    assert [job.state for job in reply.jobs] == [JobState.SUBMITTED, JobState.SUBMITTED, QUEUED]
