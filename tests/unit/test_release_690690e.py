"""What Milex at commit 690690e wrote (before the move to milex_agent/milex_common) is read by this code:
the agent's journal, the laptop's bundle and runs records, the local scheduler's job records. The files
were made by that commit's own code (tests/unit/releases/make_690690e.py, its recipe)."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from milex.records import apply_states, job_key, list_bundles, load_bundle, load_submissions, run_of_key
from milex_agent.journal import SCHEMA_VERSION, Journal
from milex_agent.ledger import comment_of
from milex_agent.scheduler.base import SubmitCall
from milex_agent.scheduler.local.scheduler import LocalScheduler
from milex_agent.scheduler.local.store import VANISHED, read_spec, runner_alive
from milex_common.model import JobState, JobStatus
from milex_common.protocol import SubmitBundle, TrackedJob
from tests.unit.agent_fakes import wait_until

RELEASE = Path(__file__).parent / "releases" / "690690e"
DUMP = Path(__file__).parent / "journals" / "release-690690e.sql"
MACHINE_PATH = "/tmp/milex-690690e"  # the machine path the old agent ran with
SWEEP, GRID, LOCAL = "sweep_20261126090000", "grid_20261126100000", "local_20261126120000"
SWEEP_RUN, LOCAL_RUN = "20261126090000-0a1b2c3d", "20261126093000-5e6f7a8b"
GRID_RUN, LOCAL_JOBS_RUN = "20261126100000-1c2d3e4f", "20261126120000-9a8b7c6d"
QUEUED, SUBMITTED, PENDING, RUNNING = JobState.QUEUED, JobState.SUBMITTED, JobState.PENDING, JobState.RUNNING
COMPLETED, FAILED, CANCELLED = JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED
# The local jobs, by id: name, and the status the old scheduler gave them.
LOCAL_JOBS = {
    "1": ("ok", COMPLETED, 0, ""),
    "2": ("bad", FAILED, 3, "NonZeroExitCode"),
    "3": ("slow", CANCELLED, None, "cancelled"),
    "4": ("hang", RUNNING, None, ""),  # its record copied while it ran
    "5": ("arr", COMPLETED, 0, ""),
    "6": ("after", CANCELLED, None, "DependencyNeverSatisfied"),
}


# ---- the agent's journal -------------------------------------------------------------------------


def restore(tmp_path: Path) -> Path:
    """A journal file with the content the old agent wrote (its dump, loaded back)."""
    path = tmp_path / "agent" / "journal.sqlite"
    path.parent.mkdir()
    db = sqlite3.connect(path)
    db.executescript(DUMP.read_text())
    db.close()
    return path


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal(restore(tmp_path))
    yield journal
    journal.close()


def test_the_journal_opens_at_this_schema_with_every_job(journal):
    assert journal.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
    jobs = {(job.bundle, job.name): job for job in journal.jobs()}
    assert {job: (tracked.job_id, tracked.state, tracked.exit_code, tracked.reason)
            for job, tracked in jobs.items()} == {
        (SWEEP, "train"): ("5001", COMPLETED, 0, ""),
        (SWEEP, "evaluate"): ("5002", PENDING, None, "Dependency"),
        (GRID, "setup"): ("6001", FAILED, 2, ""),
        (GRID, "scan"): ("6002", RUNNING, None, ""),  # its windows together; the first window's id
        (GRID, "plot"): ("", QUEUED, None, "in the agent's queue"),
        (GRID, "cleanup"): ("", CANCELLED, None, "DependencyNeverSatisfied"),
        **{(LOCAL, name): (job_id, state, exit_code, reason)
           for job_id, (name, state, exit_code, reason) in LOCAL_JOBS.items()},
    }  # fmt: skip
    train = jobs[(SWEEP, "train")]
    assert train.key == job_key(SWEEP, "train", SWEEP_RUN)
    assert train.script == f"{MACHINE_PATH}/slurm/{SWEEP}_train.sh"
    assert train.stdout == f"{MACHINE_PATH}/slurm/{SWEEP}_train-%j.out"
    assert train.submitted_at > 0 and train.updated_at >= train.submitted_at
    assert journal.jobs(bundle="grid") == [job for job in journal.jobs() if job.bundle == GRID]
    assert [job.name for job in journal.jobs(job_ids=["5002", "4"])] == ["evaluate", "hang"]


def test_the_journal_keeps_the_job_in_doubt_and_those_to_watch(journal):
    [row] = journal.in_doubt()
    assert (row.job.key, row.job.state, row.scheduler, row.machine_path) == (
        job_key(GRID, "report", GRID_RUN), SUBMITTED, "slurm", MACHINE_PATH,
    )  # fmt: skip
    # The poller watches the windows of the cut array, not the array itself.
    assert sorted((row.job_id, row.key, row.scheduler) for row in journal.watched()) == [
        ("4", job_key(LOCAL, "hang", LOCAL_JOBS_RUN), "local"),
        ("5002", job_key(SWEEP, "evaluate", SWEEP_RUN), "slurm"),
        ("6002", job_key(GRID, "scan", GRID_RUN) + "~0", "slurm"),
        ("6003", job_key(GRID, "scan", GRID_RUN) + "~5", "slurm"),
    ]
    # Tasks in (or maybe in) each scheduler: evaluate, scan's 10, report in doubt; the local hang.
    assert journal.in_scheduler() == {("slurm", MACHINE_PATH): 12, ("local", MACHINE_PATH): 1}


def test_the_journal_keeps_the_array_cut_in_windows(journal):
    scan = job_key(GRID, "scan", GRID_RUN)
    size, windows = journal.windows(scan)
    assert size == journal.window_size(scan) == 5
    assert [(w.key, w.job_id, w.state, w.reason) for w in windows] == [
        (f"{scan}~0", "6002", RUNNING, ""),
        (f"{scan}~5", "6003", PENDING, "Priority"),
    ]


def test_the_journal_keeps_the_queued_request_whole(journal):
    assert journal.queued() == 1
    assert journal.still_queued([job_key(GRID, name, GRID_RUN) for name in ("plot", "cleanup")]) == [
        job_key(GRID, "plot", GRID_RUN)
    ]
    [(_, body)] = journal.queued_requests()
    request = msgspec.msgpack.decode(body, type=SubmitBundle)  # as the agent's queue reads it
    assert request.bundle.stem == GRID
    assert list(request.bundle.jobs) == ["setup", "scan", "plot", "cleanup", "report"]
    scan = request.bundle.jobs["scan"]
    assert (scan.script_args, scan.dependencies, scan.slurm.array, scan.slurm.dependency_type) == (
        {"step": 0.25}, ["setup"], "0-9", "afterany",
    )  # fmt: skip
    assert (request.settings.path, request.settings.slurm_account, request.settings.max_submitted) == (
        MACHINE_PATH, "def-alice", 8,
    )  # fmt: skip
    assert request.keys == {name: job_key(GRID, name, GRID_RUN) for name in request.bundle.jobs}


def test_the_journal_keeps_every_event_and_numbers_on(journal):
    def sweep(name: str) -> str:
        return job_key(SWEEP, name, SWEEP_RUN)

    def grid(name: str) -> str:
        return job_key(GRID, name, GRID_RUN)

    expected = [
        (sweep("train"), SUBMITTED, None, ""),
        (sweep("evaluate"), SUBMITTED, None, ""),
        (sweep("train"), RUNNING, None, ""),
        (sweep("evaluate"), PENDING, None, "Dependency"),
        (sweep("train"), COMPLETED, 0, ""),
        (grid("setup"), SUBMITTED, None, ""),
        (grid("setup"), FAILED, 2, ""),
        (grid("scan"), SUBMITTED, None, ""),  # the array's, not its windows'
        (grid("scan"), RUNNING, None, ""),
        (grid("plot"), QUEUED, None, "in the agent's queue"),
        (grid("cleanup"), CANCELLED, None, "DependencyNeverSatisfied"),
        *((job_key(LOCAL, name, LOCAL_JOBS_RUN), SUBMITTED, None, "") for name, *_ in LOCAL_JOBS.values()),
        *((job_key(LOCAL, name, LOCAL_JOBS_RUN), state, code, reason)
          for name, state, code, reason in LOCAL_JOBS.values()),
    ]  # fmt: skip
    events = journal.events_since(0)
    assert [(e.key, e.state, e.exit_code, e.reason) for e in events] == expected
    assert [e.seq for e in events] == list(range(1, 24)) and journal.last_seq == 23
    assert {e.job_id for e in events if e.key == sweep("train")} == {"5001"}
    assert all(e.time > 0 and e.bundle == e.key.split("/")[0] for e in events)
    # and it goes on: the next event is numbered after the old agent's last
    [event] = journal.update([(sweep("evaluate"), JobStatus(job_id="5002", state=RUNNING))])
    assert (event.seq, event.name, event.job_id) == (24, "evaluate", "5002")


def test_the_journal_is_migrated_once(tmp_path):
    path = restore(tmp_path)
    for _ in range(2):  # opened again: nothing changes
        journal = Journal(path)
        try:
            assert journal.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert len(journal.jobs()) == 12 and journal.last_seq == 23
        finally:
            journal.close()


# ---- the laptop's records ------------------------------------------------------------------------


@pytest.fixture
def jobs_dir(tmp_path: Path) -> Path:
    """A copy of the old client's jobs directory (tests that write must not touch the fixture)."""
    return Path(shutil.copytree(RELEASE / "jobs", tmp_path / "milex" / "jobs"))


def test_the_bundle_record_loads_with_its_jobs_arguments_and_dependencies(jobs_dir):
    assert list_bundles(jobs_dir) == [("sweep", "20261126090000")]
    bundle = load_bundle(jobs_dir, "sweep")
    assert (bundle.name, bundle.created, bundle.stem) == ("sweep", "20261126090000", SWEEP)
    train, evaluate = bundle.jobs["train"], bundle.jobs["evaluate"]
    assert train.script == "python train.py"
    assert train.script_args == {"message": "hello big world", "lr": 0.0003, "epochs": 5, "augment": True}
    assert [type(value) for value in train.script_args.values()] == [str, float, int, bool]
    assert (train.dependencies, train.pre_commands) == ([], ["module load cuda"])
    slurm = train.slurm
    assert (slurm.time, slurm.cpus_per_task, slurm.gres, slurm.mem, slurm.dependency_type, slurm.extra) == (
        "01:30:00", 4, "gpu:1", "16G", "afterok", {},
    )  # fmt: skip
    assert evaluate.script_args == {"checkpoint": "runs/train 1/last.pt", "threshold": 0.5}
    assert (evaluate.dependencies, evaluate.slurm.time, evaluate.slurm.dependency_type) == (
        ["train"], "00:10:00", "afterany",
    )  # fmt: skip
    assert [job.name for job in bundle.ordered_jobs()] == ["train", "evaluate"]


def test_the_runs_record_loads_with_ids_and_states(jobs_dir):
    cluster, local = load_submissions(jobs_dir, SWEEP)
    assert (cluster.bundle, cluster.machine, cluster.submitted_at, cluster.run_id, cluster.error) == (
        SWEEP, "narval", "2026-11-26T09:00:05", SWEEP_RUN, "",
    )  # fmt: skip
    assert {name: (job.job_id, job.state, job.exit_code, job.reason, job.script)
            for name, job in cluster.jobs.items()} == {
        "train": ("5001", COMPLETED, 0, "", f"{MACHINE_PATH}/slurm/{SWEEP}_train.sh"),
        "evaluate": ("5002", PENDING, None, "Dependency", f"{MACHINE_PATH}/slurm/{SWEEP}_evaluate.sh"),
    }  # fmt: skip
    assert (local.machine, local.run_id, local.identity) == ("local", LOCAL_RUN, (LOCAL_RUN,))
    assert {name: (job.job_id, job.state) for name, job in local.jobs.items()} == {"train": ("7", SUBMITTED)}
    assert local.error.startswith("job 'evaluate' was not submitted")
    # The run's id is the last part of its jobs' keys in the agent's journal.
    assert run_of_key(job_key(SWEEP, "train", cluster.run_id)) == SWEEP_RUN


def test_the_runs_record_takes_new_states_from_the_agent(jobs_dir):
    evaluate = TrackedJob(key=job_key(SWEEP, "evaluate", SWEEP_RUN), bundle=SWEEP, name="evaluate",
                          job_id="5002", state=FAILED, exit_code=1)  # fmt: skip
    assert apply_states(jobs_dir, "narval", [evaluate]) == 1
    cluster, local = load_submissions(jobs_dir, SWEEP)
    assert (cluster.jobs["evaluate"].state, cluster.jobs["evaluate"].exit_code) == (FAILED, 1)
    assert cluster.jobs["train"].state is COMPLETED and local.jobs["train"].job_id == "7"


# ---- the local scheduler's records ---------------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalScheduler]:
    """The old local scheduler's state directory, copied, under this code's local scheduler."""
    state_dir = Path(shutil.copytree(RELEASE / "local-jobs", tmp_path / "machine" / "local-jobs"))
    yield LocalScheduler(state_dir)
    wait_until(lambda: not any(runner_alive(path) for path in state_dir.iterdir() if path.is_dir()), 30)


def test_the_local_records_give_each_job_its_state(local):
    statuses = local.states(list(LOCAL_JOBS))
    expected = {
        job_id: JobStatus(job_id=job_id, state=state, exit_code=exit_code, reason=reason)
        for job_id, (_, state, exit_code, reason) in LOCAL_JOBS.items()
    }
    # The job that was running has no runner any more (none holds its lock): it is reported failed.
    expected["4"] = JobStatus(job_id="4", state=FAILED, reason=VANISHED)
    assert statuses == expected


def test_the_local_records_are_found_by_the_comment_of_their_key(local):
    comments = {
        comment_of(job_key(LOCAL, name, LOCAL_JOBS_RUN)): job_id for job_id, (name, *_) in LOCAL_JOBS.items()
    }
    assert local.lookup(list(comments)) == comments


def test_the_local_specs_keep_what_each_job_runs_and_waits_for(local):
    specs = {job_id: read_spec(local.state_dir / job_id) for job_id in LOCAL_JOBS}
    assert {job_id: spec.job_name for job_id, spec in specs.items()} == {
        job_id: name for job_id, (name, *_) in LOCAL_JOBS.items()
    }
    assert (specs["5"].array, specs["6"].after, specs["6"].dependency_type) == ("0-2", ["2"], "afterok")
    assert specs["1"].script == f"{MACHINE_PATH}/submit/ok.sh" and specs["1"].submitted > 0
    assert (local.state_dir / "4" / "script.sh").read_text().endswith("sleep 60\n")


def test_a_local_job_submitted_after_them_takes_the_next_id_and_waits_on_an_old_one(local, tmp_path):
    script = tmp_path / "next.sh"
    script.write_text(f"#!/bin/sh\n#SBATCH --output={tmp_path}/next-%j.out\ntrue\n")
    assert local.submit(SubmitCall(script, after=["1"])) == "7"  # after last-id; on job 1, which completed
    wait_until(lambda: local.states(["7"])["7"].state.finished, 30)
    assert local.states(["7"])["7"].state is COMPLETED
    local.cancel(["3"])  # a job the old scheduler ended: nothing to do, no error
    assert local.states(["3"])["3"].state is CANCELLED
