"""`milex status` when the agent cannot be reached: the last known states, from the local records."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from milex.cli.jobs import status
from milex.cli.status_view import OFFLINE
from milex.common.model import JobState
from milex.connection import AgentUnavailable
from milex.records import Submission, SubmittedJobRecord, save_submission


class Unreachable:
    def tracked(self, job_ids: object = (), bundle: str = "") -> object:
        raise AgentUnavailable("no answer from the agent within 30 s")


@pytest.fixture
def recorded(milex_config, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("milex.submitters.submitter_for", lambda machine: Unreachable())
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
