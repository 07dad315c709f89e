"""A damaged runs file (`jobs/NAME_DATE.runs.json`): named in a one-line warning, the other bundles
still listed and shown, and a new run or new states still recorded, the damaged file kept aside."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from milex import api
from milex.cli.jobs import status
from milex.cli.records import list_records
from milex.cli.status_view import OFFLINE
from milex.records import (
    DamagedRuns,
    Submission,
    SubmittedJobRecord,
    apply_states,
    load_submissions,
    save_bundle,
    save_submission,
    submissions_path,
)
from milex_common.connection import AgentUnavailable
from milex_common.model import Bundle, Job, JobState
from milex_common.protocol import StatusReply, TrackedJob
from tests.unit.test_api import RecordingSubmitter

DAMAGED = b'[{"bundle": "a_20240101000000", "machine": "local", "jobs": {"train": {"job_id": "1'
GOOD_RUN = "20240101000001-0a1b2c3d"
LOST_RUN = "20240101000002-0a1b2c3d"  # the run of the damaged file, which the agent still knows


@pytest.fixture
def jobs_dir(milex_config):
    """Bundle `a` with a damaged runs file, bundle `b` with a sound one."""
    jobs_dir = milex_config.jobs_dir
    for name in ("a", "b"):
        save_bundle(
            jobs_dir,
            Bundle(name=name, created="20240101000000", jobs={"train": Job(name="train", script="app")}),
        )
    submissions_path(jobs_dir, "a_20240101000000").write_bytes(DAMAGED)
    run = Submission(
        bundle="b_20240101000000", machine="local", submitted_at="2024-01-01T00:00:01", run_id=GOOD_RUN
    )
    run.jobs["train"] = SubmittedJobRecord(job_id="17", state=JobState.RUNNING)
    save_submission(jobs_dir, run)
    return jobs_dir


def set_aside(jobs_dir) -> list:
    return sorted(jobs_dir.glob("a_20240101000000.runs.json.damaged-*"))


def test_loading_a_damaged_runs_file_names_it(jobs_dir) -> None:
    with pytest.raises(DamagedRuns, match=r"a_20240101000000\.runs\.json is damaged"):
        load_submissions(jobs_dir, "a_20240101000000")


def test_ls_names_the_damaged_file_and_lists_every_bundle(jobs_dir) -> None:
    result = CliRunner().invoke(list_records, [])
    assert result.exit_code == 0, result.output
    assert "a  20240101000000" in result.stdout and "b  20240101000000" in result.stdout
    assert f"run {GOOD_RUN} on local: train=17:RUNNING" in result.stdout
    [warning] = result.stderr.splitlines()
    assert warning.startswith(f"warning: {submissions_path(jobs_dir, 'a_20240101000000')} is damaged (")
    assert submissions_path(jobs_dir, "a_20240101000000").read_bytes() == DAMAGED  # a listing changes nothing


def test_offline_status_names_the_damaged_file_and_shows_the_other_bundles(jobs_dir, monkeypatch) -> None:
    class Unreachable:
        def tracked(self, job_ids: object = (), bundle: str = "", usage: bool = False) -> object:
            raise AgentUnavailable("no answer from the agent within 30 s")

    monkeypatch.setattr("milex.machine.submitter.submitter_for", lambda machine: Unreachable())
    result = CliRunner().invoke(status, [])
    assert result.exit_code == OFFLINE, result.output
    assert "b_20240101000000 on local" in result.stdout and "17" in result.stdout
    assert "a_20240101000000.runs.json is damaged" in result.stderr
    assert "Traceback" not in result.output


def test_status_sets_the_damaged_file_aside_and_records_what_the_agent_knows(jobs_dir, monkeypatch) -> None:
    class Answering:
        def tracked(self, job_ids: object = (), bundle: str = "", usage: bool = False) -> object:
            return StatusReply(jobs=[
                TrackedJob(key=f"a_20240101000000/train/{LOST_RUN}", bundle="a_20240101000000", name="train",
                           job_id="12", state=JobState.COMPLETED, exit_code=0),
                TrackedJob(key=f"b_20240101000000/train/{GOOD_RUN}", bundle="b_20240101000000", name="train",
                           job_id="17", state=JobState.FAILED, exit_code=1),
            ])  # fmt: skip

    monkeypatch.setattr("milex.machine.submitter.submitter_for", lambda machine: Answering())
    result = CliRunner().invoke(status, [])
    assert result.exit_code == 0, result.output
    assert "COMPLETED" in result.stdout and "FAILED" in result.stdout
    [kept] = set_aside(jobs_dir)
    assert kept.read_bytes() == DAMAGED  # nothing of it lost
    [warning] = result.stderr.splitlines()
    assert "a_20240101000000.runs.json is damaged" in warning and f"moved to {kept}" in warning
    [restored] = load_submissions(jobs_dir, "a_20240101000000")
    assert (restored.run_id, restored.jobs["train"].job_id, restored.jobs["train"].state) == (
        LOST_RUN, "12", JobState.COMPLETED,
    )  # fmt: skip
    assert load_submissions(jobs_dir, "b_20240101000000")[0].jobs["train"].state is JobState.FAILED


def test_a_run_of_a_bundle_with_a_damaged_runs_file_is_recorded(jobs_dir, monkeypatch, capsys) -> None:
    submitter = RecordingSubmitter(jobs_dir)
    monkeypatch.setattr("milex.machine.submitter.submitter_for", lambda machine: submitter)
    submission = api.run("a")
    [recorded] = load_submissions(jobs_dir, "a_20240101000000")
    assert recorded == submission and recorded.jobs["train"].job_id == "100"
    [kept] = set_aside(jobs_dir)
    assert kept.read_bytes() == DAMAGED
    [warning] = capsys.readouterr().err.splitlines()
    assert warning.startswith("warning: ") and f"moved to {kept}" in warning


def test_each_damaged_file_set_aside_is_kept(jobs_dir) -> None:
    track = TrackedJob(key=f"a_20240101000000/train/{LOST_RUN}", bundle="a_20240101000000", name="train",
                       job_id="12", state=JobState.RUNNING)  # fmt: skip
    apply_states(jobs_dir, "local", [track])
    submissions_path(jobs_dir, "a_20240101000000").write_bytes(b"{")  # damaged again, the same second
    apply_states(jobs_dir, "local", [track])
    assert [path.read_bytes() for path in set_aside(jobs_dir)] == [DAMAGED, b"{"]


def test_a_runs_file_that_is_a_directory_is_named_and_the_listing_goes_on(milex_config) -> None:
    jobs_dir = milex_config.jobs_dir
    save_bundle(jobs_dir, Bundle(name="d", created="20240101000000", jobs={"t": Job(name="t", script="app")}))
    submissions_path(jobs_dir, "d_20240101000000").mkdir()
    result = CliRunner().invoke(list_records, ["d"])
    assert result.exit_code == 0, result.output
    assert "d_20240101000000.runs.json is damaged (Is a directory)" in result.stderr
    assert "Traceback" not in result.output
