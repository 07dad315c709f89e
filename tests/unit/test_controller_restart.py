"""A controller that restarts from its saved state and forgets the jobs it accepted just before: they
are confirmed by their comment, the lost ones submitted again once, their dependents re-pointed, and the
journal never keeps one id for two jobs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from milex_agent.journal import Journal
from milex_agent.ledger import comment_of
from milex_agent.restarts import RestartWatch
from milex_agent.state import Agent
from milex_common.model import JobState, MachineSettings
from milex_common.protocol import TrackedJob
from tests.unit.agent_fakes import (
    FakeScheduler,
    chain_bundle,
    make_agent,
    poll_and_release,
    submit_request,
    submitted,
)

STEM = "exp_20240101000000"


@pytest.fixture
def fake() -> FakeScheduler:
    return FakeScheduler(max_submitted=1000)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal(tmp_path / "journal.sqlite")
    yield journal
    journal.close()


@pytest.fixture
def agent(journal: Journal, fake: FakeScheduler) -> Agent:
    return make_agent(journal, fake)


@pytest.fixture
def settings(tmp_path: Path) -> MachineSettings:
    return MachineSettings(name="cluster", path=str(tmp_path / "milex"))


def ids(journal: Journal) -> dict[str, str]:
    return {job.name: job.job_id for job in journal.jobs(bundle=STEM)}


def settle(agent: Agent, watch: RestartWatch) -> None:
    """Step the watch until it has nothing in question, then let the queue release."""
    for _ in range(10):
        watch.next_at = 0.0
        watch.step()
        if watch.confirming is None and watch.reading is None:
            break
    poll_and_release(agent)


def assert_exactly_once(fake: FakeScheduler, journal: Journal, names: str) -> None:
    """Each job once in the scheduler, under the id the journal has, and no id kept for two jobs."""
    recorded = ids(journal)
    assert sorted(recorded) == sorted(names)
    assert {fake.by_comment.get(comment_of(f"{STEM}/{name}"), [None])[0] for name in names} == set(
        recorded.values()
    )
    assert all(len(found) == 1 for found in fake.by_comment.values()), fake.by_comment
    assert len(set(recorded.values())) == len(recorded)


def test_an_id_handed_out_again_is_taken_from_the_job_that_had_it(journal):
    for key in ("k/a", "k/b"):
        journal.begin(TrackedJob(key=key, bundle="k", name=key[-1], job_id="", state=JobState.SUBMITTED),
                      scheduler="slurm", machine_path="/m")  # fmt: skip
    journal.submitted("k/a", "1001")
    journal.submitted("k/b", "1001")  # a restarted controller forgot a and gave its id to b
    a, b = journal.find("k/a"), journal.find("k/b")
    assert a is not None and b is not None
    assert (a.job_id, a.state) == ("", JobState.SUBMITTED)  # in doubt: looked up by its comment
    assert b.job_id == "1001"
    assert [row.job.key for row in journal.in_doubt()] == ["k/a"]


def test_jobs_forgotten_by_a_restart_are_submitted_again_once_and_their_dependents_repointed(
    agent, fake, journal, settings
):
    watch = RestartWatch(agent)
    bundle = chain_bundle("exp", "a", "b", "c", "d", "e")
    fake.restart_after = {"c": 2}  # killed after c: b and c were never saved; d goes to the new one
    submitted(agent, submit_request(bundle, settings))
    given = [job_id for job_id in ids(journal).values() if job_id]
    assert len(given) == len(set(given)) == 3  # d and e got the ids of b and c: those are in doubt
    settle(agent, watch)
    assert_exactly_once(fake, journal, "abcde")
    recorded = ids(journal)
    # Each job waits for its own dependency's id, those submitted again and those re-pointed alike.
    for job, dependency in zip("bcde", "abcd", strict=True):
        assert fake.after_of[recorded[job]] == [recorded[dependency]], (job, fake.after_of)
    assert [job_id for job_id, _ in fake.repointed] == [recorded["d"]]
    assert len(fake.calls) == 5 + 2  # b and c once more, nothing else


def test_a_restart_noticed_by_its_boot_time_confirms_recent_jobs_and_resubmits_the_lost(
    agent, fake, journal, settings
):
    """sbatch retried across the restart on its own: no call failed, only the boot time tells."""
    watch = RestartWatch(agent)
    submitted(agent, submit_request(chain_bundle("exp", "a", "b", "c"), settings))
    settle(agent, watch)  # the controller as first seen: every job confirmed
    before = ids(journal)
    fake.restart(forget=1)  # c is gone, and its id free again
    assert fake.lookup([comment_of(f"{STEM}/c")]) == {}
    settle(agent, watch)
    assert_exactly_once(fake, journal, "abc")
    after = ids(journal)
    assert (after["a"], after["b"]) == (before["a"], before["b"])
    assert fake.after_of[after["c"]] == [after["b"]]


def test_a_controller_that_did_not_restart_costs_one_boot_reading_and_submits_nothing(
    agent, fake, journal, settings
):
    watch = RestartWatch(agent)
    submitted(agent, submit_request(chain_bundle("exp", "a", "b", "c"), settings))
    settle(agent, watch)
    lookups = len(fake.lookups)
    settle(agent, watch)
    assert len(fake.lookups) == lookups and len(fake.calls) == 3
    assert_exactly_once(fake, journal, "abc")
