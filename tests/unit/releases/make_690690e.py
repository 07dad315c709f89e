"""The recipe of the files in tests/unit/releases/690690e/ and tests/unit/journals/release-690690e.sql:
what Milex at commit 690690e (the layout before the move to milex_agent/milex_common) wrote, made by
that commit's own code. Read by tests/unit/test_release_690690e.py.

Run with an install of that commit, never with this checkout's (its imports are the old ones):

    git worktree add /tmp/old690 690690e
    python3 -m venv /tmp/oldvenv && /tmp/oldvenv/bin/pip install /tmp/old690
    /tmp/oldvenv/bin/python tests/unit/releases/make_690690e.py
    git worktree remove /tmp/old690

It works in /tmp/milex-690690e (the machine path the files name), starts a few jobs of the `local`
scheduler there (a few seconds), and replaces the fixture files. Importing it does nothing.
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "690690e"
DUMP = HERE.parent / "journals" / "release-690690e.sql"
BASE = Path("/tmp/milex-690690e")  # the machine's path (local-jobs/ and the agent's journal)
MACHINE = "narval"

# The laptop's bundle and its runs.
SWEEP, SWEEP_DATE, SWEEP_RUN = "sweep", "20261126090000", "20261126090000-0a1b2c3d"
LOCAL_RUN = "20261126093000-5e6f7a8b"
# Bundles only the agent knows (submitted from another laptop).
GRID, LOCAL = "grid_20261126100000", "local_20261126120000"
GRID_RUN, LOCAL_RUN_ID = "20261126100000-1c2d3e4f", "20261126120000-9a8b7c6d"


def main() -> None:
    import milex.agent.journal  # noqa: F401  (fails at once under the new layout)

    shutil.rmtree(BASE, ignore_errors=True)
    shutil.rmtree(OUT, ignore_errors=True)
    (BASE / "submit").mkdir(parents=True)
    local_ids = make_local_jobs()
    make_journal(local_ids)
    make_records()
    print(f"wrote {OUT} and {DUMP}")


# ---- the laptop's records: a bundle and its runs ---------------------------------------------------


def make_records() -> None:
    from milex.common.model import Bundle, Job, JobState, SlurmOptions
    from milex.common.protocol import TrackedJob
    from milex.records import (
        Submission,
        SubmittedJobRecord,
        apply_states,
        job_key,
        save_bundle,
        save_submission,
    )

    jobs_dir = OUT / "jobs"
    train = Job(
        name="train",
        script="python train.py",
        script_args={"message": "hello big world", "lr": 0.0003, "epochs": 5, "augment": True},
        pre_commands=["module load cuda"],
        slurm=SlurmOptions(time="01:30:00", cpus_per_task=4, gres="gpu:1", mem="16G"),
    )
    evaluate = Job(
        name="evaluate",
        script="python evaluate.py",
        script_args={"checkpoint": "runs/train 1/last.pt", "threshold": 0.5},
        dependencies=["train"],
        slurm=SlurmOptions(time="00:10:00", dependency_type="afterany"),
    )
    bundle = Bundle(name=SWEEP, created=SWEEP_DATE, jobs={"train": train, "evaluate": evaluate})
    save_bundle(jobs_dir, bundle)

    # A run on the cluster, recorded as milex-run records one (api.submit_bundle's `record`) ...
    stem = bundle.stem
    run = Submission(bundle=stem, machine=MACHINE, submitted_at="2026-11-26T09:00:05", run_id=SWEEP_RUN)
    tracked = {
        name: TrackedJob(key=job_key(stem, name, SWEEP_RUN), bundle=stem, name=name, job_id=job_id,
                         state=JobState.SUBMITTED, script=f"{BASE}/slurm/{stem}_{name}.sh")
        for name, job_id in (("train", "5001"), ("evaluate", "5002"))
    }  # fmt: skip
    for job in tracked.values():
        run.jobs[job.name] = SubmittedJobRecord(job_id=job.job_id, script=job.script)
        run.jobs[job.name].take(job)
    save_submission(jobs_dir, run)
    # ... then the states `milex status` brought back from the agent.
    done = {"train": (JobState.COMPLETED, 0, ""), "evaluate": (JobState.PENDING, None, "Dependency")}
    for name, (state, exit_code, reason) in done.items():
        tracked[name].state, tracked[name].exit_code, tracked[name].reason = state, exit_code, reason
    apply_states(jobs_dir, MACHINE, tracked.values())

    # A second run, on a machine whose agent refused the second job: a partial record with its error.
    partial = Submission(bundle=stem, machine="local", submitted_at="2026-11-26T09:30:00", run_id=LOCAL_RUN)
    partial.jobs["train"] = SubmittedJobRecord(job_id="7", script=f"{BASE}/slurm/{stem}_train.sh")
    partial.error = "job 'evaluate' was not submitted: the local scheduler refused it (no such account)."
    save_submission(jobs_dir, partial)
    (jobs_dir / ".runs.lock").unlink()  # the lock of the runs files, empty and not a record


# ---- the local scheduler's records ---------------------------------------------------------------

LOCAL_SCRIPTS = {
    "ok": "echo ok",
    "bad": "echo failing >&2\nexit 3",
    "slow": "sleep 60",  # cancelled while it runs
    "hang": "sleep 60",  # its record copied while it runs, then cancelled
    "arr": "#SBATCH --array=0-2\necho task $SLURM_ARRAY_TASK_ID",
    "after": "echo never",  # afterok on `bad`: never runs
}


def make_local_jobs() -> dict[str, str]:
    """Submit LOCAL_SCRIPTS with the old local scheduler, wait for them, and copy their records."""
    import os

    from milex.agent.ledger import comment_of
    from milex.agent.scheduler.local import LocalScheduler
    from milex.records import job_key

    os.chdir(BASE / "submit")
    scheduler = LocalScheduler(BASE / "local-jobs")
    ids: dict[str, str] = {}
    for name, body in LOCAL_SCRIPTS.items():
        script = BASE / "submit" / f"{name}.sh"
        head = "" if body.startswith("#SBATCH") else f"#SBATCH --job-name={name}\n"
        script.write_text(f"#!/bin/sh\n{head}{body}\n")
        after = [ids["bad"]] if name == "after" else []
        comment = comment_of(job_key(LOCAL, name, LOCAL_RUN_ID))
        ids[name] = scheduler.submit(script, after=after, comment=comment)
    wait(scheduler, [ids["slow"], ids["hang"]], running=True)
    keep(BASE / "local-jobs" / ids["hang"])  # as it was while it ran
    scheduler.cancel([ids["slow"], ids["hang"]])
    wait(scheduler, list(ids.values()), running=False)
    for name, job_id in ids.items():
        if name != "hang":
            keep(BASE / "local-jobs" / job_id)
    shutil.copy(BASE / "local-jobs" / "last-id", OUT / "local-jobs" / "last-id")
    return ids


def wait(scheduler, job_ids: list[str], *, running: bool) -> None:  # type: ignore[no-untyped-def]
    from milex.common.model import JobState

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = [status.state for status in scheduler.states(job_ids).values()]
        if all(state is JobState.RUNNING if running else state.finished for state in states):
            return
        time.sleep(0.1)
    sys.exit(f"local jobs {job_ids} did not get there: {scheduler.states(job_ids)}")


def keep(job_dir: Path) -> None:
    """The files of a job's directory that hold its record (not its locks, logs or outputs)."""
    target = OUT / "local-jobs" / job_dir.name
    target.mkdir(parents=True, exist_ok=True)
    for name in ("spec.json", "state.json", "script.sh"):
        shutil.copy(job_dir / name, target / name)


# ---- the agent's journal -------------------------------------------------------------------------


def make_journal(local_ids: dict[str, str]) -> None:
    from milex.agent.journal import Journal

    journal = Journal(BASE / "agent" / "journal.sqlite")
    try:
        sweep_jobs(journal)
        grid_jobs(journal)
        local_jobs(journal, local_ids)
        version = journal.db.execute("PRAGMA user_version").fetchone()[0]
        lines = list(journal.db.iterdump())
    finally:
        journal.close()
    # `.iterdump()` leaves out the schema version, which says which migrations have run: appended.
    DUMP.write_text("\n".join([*lines, f"PRAGMA user_version = {version};", ""]))
    check = sqlite3.connect(":memory:")
    check.executescript(DUMP.read_text())
    assert check.execute("PRAGMA user_version").fetchone()[0] == version


def _tracked(bundle: str, name: str, run_id: str, path: Path = BASE):  # type: ignore[no-untyped-def]
    from milex.common.model import JobState
    from milex.common.protocol import TrackedJob
    from milex.records import job_key

    stem = f"{path}/slurm/{bundle}_{name}"
    return TrackedJob(key=job_key(bundle, name, run_id), bundle=bundle, name=name, job_id="",
                      state=JobState.SUBMITTED, script=f"{stem}.sh", stdout=f"{stem}-%j.out",
                      stderr=f"{stem}-%j.err")  # fmt: skip


def sweep_jobs(journal) -> None:  # type: ignore[no-untyped-def]
    """The laptop's run of `sweep` on the cluster: train completed, evaluate pending on it."""
    from milex.common.model import JobState, JobStatus

    stem = f"{SWEEP}_{SWEEP_DATE}"
    train, evaluate = _tracked(stem, "train", SWEEP_RUN), _tracked(stem, "evaluate", SWEEP_RUN)
    journal.begin_many([train, evaluate], scheduler="slurm", machine_path=str(BASE))
    journal.submitted_many([(train.key, "5001"), (evaluate.key, "5002")])
    journal.update(
        [
            (train.key, JobStatus(job_id="5001", state=JobState.RUNNING)),
            (evaluate.key, JobStatus(job_id="5002", state=JobState.PENDING, reason="Dependency")),
        ]
    )
    journal.update([(train.key, JobStatus(job_id="5001", state=JobState.COMPLETED, exit_code=0))])


def grid_jobs(journal) -> None:  # type: ignore[no-untyped-def]
    """A bundle through the agent's queue: setup failed, scan (an array) cut in two windows, plot
    waiting in the queue, cleanup never run (its dependency failed), report in doubt."""
    import msgspec

    from milex.agent.room import QUEUED_REASON
    from milex.common.model import Bundle, Job, JobState, JobStatus, MachineSettings, SlurmOptions
    from milex.common.protocol import SubmitBundle, encode

    names = ("setup", "scan", "plot", "cleanup", "report")
    bundle = Bundle(name="grid", created="20261126100000", jobs={
        "setup": Job(name="setup", script="python setup.py"),
        "scan": Job(name="scan", script="python scan.py", script_args={"step": 0.25},
                    dependencies=["setup"], slurm=SlurmOptions(array="0-9", dependency_type="afterany")),
        "plot": Job(name="plot", script="python plot.py", dependencies=["scan"]),
        "cleanup": Job(name="cleanup", script="rm -r scratch", dependencies=["setup"]),
        "report": Job(name="report", script="python report.py"),
    })  # fmt: skip
    settings = MachineSettings(name=MACHINE, path=str(BASE), slurm_account="def-alice", max_submitted=8)
    jobs = {name: _tracked(GRID, name, GRID_RUN) for name in names}
    keys = {name: job.key for name, job in jobs.items()}
    body = encode(SubmitBundle(bundle=bundle, settings=settings, keys=keys))
    tasks = {"scan": 10}
    journal.enqueue(GRID, body, [(jobs[name], tasks.get(name, 1)) for name in names],
                    scheduler="slurm", machine_path=str(BASE))  # fmt: skip
    setup, scan = keys["setup"], keys["scan"]
    journal.begin(jobs["setup"], scheduler="slurm", machine_path=str(BASE))
    journal.submitted(setup, "6001")
    journal.update([(setup, JobStatus(job_id="6001", state=JobState.FAILED, exit_code=2))])
    windows = [(f"{scan}~0", 5), (f"{scan}~5", 5)]
    journal.split(scan, 5, windows)
    parts = [msgspec.structs.replace(jobs["scan"], key=key) for key, _ in windows]
    journal.begin_many(
        parts, scheduler="slurm", machine_path=str(BASE), part_of={k: scan for k, _ in windows}
    )
    journal.submitted_many([(windows[0][0], "6002"), (windows[1][0], "6003")])
    journal.update(
        [
            (windows[0][0], JobStatus(job_id="6002", state=JobState.RUNNING)),
            (windows[1][0], JobStatus(job_id="6003", state=JobState.PENDING, reason="Priority")),
        ]
    )
    journal.hold([keys["plot"]], QUEUED_REASON)
    journal.settle_unsubmitted([keys["cleanup"]], JobState.CANCELLED, "DependencyNeverSatisfied")
    journal.begin(jobs["report"], scheduler="slurm", machine_path=str(BASE))  # sbatch never answered


def local_jobs(journal, ids: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """The jobs of LOCAL_SCRIPTS, with the states the old local scheduler gave them (hang: running)."""
    from milex.agent.scheduler.local import LocalScheduler
    from milex.common.model import JobState, JobStatus

    jobs = {name: _tracked(LOCAL, name, LOCAL_RUN_ID) for name in ids}
    journal.begin_many(list(jobs.values()), scheduler="local", machine_path=str(BASE))
    journal.submitted_many([(jobs[name].key, job_id) for name, job_id in ids.items()])
    states = LocalScheduler(BASE / "local-jobs").states(list(ids.values()))
    running = {"hang": JobStatus(job_id=ids["hang"], state=JobState.RUNNING)}
    journal.update([(jobs[name].key, running.get(name, states[ids[name]])) for name in ids])


if __name__ == "__main__":
    main()
