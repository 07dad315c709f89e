"""Jobs that fail, kill themselves and are cancelled on the real cluster: squeue and the
job-completion log give each the same state and exit code, the one a shell would report."""

from __future__ import annotations

import subprocess
from pathlib import Path

from milex_agent.scheduler.slurm.history import SlurmHistory
from milex_agent.scheduler.slurm.scheduler import SlurmScheduler
from milex_common.model import JobState, JobStatus
from tests.e2e.conftest import wait_until

SCRIPTS = {
    "exit3": "exit 3",
    "selfkill": "kill -9 $$",
    "cancelled": "sleep 600",
    "scancel_kill": "sleep 600",
    "array": '[ "$SLURM_ARRAY_TASK_ID" = 1 ] && exit 4\nexit 0',
}
EXPECTED = {
    "exit3": (JobState.FAILED, 3),
    "selfkill": (JobState.FAILED, 137),
    "cancelled": (JobState.CANCELLED, None),
    "scancel_kill": (JobState.CANCELLED, None),
    "array": (JobState.FAILED, 4),
}


def sbatch(tmp_path: Path, role: str, *options: str) -> str:
    script = tmp_path / f"{role}.sh"
    script.write_text(f"#!/bin/sh\n{SCRIPTS[role]}\n")
    argv = ["sbatch", "--parsable", f"--output={tmp_path}/%j.out", *options, str(script)]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def outcome(states: dict[str, JobStatus], ids: dict[str, str]) -> dict[str, tuple[JobState, int | None]]:
    return {role: (states[job_id].state, states[job_id].exit_code) for role, job_id in ids.items()}


def test_squeue_and_the_job_completion_log_agree_on_how_jobs_ended(
    slurm_cluster: None, tmp_path: Path
) -> None:
    scheduler, history = SlurmScheduler(), SlurmHistory()
    ids = {role: sbatch(tmp_path, role) for role in ("exit3", "selfkill", "cancelled", "scancel_kill")}
    ids["array"] = sbatch(tmp_path, "array", "--array=0-2")
    sleepers = [ids["cancelled"], ids["scancel_kill"]]
    wait_until(
        lambda: all(s.state is JobState.RUNNING for s in scheduler.states(sleepers).values()),
        what="the sleeping jobs to run",
    )
    subprocess.run(["scancel", ids["cancelled"]], check=True)
    subprocess.run(["scancel", "--signal=KILL", ids["scancel_kill"]], check=True)

    wait_until(
        lambda: all(s.state.finished for s in scheduler.states(list(ids.values())).values()),
        what="every job to end in squeue",
    )
    from_squeue = scheduler.states(list(ids.values()))
    wait_until(lambda: len(history.states(list(ids.values()))) == len(ids), what="the log's lines")
    from_log = history.states(list(ids.values()))
    assert outcome(from_squeue, ids) == EXPECTED
    assert outcome(from_log, ids) == EXPECTED
