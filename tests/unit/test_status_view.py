"""`milex status` when the agent cannot be reached: the last known states, from the local records."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from milex.cli.jobs import status
from milex.cli.status_view import OFFLINE
from milex.records import Submission, SubmittedJobRecord, save_submission
from milex_common.connection import AgentUnavailable
from milex_common.model import JobState
from milex_common.protocol import Event, StatusReply, TrackedJob


class Unreachable:
    def tracked(self, job_ids: object = (), bundle: str = "", usage: bool = False) -> object:
        raise AgentUnavailable("no answer from the agent within 30 s")


@pytest.fixture
def recorded(milex_config, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("milex.machine.submitter.submitter_for", lambda machine: Unreachable())
    run = Submission(bundle="exp_20240101000000", machine="local", submitted_at="2024-01-01T00:00:01",
                     run_id="20240101000001-0a1b2c3d")  # fmt: skip
    run.jobs["a"] = SubmittedJobRecord(job_id="17", state=JobState.FAILED, exit_code=137, script="/s/a.sh")
    milex_config.jobs_dir.mkdir(parents=True, exist_ok=True)
    (milex_config.jobs_dir / "exp_20240101000000.json").write_text('{"a": {"script": "app"}}')
    save_submission(milex_config.jobs_dir, run)
    return milex_config


def test_status_json_without_the_agent_prints_the_last_known_jobs_as_json(recorded) -> None:
    result = CliRunner().invoke(status, ["exp", "--json"])
    assert result.exit_code == OFFLINE, result.output
    [job] = json.loads(result.stdout)
    assert job == {
        "job_id": "17", "state": "FAILED", "exit_code": 137, "bundle": "exp_20240101000000", "name": "a",
        "key": "exp_20240101000000/a/20240101000001-0a1b2c3d", "script": "/s/a.sh",
    }  # fmt: skip
    assert "no answer from the agent" in result.stderr


def test_status_without_the_agent_shows_the_last_known_states(recorded) -> None:
    result = CliRunner().invoke(status, ["exp"])
    assert result.exit_code == OFFLINE, result.output
    assert "17" in result.stdout and "FAILED" in result.stdout


class Answering:
    """An agent that tracks a queued job and a running one, then reports their changes."""

    def __init__(self) -> None:
        self.jobs = [
            TrackedJob(job_id="", state=JobState.QUEUED, key="b_1/queued/r", bundle="b_1", name="queued"),
            TrackedJob(
                job_id="41", state=JobState.RUNNING, key="b_1/running/r", bundle="b_1", name="running"
            ),
        ]

    def tracked(self, job_ids: object = (), bundle: str = "", usage: bool = False) -> object:
        return StatusReply(jobs=self.jobs, last_seq=7)


def test_a_watch_without_a_terminal_prints_the_table_a_line_per_change_and_the_final_table(
    milex_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = [
        Event(seq=8, key="b_1/queued/r", bundle="b_1", name="queued", job_id="42", state=JobState.PENDING),
        None,  # a heartbeat
        Event(seq=9, key="b_1/running/r", bundle="b_1", name="running", job_id="41",
              state=JobState.FAILED, exit_code=3),
        Event(seq=10, key="b_1/queued/r", bundle="b_1", name="queued", job_id="42", state=JobState.CANCELLED,
              reason="DependencyNeverSatisfied"),
        None,
    ]  # fmt: skip
    followed: list[int] = []

    def follow_events(machine: object, since: int) -> Iterator[Event | None]:
        followed.append(since)
        yield from events

    monkeypatch.setattr("milex.machine.submitter.submitter_for", lambda machine: Answering())
    monkeypatch.setattr("milex.watch.follow_events", follow_events)
    result = CliRunner().invoke(status, ["b", "--watch"])

    assert result.exit_code == 0, result.output
    assert followed == [7]  # from the answer's last event on: none missed, none twice
    first, changes = result.stdout.split("\nb_1 queued 42 PENDING\n")
    assert "b on local (watching; Ctrl-C to stop)" in first and "QUEUED" in first
    changes, final = changes.split("b on local\n")
    assert changes == "b_1 running 41 FAILED exit 3\nb_1 queued 42 CANCELLED (DependencyNeverSatisfied)\n"
    assert "│ 42 " in final and "CANCELLED" in final and "FAILED" in final and "QUEUED" not in final
    assert final.endswith(
        "\nbundle b_1 done: 1 failed, 1 cancelled (job queued cancelled, job running exit 3)\n"
    ), final


def test_a_watch_of_jobs_that_have_all_ended_shows_their_table_once(
    milex_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = Answering()
    for job in agent.jobs:
        job.state = JobState.COMPLETED
    monkeypatch.setattr("milex.machine.submitter.submitter_for", lambda machine: agent)
    monkeypatch.setattr("milex.watch.follow_events", lambda machine, since: pytest.fail("nothing to follow"))
    result = CliRunner().invoke(status, ["b", "--watch"])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("b on local\n") == 1 and result.stdout.count("COMPLETED") == 2, result.stdout


class Filtering(Answering):
    """An agent that answers as a real one does: the jobs of a bundle, or of some ids."""

    def tracked(self, job_ids: object = (), bundle: str = "", usage: bool = False) -> object:
        jobs = [job for job in self.jobs if job.job_id in job_ids] if job_ids else self.jobs  # type: ignore[operator]
        return StatusReply(jobs=[job for job in jobs if not bundle or job.bundle.startswith(f"{bundle}_")])


@pytest.mark.parametrize("wanted", ["99999", "nosuch"])
def test_status_of_a_job_or_bundle_the_agent_does_not_know_says_so_and_fails(
    milex_config, monkeypatch: pytest.MonkeyPatch, wanted: str
) -> None:
    monkeypatch.setattr("milex.machine.submitter.submitter_for", lambda machine: Filtering())
    for arguments in ([wanted], [wanted, "--json"]):
        result = CliRunner().invoke(status, arguments)
        assert result.exit_code == 1, result.output
        assert result.stdout == ""
        assert result.stderr == (
            f"error: the agent on local tracks no bundle or job {wanted!r}; `milex status` lists every job "
            "it tracks, `milex ls` the bundles recorded here.\n"
        )


def test_status_of_a_job_id_shows_that_job(milex_config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("milex.machine.submitter.submitter_for", lambda machine: Filtering())
    result = CliRunner().invoke(status, ["41", "--json"])
    assert result.exit_code == 0, result.output
    assert [job["name"] for job in json.loads(result.stdout)] == ["running"]
