"""The Python API with a configuration in tmp_path: records written, refusals before any write, previews.

Nothing here submits: a fake submitter stands in wherever a submission would start.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import milex.machine.submitter
from milex import api
from milex.records import load_bundle
from milex_common.errors import BundleError, InvalidValue, MilexError
from milex_common.model import Job, SlurmOptions


@pytest.fixture
def no_submission(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Fail the test if a submission starts; returns the bundles it would have submitted."""
    attempts: list[object] = []

    def submitter_for(machine: object) -> object:
        attempts.append(machine)
        raise AssertionError("a unit test must not submit")

    monkeypatch.setattr(milex.machine.submitter, "submitter_for", submitter_for)
    return attempts


@pytest.fixture
def no_capture(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No `NAME-cli` anywhere on PATH, so a capture would fail loudly."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def records(jobs_dir: Path) -> list[str]:
    """The files under `jobs_dir`, but for the locks that records are written under."""
    names = (path.name for path in jobs_dir.glob("*") if path.name not in (".runs.lock", ".bundles.lock"))
    return sorted(names) if jobs_dir.exists() else []


def test_schedule_with_script_args_writes_a_record(milex_config, no_capture: None) -> None:
    scheduled = api.schedule("train", script_args={"lr": 0.1}, slurm=SlurmOptions(time="00-01:00"))
    assert scheduled.path.parent == milex_config.jobs_dir
    assert scheduled.path.name == f"train_{scheduled.bundle.created}.json"
    loaded = load_bundle(milex_config.jobs_dir, "train")
    assert loaded.jobs == {"train": scheduled.job}
    assert loaded.jobs["train"].script_args == {"lr": 0.1}
    assert loaded.jobs["train"].slurm.time == "00-01:00"


def test_schedule_bundle_and_job_names(milex_config, no_capture: None) -> None:
    scheduled = api.schedule("train", bundle="pipeline", job_name="big", script_args={})
    assert scheduled.path.name.startswith("pipeline_")
    assert list(load_bundle(milex_config.jobs_dir, "pipeline").jobs) == ["big"]
    assert scheduled.job.script == "train"


def test_schedule_append_adds_to_the_bundle(milex_config, no_capture: None) -> None:
    first = api.schedule("prepare", bundle="pipeline", script_args={})
    second = api.schedule(
        "train", bundle="pipeline", append=True, script_args={"lr": 0.1}, dependencies=["prepare"]
    )
    assert second.path == first.path
    assert records(milex_config.jobs_dir) == [first.path.name]
    loaded = load_bundle(milex_config.jobs_dir, "pipeline")
    assert [job.name for job in loaded.ordered_jobs()] == ["prepare", "train"]


def test_schedule_without_append_makes_a_new_record(milex_config, no_capture: None) -> None:
    api.schedule("train", script_args={"lr": 1})
    api.schedule("train", script_args={"lr": 2})
    assert len(records(milex_config.jobs_dir)) == 2
    assert load_bundle(milex_config.jobs_dir, "train").jobs["train"].script_args == {"lr": 2}


@pytest.mark.parametrize(
    "options",
    [
        {"slurm": SlurmOptions(time="1h")},
        {"slurm": SlurmOptions(mem="16GB")},
        {"job_name": "my job"},
        {"dependencies": ["../etc"]},
        {"bundle": "a/b"},
    ],
)
def test_invalid_value_refused_before_anything_is_written(milex_config, no_capture: None, options) -> None:
    with pytest.raises(InvalidValue):
        api.schedule("train", script_args={}, **options)
    assert records(milex_config.jobs_dir) == []


def test_bad_time_error_names_the_option(milex_config, no_capture: None) -> None:
    with pytest.raises(InvalidValue, match="--time '1h'"):
        api.schedule("train", script_args={}, slurm=SlurmOptions(time="1h"))


def test_schedule_without_script_args_captures(milex_config, no_capture: None) -> None:
    with pytest.raises(MilexError, match=r"train-cli"):
        api.schedule("train", ["--lr", "0.1"])
    assert records(milex_config.jobs_dir) == []


def test_make_job_defaults_name_to_app() -> None:
    job = api.make_job("train", {"lr": 0.1})
    assert (job.name, job.script, job.script_args) == ("train", "train", {"lr": 0.1})


# --- submit ----------------------------------------------------------------------------------------------


def job(name: str, *dependencies: str, **slurm: object) -> Job:
    return Job(name=name, script="app", dependencies=list(dependencies), slurm=SlurmOptions(**slurm))


def test_submit_with_cycle_refused_before_writing(milex_config, no_submission: list[object]) -> None:
    with pytest.raises(BundleError, match="cycle: a -> b -> a"):
        api.submit([job("a", "b"), job("b", "a")], bundle="loop")
    assert records(milex_config.jobs_dir) == []
    assert no_submission == []


def test_submit_with_unknown_dependency_refused_before_writing(
    milex_config, no_submission: list[object]
) -> None:
    with pytest.raises(BundleError, match="'missing'"):
        api.submit(job("a", "missing"))
    assert records(milex_config.jobs_dir) == []


def test_submit_records_the_bundle_before_submitting(milex_config, no_submission: list[object]) -> None:
    with pytest.raises(AssertionError, match="must not submit"):
        api.submit([job("prepare"), job("train", "prepare")], bundle="pipe")
    assert list(load_bundle(milex_config.jobs_dir, "pipe").jobs) == ["prepare", "train"]


class RecordingSubmitter:
    """Accepts every job with made-up ids; notes whether the bundle record was written when it sent."""

    agent_host = "login1"

    def __init__(self, jobs_dir: Path) -> None:
        self.jobs_dir = jobs_dir
        self.record_size_when_sent: int | None = None

    def submit(
        self, bundle, settings, on_submitted, while_waiting, run_id="", on_progress=None, versions=None
    ) -> list[object]:
        """As AgentSubmitter does: the request is sent, `while_waiting` runs, and its error comes last."""
        from milex.records import bundle_path
        from milex_common.model import JobState
        from milex_common.protocol import TrackedJob

        self.record_size_when_sent = bundle_path(self.jobs_dir, bundle.name, bundle.created).stat().st_size
        meanwhile = None
        try:
            while_waiting()
        except Exception as error:  # as AgentSubmitter: raised once the jobs are known
            meanwhile = error
        jobs = [TrackedJob(key=name, bundle=bundle.stem, name=name, job_id=str(100 + i),
                           state=JobState.SUBMITTED) for i, name in enumerate(bundle.jobs)]  # fmt: skip
        for tracked in jobs:
            on_submitted(tracked)
        if meanwhile:
            raise meanwhile
        return jobs


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch, milex_config) -> RecordingSubmitter:
    submitter = RecordingSubmitter(milex_config.jobs_dir)
    monkeypatch.setattr(milex.machine.submitter, "submitter_for", lambda machine: submitter)
    return submitter


def test_submit_writes_the_record_while_the_agent_submits(milex_config, recording) -> None:
    submission = api.submit([job("prepare"), job("train", "prepare")], bundle="pipe")
    assert recording.record_size_when_sent == 0  # the name was claimed, the content came meanwhile
    assert list(load_bundle(milex_config.jobs_dir, "pipe").jobs) == ["prepare", "train"]
    assert {name: job.job_id for name, job in submission.jobs.items()} == {"prepare": "100", "train": "101"}


def test_the_run_record_s_file_is_made_while_the_agent_submits(milex_config, recording, monkeypatch) -> None:
    """Only its bytes and a rename follow the agent's answer (milex.prepared_write)."""
    seen: list[list[str]] = []
    submit = recording.submit

    def noting(bundle, settings, on_submitted, while_waiting, **options):  # type: ignore[no-untyped-def]
        def meanwhile() -> None:
            while_waiting()
            seen.append(sorted(os.listdir(milex_config.jobs_dir)))

        return submit(bundle, settings, on_submitted, meanwhile, **options)

    monkeypatch.setattr(recording, "submit", noting)
    submission = api.submit(job("train"), bundle="made")
    [made] = seen
    assert [name for name in made if name.startswith(f".{submission.bundle}.runs.json.")]
    assert f"{submission.bundle}.runs.json" not in made  # not there yet: written once the ids are in
    after = os.listdir(milex_config.jobs_dir)
    assert f"{submission.bundle}.runs.json" in after
    assert not [name for name in after if name.startswith(f".{submission.bundle}")]  # nothing left half


def test_a_record_that_cannot_be_written_is_an_error_after_the_submission_is_recorded(
    milex_config, recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    from milex import records as records_module

    write = records_module.atomic_write

    def bundle_disk_full(path: Path, data: bytes, **options: object) -> None:
        if not path.name.endswith(".runs.json"):
            raise OSError(28, "No space left on device")
        write(path, data, **options)

    monkeypatch.setattr(records_module, "atomic_write", bundle_disk_full)
    with pytest.raises(BundleError, match=r"full_\d{14}\.json: the disk is full \(No space left"):
        api.submit(job("train"), bundle="full")
    [runs] = records(milex_config.jobs_dir)  # no empty bundle record left behind
    assert runs.endswith(".runs.json")
    [submission] = json.loads((milex_config.jobs_dir / runs).read_text())
    assert submission["jobs"]["train"]["job_id"] == "100"


def test_a_run_record_that_cannot_be_written_names_the_jobs_submitted_all_the_same(
    milex_config, recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    from milex import prepared_write
    from milex import records as records_module

    write = records_module.atomic_write

    def runs_disk_full(path: Path, data: bytes, **options: object) -> None:
        if path.name.endswith(".runs.json"):
            raise OSError(28, "No space left on device")
        write(path, data, **options)

    def no_space(file: object, data: bytes) -> None:  # the run record's file made ahead, then no room
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(records_module, "atomic_write", runs_disk_full)
    monkeypatch.setattr(prepared_write, "_fill", no_space)
    with pytest.raises(BundleError) as error:
        api.submit([job("prepare"), job("train", "prepare")], bundle="pipe")
    assert not [
        name for name in os.listdir(milex_config.jobs_dir) if name.startswith(".pipe_")
    ]  # none half made
    message = str(error.value)
    assert ".runs.json: the disk is full" in message
    assert "were submitted" in message and "prepare=100, train=101" in message
    assert "`milex status`" in message


def test_submit_jobs_with_the_same_name_refused(milex_config, no_submission: list[object]) -> None:
    # A bundle is keyed by job name: the second `train` would silently replace the first.
    with pytest.raises(MilexError, match="train"):
        api.submit([job("train", time="10"), job("train", time="20")], bundle="pipe")
    assert records(milex_config.jobs_dir) == []


def test_submit_nothing_refused_with_a_milex_error(milex_config, no_submission: list[object]) -> None:
    with pytest.raises(MilexError):
        api.submit([])


def test_submit_invalid_job_refused_before_writing(milex_config, no_submission: list[object]) -> None:
    # Jobs built with Job(...) skip make_job; their values must still be checked before any write.
    with pytest.raises(InvalidValue, match="--time '1h'"):
        api.submit(job("train", time="1h"))
    assert records(milex_config.jobs_dir) == []


# --- preview ---------------------------------------------------------------------------------------------


def test_preview_renders_machine_settings(milex_config, no_capture: None) -> None:
    api.schedule("train", script_args={"lr": 0.1}, slurm=SlurmOptions(time="10"))
    script = api.preview("train")["train"]
    assert f"#SBATCH --account={milex_config.account}" in script
    assert milex_config.env_command in script
    assert f"export MILEX={milex_config.milex_path}" in script


def test_preview_applies_overrides(milex_config, no_capture: None) -> None:
    api.schedule("train", script_args={})
    script = api.preview(
        "train", slurm_account="rrg-other", env_command="conda activate ml", path="/scratch/other"
    )["train"]
    assert "#SBATCH --account=rrg-other" in script
    assert "conda activate ml" in script
    assert milex_config.env_command not in script
    assert "#SBATCH --output=/scratch/other/slurm/" in script


def test_preview_for_another_machine(milex_config, no_capture: None) -> None:
    api.schedule("train", script_args={})
    script = api.preview("train", machine="cluster")["train"]
    assert "#SBATCH --account=rrg-cluster" in script
    assert "export MILEX=/scratch/alice/milex" in script


def test_preview_in_submission_order(milex_config, no_capture: None) -> None:
    api.schedule("train", bundle="pipe", script_args={}, dependencies=["prepare"])
    api.schedule("prepare", bundle="pipe", append=True, script_args={})
    assert list(api.preview("pipe")) == ["prepare", "train"]


def test_preview_unknown_override_refused(milex_config, no_capture: None) -> None:
    api.schedule("train", script_args={})
    with pytest.raises(TypeError, match="hostname"):
        api.preview("train", hostname="elsewhere")


def test_record_is_user_agnostic(milex_config, no_capture: None) -> None:
    scheduled = api.schedule("train", script_args={"lr": 0.1})
    api.preview("train", slurm_account="rrg-other")
    text = scheduled.path.read_text()
    for private in (
        milex_config.account,
        "rrg-other",
        milex_config.env_command,
        str(milex_config.milex_path),
    ):
        assert private not in text
    assert set(json.loads(text)) == {"_milex", "train"}
