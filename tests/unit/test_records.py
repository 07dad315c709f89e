"""Job records on the laptop: bundle files by exact name and date, appends, and submission records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from milex.records import (
    Submission,
    SubmittedJobRecord,
    append_job,
    apply_states,
    bundle_dates,
    list_bundles,
    load_bundle,
    load_submissions,
    new_run_id,
    save_bundle,
    save_submission,
    submissions_path,
)
from milex_common.errors import BundleError
from milex_common.model import Bundle, Job, JobState
from milex_common.protocol import TrackedJob


@pytest.fixture
def jobs_dir(tmp_path: Path) -> Path:
    return tmp_path / "jobs"


def job(name: str, **script_args: object) -> Job:
    return Job(name=name, script=name, script_args=script_args)


def bundle(name: str, created: str, *jobs: Job) -> Bundle:
    return Bundle(name=name, created=created, jobs={j.name: j for j in jobs or (job(name),)})


def test_save_writes_name_date_json(jobs_dir: Path) -> None:
    path = save_bundle(jobs_dir, bundle("train", "20240102030405"))
    assert path == jobs_dir / "train_20240102030405.json"
    assert path.is_file()


def test_load_gives_the_newest(jobs_dir: Path) -> None:
    save_bundle(jobs_dir, bundle("train", "20240101000000", job("train", lr=1)))
    save_bundle(jobs_dir, bundle("train", "20240301000000", job("train", lr=3)))
    loaded = load_bundle(jobs_dir, "train")
    assert loaded.created == "20240301000000"
    assert loaded.jobs["train"].script_args == {"lr": 3}


def test_loaded_bundle_equals_saved(jobs_dir: Path) -> None:
    saved = bundle("train", "20240102030405", job("prepare"), job("train", lr=0.1))
    save_bundle(jobs_dir, saved)
    assert load_bundle(jobs_dir, "train") == saved


def test_exact_name_prefix_bundle_not_taken(jobs_dir: Path) -> None:
    save_bundle(jobs_dir, bundle("train", "20240101000000"))
    save_bundle(jobs_dir, bundle("train_big", "20240201000000"))
    assert load_bundle(jobs_dir, "train").name == "train"
    assert load_bundle(jobs_dir, "train").created == "20240101000000"
    assert load_bundle(jobs_dir, "train_big").created == "20240201000000"
    assert bundle_dates(jobs_dir, "train") == ["20240101000000"]


def test_exact_name_longer_name_only_does_not_count(jobs_dir: Path) -> None:
    save_bundle(jobs_dir, bundle("train_big", "20240201000000"))
    with pytest.raises(BundleError, match="no bundle named 'train'"):
        load_bundle(jobs_dir, "train")


def test_exact_name_shorter_name_only_does_not_count(jobs_dir: Path) -> None:
    save_bundle(jobs_dir, bundle("train", "20240201000000"))
    with pytest.raises(BundleError, match="no bundle named 'train_big'"):
        load_bundle(jobs_dir, "train_big")


def test_missing_bundle_error_says_how_to_make_one(jobs_dir: Path) -> None:
    jobs_dir.mkdir()
    with pytest.raises(BundleError) as error:
        load_bundle(jobs_dir, "train")
    assert "milex-schedule train" in str(error.value)
    assert str(jobs_dir) in str(error.value)


def test_load_by_date(jobs_dir: Path) -> None:
    save_bundle(jobs_dir, bundle("train", "20240101000000", job("train", lr=1)))
    save_bundle(jobs_dir, bundle("train", "20240301000000", job("train", lr=3)))
    assert load_bundle(jobs_dir, "train", "20240101000000").jobs["train"].script_args == {"lr": 1}


def test_unknown_date_error_lists_dates(jobs_dir: Path) -> None:
    save_bundle(jobs_dir, bundle("train", "20240101000000"))
    save_bundle(jobs_dir, bundle("train", "20240301000000"))
    with pytest.raises(BundleError) as error:
        load_bundle(jobs_dir, "train", "20240201000000")
    message = str(error.value)
    assert "dated 20240201000000" in message
    assert "its dates: 20240101000000, 20240301000000" in message


def test_same_second_saves_get_distinct_dates(jobs_dir: Path) -> None:
    first = save_bundle(jobs_dir, bundle("train", "20240102030405", job("train", n=1)))
    second = save_bundle(jobs_dir, bundle("train", "20240102030405", job("train", n=2)))
    third = save_bundle(jobs_dir, bundle("train", "20240102030405", job("train", n=3)))
    assert len({first, second, third}) == 3
    assert bundle_dates(jobs_dir, "train") == ["20240102030405", "20240102030406", "20240102030407"]
    assert load_bundle(jobs_dir, "train").jobs["train"].script_args == {"n": 3}


def test_same_second_date_rolls_over_minutes(jobs_dir: Path) -> None:
    save_bundle(jobs_dir, bundle("train", "20241231235959"))
    saved = bundle("train", "20241231235959")
    save_bundle(jobs_dir, saved)
    assert saved.created == "20250101000000"


def test_save_with_an_older_clock_still_becomes_the_newest(jobs_dir: Path) -> None:
    save_bundle(jobs_dir, bundle("train", "20240301000000", job("train", n=1)))
    save_bundle(jobs_dir, bundle("train", "20240101000000", job("train", n=2)))
    assert load_bundle(jobs_dir, "train").jobs["train"].script_args == {"n": 2}


def test_append_adds_to_the_newest_in_place(jobs_dir: Path) -> None:
    save_bundle(jobs_dir, bundle("pipe", "20240101000000", job("old")))
    save_bundle(jobs_dir, bundle("pipe", "20240201000000", job("prepare")))
    appended, path = append_job(jobs_dir, "pipe", job("train"))
    assert path == jobs_dir / "pipe_20240201000000.json"
    assert list(appended.jobs) == ["prepare", "train"]
    assert list(load_bundle(jobs_dir, "pipe").jobs) == ["prepare", "train"]
    assert list(load_bundle(jobs_dir, "pipe", "20240101000000").jobs) == ["old"]
    assert bundle_dates(jobs_dir, "pipe") == ["20240101000000", "20240201000000"]


def test_append_without_a_bundle_creates_one(jobs_dir: Path) -> None:
    created, path = append_job(jobs_dir, "pipe", job("train"))
    assert path.is_file()
    assert load_bundle(jobs_dir, "pipe") == created


def test_append_does_not_pick_a_longer_name(jobs_dir: Path) -> None:
    save_bundle(jobs_dir, bundle("pipe_big", "20240201000000", job("prepare")))
    _, path = append_job(jobs_dir, "pipe", job("train"))
    assert path.name.startswith("pipe_2")
    assert list(load_bundle(jobs_dir, "pipe_big").jobs) == ["prepare"]


def test_append_duplicate_job_name_refused(jobs_dir: Path) -> None:
    save_bundle(jobs_dir, bundle("pipe", "20240201000000", job("train", lr=1)))
    with pytest.raises(BundleError) as error:
        append_job(jobs_dir, "pipe", job("train", lr=2))
    assert "already has a job named 'train'" in str(error.value)
    assert "--job_name" in str(error.value)
    assert load_bundle(jobs_dir, "pipe").jobs["train"].script_args == {"lr": 1}


def test_list_bundles_sorted_and_ignores_other_files(jobs_dir: Path) -> None:
    save_bundle(jobs_dir, bundle("train_big", "20240201000000"))
    save_bundle(jobs_dir, bundle("train", "20240101000000"))
    save_bundle(jobs_dir, bundle("train", "20240301000000"))
    (jobs_dir / "notes.json").write_text("{}")
    (jobs_dir / "train_20240101000000.runs.json").write_text("[]")
    assert list_bundles(jobs_dir) == [
        ("train", "20240101000000"),
        ("train", "20240301000000"),
        ("train_big", "20240201000000"),
    ]


def test_damaged_record_error_names_the_file(jobs_dir: Path) -> None:
    jobs_dir.mkdir()
    (jobs_dir / "train_20240101000000.json").write_text("{not json")
    with pytest.raises(BundleError, match=r"train_20240101000000\.json is not valid JSON"):
        load_bundle(jobs_dir, "train")


# --- Submissions ------------------------------------------------------------------------------------------


def submission(at: str, machine: str = "cluster", **jobs: SubmittedJobRecord) -> Submission:
    return Submission(bundle="train_20240101000000", machine=machine, submitted_at=at, jobs=dict(jobs))


def test_no_submissions_yet(jobs_dir: Path) -> None:
    assert load_submissions(jobs_dir, "train_20240101000000") == []


def test_submission_round_trip(jobs_dir: Path) -> None:
    saved = submission(
        "2024-01-01T10:00:00",
        train=SubmittedJobRecord(job_id="123", script="/s/train.sh", state=JobState.FAILED, exit_code=3),
    )
    path = save_submission(jobs_dir, saved)
    assert path == submissions_path(jobs_dir, "train_20240101000000")
    assert path.name == "train_20240101000000.runs.json"
    assert load_submissions(jobs_dir, "train_20240101000000") == [saved]


def test_submissions_accumulate_oldest_first(jobs_dir: Path) -> None:
    first, second = submission("2024-01-01T10:00:00"), submission("2024-01-02T10:00:00")
    save_submission(jobs_dir, first)
    save_submission(jobs_dir, second)
    assert load_submissions(jobs_dir, "train_20240101000000") == [first, second]


def test_same_time_other_machine_is_another_submission(jobs_dir: Path) -> None:
    save_submission(jobs_dir, submission("2024-01-01T10:00:00", machine="cluster"))
    save_submission(jobs_dir, submission("2024-01-01T10:00:00", machine="local"))
    assert len(load_submissions(jobs_dir, "train_20240101000000")) == 2


def test_submission_updated_in_place(jobs_dir: Path) -> None:
    saved = submission("2024-01-01T10:00:00", train=SubmittedJobRecord(job_id="123"))
    save_submission(jobs_dir, saved)
    saved.jobs["train"].state = JobState.COMPLETED
    saved.jobs["evaluate"] = SubmittedJobRecord(job_id="124", state=JobState.RUNNING)
    save_submission(jobs_dir, saved)
    [loaded] = load_submissions(jobs_dir, "train_20240101000000")
    assert loaded.jobs["train"].state is JobState.COMPLETED
    assert loaded.jobs["evaluate"].job_id == "124"


# --- Runs made together: each has its own id and its own record ------------------------------------------


def test_run_ids_are_unique_and_start_with_the_time() -> None:
    ids = {new_run_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(run_id) == 23 and run_id[:14].isdigit() and run_id[14] == "-" for run_id in ids)


def test_runs_of_the_same_second_and_machine_are_kept_apart_by_their_run_id(jobs_dir: Path) -> None:
    first = submission("2024-01-01T10:00:00", train=SubmittedJobRecord(job_id="1"))
    first.run_id = "20240101100000-00000001"
    second = msgspec.structs.replace(first, run_id="20240101100000-00000002",
                                     jobs={"train": SubmittedJobRecord(job_id="2")})  # fmt: skip
    save_submission(jobs_dir, first)
    save_submission(jobs_dir, second)
    first.jobs["train"].state = JobState.RUNNING
    save_submission(jobs_dir, first)  # an update of the first run, not a third run
    loaded = load_submissions(jobs_dir, "train_20240101000000")
    assert [(s.run_id, s.jobs["train"].job_id, s.jobs["train"].state) for s in loaded] == [
        ("20240101100000-00000001", "1", JobState.RUNNING),
        ("20240101100000-00000002", "2", JobState.SUBMITTED),
    ]


def test_a_record_of_an_older_version_without_run_ids_loads_and_updates_in_place(jobs_dir: Path) -> None:
    jobs_dir.mkdir()
    older = [{"bundle": "train_20240101000000", "machine": "cluster", "submitted_at": "2024-01-01T10:00:00",
              "jobs": {"train": {"job_id": "7", "script": "/s/train.sh"}}}]  # fmt: skip
    submissions_path(jobs_dir, "train_20240101000000").write_text(json.dumps(older))
    [loaded] = load_submissions(jobs_dir, "train_20240101000000")
    assert loaded.run_id == ""
    loaded.jobs["train"].state = JobState.COMPLETED
    save_submission(jobs_dir, loaded)
    tracked = TrackedJob(key="k", bundle="train_20240101000000", name="train", job_id="7",
                         state=JobState.FAILED, exit_code=2)  # fmt: skip
    assert apply_states(jobs_dir, "cluster", [tracked]) == 1
    [updated] = load_submissions(jobs_dir, "train_20240101000000")
    assert (updated.run_id, updated.jobs["train"].state, updated.jobs["train"].exit_code) == (
        "",
        JobState.FAILED,
        2,
    )


# Each racer saves RUNS runs of its own, one at a time, as a `milex-run` does; the `status` racer
# meanwhile writes states into every run it finds, as `milex status` does.
_RACER = """
import sys
from pathlib import Path
from milex_common.model import JobState
from milex_common.protocol import TrackedJob
from milex.records import Submission, SubmittedJobRecord, apply_states, load_submissions, new_run_id
from milex.records import save_submission

jobs_dir, racer, runs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
sys.stdin.read()
stem = "train_20240101000000"
for n in range(runs):
    if racer == "status":
        seen = [job for run in load_submissions(jobs_dir, stem) for job in run.jobs.values()]
        apply_states(jobs_dir, "cluster", [TrackedJob(key="k", bundle=stem, name="train", job_id=job.job_id,
                                                      state=JobState.RUNNING) for job in seen])
        continue
    run = Submission(bundle=stem, machine="cluster", submitted_at="2024-01-01T10:00:00", run_id=new_run_id(),
                     jobs={"train": SubmittedJobRecord(job_id=f"{racer}.{n}")})
    save_submission(jobs_dir, run)
"""


def race(jobs_dir: Path, racers: list[str], runs: int) -> None:
    """Start one process per racer, all held at a barrier (their stdin), then let them go together."""
    jobs_dir.mkdir(exist_ok=True)
    command = [sys.executable, "-c", _RACER, str(jobs_dir)]
    options: dict = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    processes = [subprocess.Popen([*command, racer, str(runs)], **options) for racer in racers]
    try:
        assert [process.stdout.readline() for process in processes] == ["ready\n"] * len(racers)
        for process in processes:
            process.stdin.close()
        assert [process.wait(timeout=60) for process in processes] == [0] * len(racers)
    finally:
        for process in processes:
            process.kill()
            process.wait()
            process.stdin.close()
            process.stdout.close()


def test_runs_saved_by_processes_racing_are_all_recorded(jobs_dir: Path) -> None:
    race(jobs_dir, ["a", "b", "c", "d"], runs=25)
    loaded = load_submissions(jobs_dir, "train_20240101000000")
    assert sorted(s.jobs["train"].job_id for s in loaded) == sorted(
        f"{r}.{n}" for r in "abcd" for n in range(25)
    )
    assert len({s.run_id for s in loaded}) == 100


def test_states_written_while_runs_are_saved_lose_no_run(jobs_dir: Path) -> None:
    race(jobs_dir, ["a", "b", "status", "status"], runs=40)
    loaded = load_submissions(jobs_dir, "train_20240101000000")
    assert sorted(s.jobs["train"].job_id for s in loaded) == sorted(
        f"{r}.{n}" for r in "ab" for n in range(40)
    )


# --- Records that cannot be written, and runs the agent knows that the record lacks ---------------------


def test_a_full_disk_is_a_bundle_error_naming_the_file_and_the_old_record_stays(
    jobs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from milex import records as records_module

    saved = submission("2024-01-01T10:00:00", train=SubmittedJobRecord(job_id="1"))
    save_submission(jobs_dir, saved)
    before = submissions_path(jobs_dir, saved.bundle).read_bytes()

    def disk_full(path: Path, data: bytes, **options: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records_module, "atomic_write", disk_full)
    with pytest.raises(BundleError) as error:
        save_submission(jobs_dir, submission("2024-01-01T11:00:00", train=SubmittedJobRecord(job_id="2")))
    path = submissions_path(jobs_dir, saved.bundle)
    assert str(error.value) == (
        f"cannot write {path}: the disk is full (No space left on device); free some space there and retry."
    )
    assert path.read_bytes() == before


def tracked(name: str, job_id: str, run: str, state: JobState = JobState.RUNNING) -> TrackedJob:
    stem = "train_20240101000000"
    return TrackedJob(key=f"{stem}/{name}/{run}", bundle=stem, name=name, job_id=job_id, state=state)


def test_states_restore_a_run_whose_record_was_never_written(jobs_dir: Path) -> None:
    save_bundle(jobs_dir, bundle("train", "20240101000000", job("prepare"), job("train")))
    run = "20240101100000-0123abcd"
    jobs = [tracked("prepare", "11", run, JobState.COMPLETED), tracked("train", "12", run)]
    assert apply_states(jobs_dir, "cluster", jobs) == 1
    [restored] = load_submissions(jobs_dir, "train_20240101000000")
    assert (restored.run_id, restored.machine, restored.submitted_at) == (
        run,
        "cluster",
        "2024-01-01T10:00:00",
    )
    assert {name: (r.job_id, r.state) for name, r in restored.jobs.items()} == {
        "prepare": ("11", JobState.COMPLETED),
        "train": ("12", JobState.RUNNING),
    }
    assert apply_states(jobs_dir, "cluster", jobs) == 0  # restored once, then only updated
    assert len(load_submissions(jobs_dir, "train_20240101000000")) == 1


def test_states_restore_no_run_that_is_recorded_or_not_of_this_laptop(jobs_dir: Path) -> None:
    recorded = submission("2024-01-01T10:00:00", train=SubmittedJobRecord(job_id="7"))  # an older version's
    save_submission(jobs_dir, recorded)
    jobs = [tracked("train", "7", "5f0c1a2b3c4d"), tracked("train", "8", "0123456789ab")]  # uuid attempts
    assert apply_states(jobs_dir, "cluster", jobs) == 1  # job 7's state only
    assert load_submissions(jobs_dir, "train_20240101000000")[0].jobs["train"].state is JobState.RUNNING
    assert len(load_submissions(jobs_dir, "train_20240101000000")) == 1
    other = TrackedJob(key="other_20240101000000/a/20240101100000-0123abcd", bundle="other_20240101000000",
                       name="a", job_id="9", state=JobState.RUNNING)  # fmt: skip
    assert apply_states(jobs_dir, "cluster", [other]) == 0  # a bundle not recorded here
    assert not submissions_path(jobs_dir, "other_20240101000000").exists()


def test_states_one_job_at_a_time_restore_the_whole_run(jobs_dir: Path) -> None:
    # `milex status --watch` applies each event on its own: the run is completed job by job.
    save_bundle(jobs_dir, bundle("train", "20240101000000", job("prepare"), job("train")))
    run = "20240101100000-0123abcd"
    assert apply_states(jobs_dir, "cluster", [tracked("prepare", "11", run)]) == 1
    assert apply_states(jobs_dir, "cluster", [tracked("train", "12", run)]) == 1
    [restored] = load_submissions(jobs_dir, "train_20240101000000")
    assert {name: r.job_id for name, r in restored.jobs.items()} == {"prepare": "11", "train": "12"}


def test_a_job_the_agent_accepted_beyond_a_recorded_run_is_added_to_it(jobs_dir: Path) -> None:
    run = "20240101100000-0123abcd"
    partial = submission("2024-01-01T10:00:00", prepare=SubmittedJobRecord(job_id="11"))
    partial.run_id, partial.error = run, "the agent stopped answering"
    save_submission(jobs_dir, partial)
    assert (
        apply_states(jobs_dir, "cluster", [tracked("prepare", "11", run), tracked("train", "12", run)]) == 2
    )
    [loaded] = load_submissions(jobs_dir, "train_20240101000000")
    assert {name: r.job_id for name, r in loaded.jobs.items()} == {"prepare": "11", "train": "12"}


def test_a_job_recorded_while_queued_takes_its_id_and_state_once_the_agent_has_submitted_it(
    jobs_dir: Path,
) -> None:
    # `milex-run` records a job the agent keeps in its queue with no id; the agent submits it later.
    run = "20240101100000-0123abcd"
    recorded = submission(
        "2024-01-01T10:00:00",
        prepare=SubmittedJobRecord(job_id="11", state=JobState.RUNNING),
        train=SubmittedJobRecord(job_id="", state=JobState.QUEUED, reason="MaxSubmitJobs"),
    )
    recorded.run_id = run
    save_submission(jobs_dir, recorded)
    jobs = [tracked("prepare", "11", run), tracked("train", "12", run, JobState.PENDING)]
    assert apply_states(jobs_dir, "cluster", jobs) == 1
    [loaded] = load_submissions(jobs_dir, "train_20240101000000")
    assert {name: (r.job_id, r.state, r.reason) for name, r in loaded.jobs.items()} == {
        "prepare": ("11", JobState.RUNNING, ""),
        "train": ("12", JobState.PENDING, ""),
    }
    assert apply_states(jobs_dir, "cluster", jobs) == 0


def test_jobs_without_id_of_one_bundle_each_keep_their_own_state(jobs_dir: Path) -> None:
    # Two jobs still queued (no id either): each takes its own state, found by its key, not by id "".
    run = "20240101100000-0123abcd"
    recorded = submission(
        "2024-01-01T10:00:00",
        prepare=SubmittedJobRecord(job_id="", state=JobState.QUEUED),
        train=SubmittedJobRecord(job_id="", state=JobState.QUEUED),
    )
    recorded.run_id = run
    save_submission(jobs_dir, recorded)
    cancelled = tracked("train", "", run, JobState.CANCELLED)
    apply_states(jobs_dir, "cluster", [tracked("prepare", "", run, JobState.QUEUED), cancelled])
    [loaded] = load_submissions(jobs_dir, "train_20240101000000")
    assert {name: (r.job_id, r.state) for name, r in loaded.jobs.items()} == {
        "prepare": ("", JobState.QUEUED),
        "train": ("", JobState.CANCELLED),
    }


def test_a_queued_job_the_record_lacks_is_restored_and_later_takes_its_id(jobs_dir: Path) -> None:
    save_bundle(jobs_dir, bundle("train", "20240101000000", job("train")))
    run = "20240101100000-0123abcd"
    assert apply_states(jobs_dir, "cluster", [tracked("train", "", run, JobState.QUEUED)]) == 1
    assert apply_states(jobs_dir, "cluster", [tracked("train", "12", run, JobState.PENDING)]) == 1
    [restored] = load_submissions(jobs_dir, "train_20240101000000")
    assert (restored.jobs["train"].job_id, restored.jobs["train"].state) == ("12", JobState.PENDING)


# Each appender adds its own job to the bundle "pipe" through the API, as `milex-schedule --append` does
# (the configuration in $MILEX_CONFIG).
_APPENDER = """
import sys
from milex.api import schedule

name = sys.argv[1]
print("ready", flush=True)
sys.stdin.read()
schedule("train", bundle="pipe", append=True, script_args={"who": name}, job_name=name)
"""


def test_appends_made_at_once_by_several_processes_all_keep_their_jobs(tmp_path: Path) -> None:
    config = tmp_path / "milexconfig.json"
    local = {"path": str(tmp_path / "milex"), "env_command": "true", "slurm_account": "a"}
    config.write_text(json.dumps({"local": local}))
    environment = {**os.environ, "MILEX_CONFIG": str(config)}
    names = [f"job{n}" for n in range(8)]
    for trial in range(3):
        processes = [
            subprocess.Popen([sys.executable, "-c", _APPENDER, f"{name}_{trial}"], env=environment,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for name in names
        ]  # fmt: skip
        try:
            assert [process.stdout.readline() for process in processes] == ["ready\n"] * len(names)
            for process in processes:  # all at once
                process.stdin.close()
            assert [process.wait(timeout=60) for process in processes] == [0] * len(names)
        finally:
            for process in processes:
                process.kill()
                process.wait()
                process.stdout.close()
        kept = load_bundle(tmp_path / "milex" / "jobs", "pipe").jobs
        assert {name for name in kept if name.endswith(f"_{trial}")} == {f"{name}_{trial}" for name in names}
