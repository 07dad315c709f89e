"""SlurmScheduler and SlurmHistory fed SLURM 22.05's own output (slurm_captured/2205, see its README)
through the one gateway, run_command: every source gives a job the same state and exit code."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from milex.agent.scheduler import slurm, slurm_history
from milex.agent.scheduler.command import CommandResult
from milex.agent.scheduler.slurm import SlurmScheduler
from milex.agent.scheduler.slurm_history import JobCompLog, SlurmHistory
from milex.common.model import JobState, JobStatus

CAPTURED = Path(__file__).parent / "slurm_captured" / "2205"
IDS = dict(line.split() for line in (CAPTURED / "ids.txt").read_text().splitlines())
# What every source must say of each job once it ended (the run of capture.sh behind ids.txt).
FINISHED = {
    "completed": (JobState.COMPLETED, 0),
    "exit3": (JobState.FAILED, 3),
    "selfkill": (JobState.FAILED, 137),  # `kill -9 $$`: 128 + 9, as a shell reports it
    "cancelled": (JobState.CANCELLED, None),  # SLURM's SIGTERM is not the job's exit code
    "scancel_kill": (JobState.CANCELLED, None),
    "requeued": (JobState.COMPLETED, 0),  # its second run
    "timeout": (JobState.TIMEOUT, None),
    "array": (JobState.FAILED, 137),  # tasks: exit 0, exit 5, SIGKILL, cancelled
}


def captured(name: str) -> str:
    return (CAPTURED / name).read_text()


@dataclass
class Cluster:
    """Answers scheduler commands with captured output, as run_command would."""

    jobcomp: Path
    squeue: str = "squeue_finished.txt"
    sacct: str | None = None  # None: accounting disabled, as on the test cluster
    sbatch: str = "sbatch_parsable.txt"
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def __call__(self, argv: list[str], *, timeout: float = 60.0, stdin: str | None = None) -> CommandResult:
        self.calls.append(tuple(argv))
        if argv[0] == "sacct" and self.sacct is None:
            return CommandResult(tuple(argv), 1, "", captured("sacct_disabled.stderr").splitlines()[0])
        if argv[:3] == ["scontrol", "show", "config"]:
            config = captured("scontrol_show_config.txt")
            config = config.replace("/var/run/milex-test-cluster/jobcomp.log", str(self.jobcomp))
            return CommandResult(tuple(argv), 0, config, "")
        printed = {"squeue": self.squeue, "sacct": self.sacct, "sbatch": self.sbatch}.get(argv[0])
        if printed is None:
            raise AssertionError(f"unexpected command {argv}")
        return CommandResult(tuple(argv), 0, captured(printed), "")


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    jobcomp = tmp_path / "jobcomp.log"
    # The captured jobs ran as root; the log is read for the jobs of whoever runs the tests.
    jobcomp.write_text(captured("jobcomp.log").replace("UserId=root(0)", f"UserId=me({os.getuid()})"))
    fake = Cluster(jobcomp=jobcomp)
    monkeypatch.setattr(slurm, "run_command", fake)
    monkeypatch.setattr(slurm_history, "run_command", fake)
    yield fake


def outcomes(
    states: dict[str, JobStatus], roles: Iterable[str] = FINISHED
) -> dict[str, tuple[JobState, int | None]]:
    return {role: (states[IDS[role]].state, states[IDS[role]].exit_code) for role in roles}


def test_squeue_gives_each_finished_job_its_state_and_exit_code(cluster: Cluster) -> None:
    states = SlurmScheduler().states(list(IDS.values()))
    assert outcomes(states) == FINISHED
    assert (states[IDS["pending"]].state, states[IDS["pending"]].reason) == (JobState.PENDING, "JobHeldUser")
    assert states[IDS["exit3"]].reason == "NonZeroExitCode"
    assert states[IDS["timeout"]].reason == "TimeLimit"
    assert not any(call[0] == "sacct" for call in cluster.calls)  # squeue knew every job


def test_the_job_completion_log_agrees_with_squeue(cluster: Cluster) -> None:
    states = SlurmHistory().states([IDS[role] for role in FINISHED])
    assert outcomes(states) == FINISHED
    assert {call[0] for call in cluster.calls} == {"sacct", "scontrol"}  # sacct refused, once


def test_sacct_agrees_with_squeue(cluster: Cluster) -> None:
    cluster.sacct = "sacct_finished.derived.txt"
    states = SlurmHistory().states(list(IDS.values()))
    assert outcomes(states) == FINISHED
    assert (states[IDS["pending"]].state, states[IDS["pending"]].exit_code) == (JobState.CANCELLED, None)


def test_a_job_squeue_forgot_is_looked_up_in_the_job_completion_log(cluster: Cluster) -> None:
    cluster.squeue = "squeue_invalid_id.stdout"  # squeue prints nothing (and an error) for them
    states = SlurmScheduler().states([IDS[role] for role in FINISHED])
    assert outcomes(states) == FINISHED


def test_an_array_is_running_while_one_task_runs(cluster: Cluster) -> None:
    cluster.squeue = "squeue_active.txt"
    states = SlurmScheduler().states(list(IDS.values()))
    running = ("cancelled", "scancel_kill", "requeued", "timeout", "array")
    assert {role: states[IDS[role]].state for role in running} == dict.fromkeys(running, JobState.RUNNING)
    assert outcomes(states, ("completed", "exit3", "selfkill")) == {
        role: FINISHED[role] for role in ("completed", "exit3", "selfkill")
    }


def test_a_requeued_job_is_pending_again(cluster: Cluster) -> None:
    cluster.squeue = "squeue_requeued.txt"
    status = SlurmScheduler().states([IDS["requeued"]])[IDS["requeued"]]
    assert (status.state, status.exit_code, status.reason) == (JobState.PENDING, None, "BeginTime")


def test_the_requeued_jobs_last_line_in_the_log_wins(cluster: Cluster) -> None:
    lines = [line for line in captured("jobcomp.log").splitlines() if f"JobId={IDS['requeued']} " in line]
    assert ["JobState=PENDING" in lines[0], "JobState=COMPLETED" in lines[1]] == [True, True]
    log = JobCompLog(cluster.jobcomp)
    assert log.states([IDS["requeued"]])[IDS["requeued"]].state is JobState.COMPLETED


def test_a_cancelled_pending_job(cluster: Cluster) -> None:
    cluster.squeue = "squeue_pending_cancelled.txt"
    status = SlurmScheduler().states([IDS["pending"]])[IDS["pending"]]
    assert (status.state, status.exit_code) == (JobState.CANCELLED, None)
    assert SlurmHistory().states([IDS["pending"]])[IDS["pending"]].state is JobState.CANCELLED


def test_sacct_combines_array_ranges_and_heterogeneous_components_but_not_steps(cluster: Cluster) -> None:
    cluster.sacct = "sacct_forms.derived.txt"
    states = SlurmHistory().states(["300", "400", "500", "600"])
    assert {job_id: (s.state, s.exit_code) for job_id, s in states.items()} == {
        "300": (JobState.RUNNING, None),
        "400": (JobState.FAILED, 2),
        "500": (JobState.FAILED, 1),
        "600": (JobState.CANCELLED, None),
    }


@pytest.mark.parametrize("printed", ["sbatch_parsable.txt", "sbatch_parsable_cluster.derived.txt"])
def test_sbatch_parsable_gives_the_job_id(cluster: Cluster, printed: str, tmp_path: Path) -> None:
    cluster.sbatch = printed  # `181`, or `181;milex` on a cluster of a federation
    assert SlurmScheduler().submit(tmp_path / "job.sh", text="#!/bin/sh\n") == IDS["completed"]
