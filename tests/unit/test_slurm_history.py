"""The job-completion log read as it grows: only new lines, only this user's jobs, rotation survived."""

from __future__ import annotations

from pathlib import Path

import pytest

from milex_agent.scheduler.slurm.history import JobCompLog
from milex_common.model import JobState

UID = 1234


def line(job_id: int, state: str, exit_code: str = "0:0", uid: int = UID) -> str:
    return (
        f"JobId={job_id} UserId=alice({uid}) GroupId=alice({uid}) Name=train JobState={state} "
        f"Partition=debug TimeLimit=UNLIMITED DerivedExitCode=0:0 ExitCode={exit_code}\n"
    )


def test_only_this_users_finished_jobs_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "jobcomp.log"
    path.write_text(line(1, "COMPLETED") + line(2, "FAILED", "3:0") + line(3, "COMPLETED", uid=99))
    log = JobCompLog(path, uid=UID)
    states = log.states(["1", "2", "3", "4"])
    assert {job_id: (s.state, s.exit_code) for job_id, s in states.items()} == {
        "1": (JobState.COMPLETED, 0),
        "2": (JobState.FAILED, 3),
    }
    assert set(log.finished) == {"1", "2"}


def test_each_read_starts_where_the_last_ended_and_waits_for_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "jobcomp.log"
    path.write_text(line(1, "COMPLETED"))
    log = JobCompLog(path, uid=UID)
    assert list(log.states(["1"])) == ["1"]
    partial = line(2, "TIMEOUT", "0:15")
    with path.open("a") as appending:
        appending.write(partial[:30])  # slurmctld is still writing this line
    assert log.states(["2"]) == {}
    with path.open("a") as appending:
        appending.write(partial[30:] + line(1, "CANCELLED"))  # a requeued job's last line wins
    states = log.states(["1", "2"])
    assert (states["2"].state, states["1"].state) == (JobState.TIMEOUT, JobState.CANCELLED)


def test_a_rotated_log_is_read_from_its_start(tmp_path: Path) -> None:
    path = tmp_path / "jobcomp.log"
    path.write_text(line(1, "COMPLETED") * 50)
    log = JobCompLog(path, uid=UID)
    log.states(["1"])
    path.rename(tmp_path / "jobcomp.log.1")
    path.write_text(line(7, "FAILED", "1:0"))
    assert log.states(["7"])["7"].exit_code == 1
    assert log.states(["1"])["1"].state is JobState.COMPLETED  # what was read before is kept


def test_a_missing_log_knows_nothing(tmp_path: Path) -> None:
    assert JobCompLog(tmp_path / "absent.log", uid=UID).states(["1"]) == {}


def test_an_arrays_tasks_combine_across_reads(tmp_path: Path) -> None:
    def task(job_id: int, index: int, state: str, exit_code: str) -> str:
        return line(job_id, state, exit_code).replace(
            " DerivedExitCode", f" ArrayJobId=40 ArrayTaskId={index} DerivedExitCode"
        )

    path = tmp_path / "jobcomp.log"
    path.write_text(task(41, 1, "COMPLETED", "0:0"))
    log = JobCompLog(path, uid=UID)
    assert (log.states(["40"])["40"].state, log.states(["41"])) == (JobState.COMPLETED, {})
    with path.open("a") as appending:
        appending.write(task(42, 2, "FAILED", "0:9") + task(40, 0, "CANCELLED", "0:0"))
    status = log.states(["40"])["40"]
    assert (status.state, status.exit_code) == (JobState.FAILED, 137)


def test_sacct_is_asked_about_many_forgotten_jobs_a_few_thousand_at_a_time(monkeypatch) -> None:
    from milex_agent.scheduler.slurm import history
    from milex_agent.scheduler.slurm.command import CommandResult

    asked: list[list[str]] = []

    def sacct(argv: list[str], **_: object) -> CommandResult:
        ids = next(arg for arg in argv if arg.startswith("--jobs=")).removeprefix("--jobs=").split(",")
        asked.append(ids)
        return CommandResult(tuple(argv), 0, "".join(f"{i}|COMPLETED|0:0\n" for i in ids[:1]), "")

    monkeypatch.setattr(history, "run_command", sacct)
    job_ids = [str(10_000_000 + i) for i in range(12_000)]
    found = history.SlurmHistory()._from_sacct(job_ids)
    assert [len(ids) for ids in asked] == [5000, 5000, 2000]
    assert max(len(",".join(ids)) for ids in asked) < 128 * 1024
    assert sorted(found) == [asked[0][0], asked[1][0], asked[2][0]]


BOOTED = "2026-12-07T10:00:00"  # when the restarted controller started (BOOT_TIME)
OWN, REISSUED = "13690", "13692"  # ended before the restart; lost, its id given to another job since


@pytest.mark.parametrize("accounting", [False, True])
def test_an_id_given_again_after_a_restart_is_not_the_lost_jobs_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, accounting: bool
) -> None:
    """The restarted controller lost job b (13692, pending) and gave its id to another job, which has
    ended: its record, submitted after the restart, is not b's, so b is lost; job a's own record,
    submitted before, says a ended."""
    from milex_agent.scheduler.slurm import history, scheduler
    from milex_agent.scheduler.slurm.command import CommandResult
    from milex_agent.scheduler.slurm.output import slurm_time

    submitted = {OWN: "2026-12-07T09:58:00", REISSUED: "2026-12-07T10:00:07"}
    log = tmp_path / "jobcomp.log"
    log.write_text(
        "".join(
            line(int(job_id), "COMPLETED").replace(" DerivedExitCode", f" SubmitTime={at} DerivedExitCode")
            for job_id, at in submitted.items()
        )
    )

    def run(argv: list[str], *, env: object = None, **_: object) -> CommandResult:
        printed = ""
        if argv[0] == "sacct":
            if not accounting:
                return CommandResult(tuple(argv), 1, "", "Slurm accounting storage is disabled")
            ids = next(arg for arg in argv if arg.startswith("--jobs=")).removeprefix("--jobs=").split(",")
            if "--format=JobID,Submit" in argv:
                assert env == {"SLURM_TIME_FORMAT": "standard"}
                printed = "".join(f"{i}|{submitted[i]}\n" for i in ids)
            else:
                printed = "".join(f"{i}|COMPLETED|0:0\n" for i in ids)
        elif argv[:3] == ["scontrol", "show", "config"]:
            printed = f"JobCompType = jobcomp/filetxt\nJobCompLoc = {log}\n"
        return CommandResult(tuple(argv), 0, printed, "")  # squeue: neither job is in the controller

    monkeypatch.setattr(history, "run_command", run)
    monkeypatch.setattr(scheduler, "run_command", run)
    monkeypatch.setattr(history.os, "getuid", lambda: UID)
    booted = slurm_time(BOOTED)
    assert booted is not None
    slurm = scheduler.SlurmScheduler()
    assert slurm.confirm({"a": OWN, "b": REISSUED}, booted) == {"b"}
    assert slurm.confirm({"a": OWN, "b": REISSUED}, booted + 3600) == set()  # both before that boot
