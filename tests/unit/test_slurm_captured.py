"""SlurmScheduler and SlurmHistory fed SLURM's own output (slurm_captured/2205: 22.05 without accounting;
slurm_captured/2205acct: 22.05 with it; slurm_captured/2411: 24.11 with it; see their READMEs) through the
one gateway, run_command: every source gives a job the same state and exit code, on every capture."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from milex_agent.scheduler.base import SubmitCall
from milex_agent.scheduler.slurm import history as slurm_history
from milex_agent.scheduler.slurm import poll as slurm_poll
from milex_agent.scheduler.slurm import scheduler as slurm
from milex_agent.scheduler.slurm.command import CommandResult
from milex_agent.scheduler.slurm.history import JobCompLog, SlurmHistory
from milex_agent.scheduler.slurm.output import sacct_rows, squeue_rows, statuses
from milex_agent.scheduler.slurm.poll import (
    MAX_LISTED_JOBS,
    changed_query,
    full_query,
    has_only_job_state,
    state_query,
)
from milex_agent.scheduler.slurm.scheduler import SlurmScheduler
from milex_common.model import JobState, JobStatus

CAPTURES = Path(__file__).parent / "slurm_captured"
VERSIONS = ("2205", "2205acct", "2411")  # captures: a version, and `acct` where 22.05 had accounting
ACCOUNTED = ("2205acct", "2411")  # the captures of clusters with accounting: sacct answers there
CAPTURED = CAPTURES / "2205"  # the 22.05 capture, for what only it has (the job-completion log)


def ids_of(version: str, name: str = "ids.txt") -> dict[str, str]:
    return dict(line.split() for line in (CAPTURES / version / name).read_text().splitlines())


def ids_of_forms() -> dict[str, str]:
    """The jobs of 2205acct's sacct_forms_*.txt: a throttled array, a held array, a heterogeneous job."""
    return ids_of("2205acct", "ids_forms.txt")


IDS = ids_of("2205")
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


def captured(name: str, version: str = "2205") -> str:
    return (CAPTURES / version / name).read_text()


@dataclass
class Cluster:
    """Answers scheduler commands with the output captured on one SLURM version, as run_command would."""

    jobcomp: Path
    version: str = "2205"
    squeue: str = "squeue_finished.txt"
    sacct: str | None = None  # None: accounting disabled, as on the 22.05 test cluster
    sbatch: str = "sbatch_parsable.txt"
    refuses_state_only: bool | None = None  # None: as its version does
    squeue_text: str | None = None  # printed by squeue instead of the file `squeue`
    calls: list[tuple[str, ...]] = field(default_factory=list)

    @property
    def ids(self) -> dict[str, str]:
        return ids_of(self.version)

    def __call__(
        self, argv: list[str], *, timeout: float = 60.0, stdin: str | None = None, env: object = None
    ) -> CommandResult:
        self.calls.append(tuple(argv))
        if argv[0] == "sacct" and self.sacct is None:
            return CommandResult(tuple(argv), 1, "", captured("sacct_disabled.stderr").splitlines()[0])
        if argv[:3] == ["scontrol", "show", "config"]:
            config = captured("scontrol_show_config.txt", self.version)
            config = config.replace("/var/run/milex-test-cluster/jobcomp.log", str(self.jobcomp))
            return CommandResult(tuple(argv), 0, config, "")
        if argv[0] == "squeue":
            return self._squeue(argv)
        printed = {"sacct": self.sacct, "sbatch": self.sbatch}.get(argv[0])
        if printed is None:
            raise AssertionError(f"unexpected command {argv}")
        return CommandResult(tuple(argv), 0, captured(printed, self.version), "")

    def _squeue(self, argv: list[str]) -> CommandResult:
        if "--version" in argv:
            return CommandResult(tuple(argv), 0, captured("squeue_version.txt", self.version), "")
        printed = captured(self.squeue, self.version) if self.squeue_text is None else self.squeue_text
        if "--only-job-state" not in argv:
            return CommandResult(tuple(argv), 0, printed, "")
        refuses = (
            self.version.startswith("2205") if self.refuses_state_only is None else self.refuses_state_only
        )
        if refuses:
            return CommandResult(tuple(argv), 1, "", captured("squeue_only_job_state.stderr", "2205"))
        return CommandResult(tuple(argv), 0, state_only(printed), "")

    def squeue_calls(self) -> list[tuple[str, ...]]:
        return [call for call in self.calls if call[0] == "squeue" and "--version" not in call]


def state_only(text: str) -> str:
    """What `squeue --only-job-state` prints where squeue printed `text` with every field: the same
    rows with Reason `None` and exit_code `0:0` (test_a_state_only_view_is_what_squeue_prints)."""
    rows = (line.split("|") for line in text.splitlines() if line.strip())
    return "".join(f"{own}|{array}|{state}|None|0:0|\n" for own, array, state, *_ in rows)


def fake_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str) -> Cluster:
    jobcomp = tmp_path / "jobcomp.log"
    # The captured jobs ran as root; the log is read for the jobs of whoever runs the tests.
    jobcomp.write_text(captured("jobcomp.log").replace("UserId=root(0)", f"UserId=me({os.getuid()})"))
    # A cluster with accounting (and no job-completion log): sacct answers there.
    fake = Cluster(
        jobcomp=jobcomp, version=version, sacct="sacct_allocations.txt" if version in ACCOUNTED else None
    )
    monkeypatch.setattr(slurm, "run_command", fake)
    monkeypatch.setattr(
        slurm.Sbatch, "start", lambda self, options, script, text: lambda: fake(["sbatch", *options])
    )
    monkeypatch.setattr(slurm_poll, "run_command", fake)
    monkeypatch.setattr(slurm_history, "run_command", fake)
    return fake


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """The 22.05 capture: no accounting, a job-completion log."""
    yield fake_cluster(tmp_path, monkeypatch, "2205")


@pytest.fixture(params=VERSIONS)
def any_cluster(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cluster]:
    """Each capture in turn, for the roles all captured."""
    yield fake_cluster(tmp_path, monkeypatch, request.param)


def outcomes(
    states: dict[str, JobStatus], roles: Iterable[str] = FINISHED, ids: dict[str, str] = IDS
) -> dict[str, tuple[JobState, int | None]]:
    return {role: (states[ids[role]].state, states[ids[role]].exit_code) for role in roles}


def listed(cluster: Cluster) -> set[str]:
    """The jobs squeue printed in `cluster`'s capture: cluster1's slurmctld forgot the others
    (MinJobAge=30 s) before the capture's snapshots (see slurm_captured/2205acct/README.md)."""
    return {row.job_id for row in squeue_rows(captured(cluster.squeue, cluster.version))}


def test_squeue_gives_each_finished_job_its_state_and_exit_code(any_cluster: Cluster) -> None:
    ids = any_cluster.ids
    states = SlurmScheduler().states(list(ids.values()))
    assert outcomes(states, ids=ids) == FINISHED
    assert (states[ids["pending"]].state, states[ids["pending"]].reason) == (JobState.PENDING, "JobHeldUser")
    reasons = {"exit3": "NonZeroExitCode", "timeout": "TimeLimit"}  # as squeue prints them; sacct has none
    shown = {role: states[ids[role]].reason for role in reasons if ids[role] in listed(any_cluster)}
    assert shown == {role: reason for role, reason in reasons.items() if ids[role] in listed(any_cluster)}
    forgotten = set(ids.values()) - listed(any_cluster)
    assert any(call[0] == "sacct" for call in any_cluster.calls) is bool(forgotten)  # asked only then
    assert bool(forgotten) is (any_cluster.version == "2205acct")


def test_the_job_completion_log_agrees_with_squeue(cluster: Cluster) -> None:
    states = SlurmHistory().states([IDS[role] for role in FINISHED])
    assert outcomes(states) == FINISHED
    assert {call[0] for call in cluster.calls} == {"sacct", "scontrol"}  # sacct refused, once


def test_a_job_squeue_forgot_is_looked_up_in_sacct_or_the_job_completion_log(any_cluster: Cluster) -> None:
    any_cluster.squeue = "squeue_invalid_id.stdout"  # squeue prints nothing (and an error) for them
    ids = any_cluster.ids
    states = SlurmScheduler().states([ids[role] for role in FINISHED])
    assert outcomes(states, ids=ids) == FINISHED
    looked_up = {call[0] for call in any_cluster.calls} - {"squeue"}
    assert looked_up == ({"sacct"} if any_cluster.version in ACCOUNTED else {"sacct", "scontrol"})


def test_an_array_is_running_while_one_task_runs(any_cluster: Cluster) -> None:
    any_cluster.squeue = "squeue_active.txt"
    ids = any_cluster.ids
    states = SlurmScheduler().states(list(ids.values()))
    running = ("cancelled", "scancel_kill", "requeued", "array")
    assert {role: states[ids[role]].state for role in running} == dict.fromkeys(running, JobState.RUNNING)
    ended = ("completed", "exit3", "selfkill")
    assert outcomes(states, ended, ids) == {role: FINISHED[role] for role in ended}


def test_a_requeued_job_is_pending_again(any_cluster: Cluster) -> None:
    any_cluster.squeue = "squeue_requeued.txt"
    job_id = any_cluster.ids["requeued"]
    status = SlurmScheduler().states([job_id])[job_id]
    assert (status.state, status.exit_code, status.reason) == (JobState.PENDING, None, "BeginTime")


def test_the_requeued_jobs_last_line_in_the_log_wins(cluster: Cluster) -> None:
    lines = [line for line in captured("jobcomp.log").splitlines() if f"JobId={IDS['requeued']} " in line]
    assert ["JobState=PENDING" in lines[0], "JobState=COMPLETED" in lines[1]] == [True, True]
    log = JobCompLog(cluster.jobcomp)
    assert log.states([IDS["requeued"]])[IDS["requeued"]].state is JobState.COMPLETED


def test_a_cancelled_pending_job(any_cluster: Cluster) -> None:
    any_cluster.squeue = "squeue_pending_cancelled.txt"
    job_id = any_cluster.ids["pending"]
    status = SlurmScheduler().states([job_id])[job_id]
    assert (status.state, status.exit_code) == (JobState.CANCELLED, None)
    assert SlurmHistory().states([job_id])[job_id].state is JobState.CANCELLED


# Clusters with accounting (22.05 and 24.11): what the 22.05 cluster without it could not show.


@pytest.fixture(params=ACCOUNTED)
def accounted(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cluster]:
    yield fake_cluster(tmp_path, monkeypatch, request.param)


@pytest.fixture
def cluster2411(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    yield fake_cluster(tmp_path, monkeypatch, "2411")


@pytest.mark.parametrize(("version", "printed"), [("2205acct", "51;cluster1\n"), ("2411", "27;cluster2\n")])
def test_sbatch_parsable_with_clusters_gives_the_job_id_and_cluster(
    cluster: Cluster, version: str, printed: str, tmp_path: Path
) -> None:
    cluster.version = version
    assert (
        SlurmScheduler().submit(SubmitCall(tmp_path / "job.sh", text="#!/bin/sh\n"))
        == cluster.ids["completed"]
    )
    assert captured("sbatch_parsable_cluster.txt", version) == printed  # `--clusters=<its name>`
    cluster.sbatch = "sbatch_parsable_cluster.txt"
    assert (
        SlurmScheduler().submit(SubmitCall(tmp_path / "job.sh", text="#!/bin/sh\n")) == printed.split(";")[0]
    )


def test_real_sacct_agrees_with_squeue(accounted: Cluster) -> None:
    ids = accounted.ids
    from_squeue = SlurmScheduler().states(list(ids.values()))
    from_sacct = SlurmHistory().states(list(ids.values()))
    assert outcomes(from_sacct, ids=ids) == outcomes(from_squeue, ids=ids) == FINISHED
    assert (from_sacct[ids["pending"]].state, from_sacct[ids["pending"]].exit_code) == (
        JobState.CANCELLED,
        None,
    )


@pytest.mark.parametrize("version", ACCOUNTED)
def test_sacct_without_allocations_reads_to_the_same_states_its_steps_left_out(version: str) -> None:
    ids = ids_of(version)
    steps, allocations = (
        sacct_rows(captured(name, version)) for name in ("sacct_steps.txt", "sacct_allocations.txt")
    )
    assert statuses(ids.values(), steps) == statuses(ids.values(), allocations)
    # SLURM's SIGTERM is on the cancelled job's batch step; its allocation prints `0:0` (not `0:15`,
    # as the hand-written 2205 fixture had it): either way no exit code of the job.
    cancelled = ids["cancelled"]
    assert f"\n{cancelled}|CANCELLED by 1000|0:0\n" in captured("sacct_allocations.txt", version)
    assert f"\n{cancelled}.batch|CANCELLED|0:15\n" in captured("sacct_steps.txt", version)


@pytest.mark.parametrize(
    ("printed", "expected"),
    [
        (  # a throttled array: one task running, the others as one range; a heterogeneous job pending
            "sacct_forms_active.txt",
            {
                "throttled": (JobState.RUNNING, None),
                "held_array": (JobState.PENDING, None),
                "hetjob": (JobState.PENDING, None),
            },
        ),
        (
            "sacct_forms_cancelled.txt",
            dict.fromkeys(("throttled", "held_array", "hetjob"), (JobState.CANCELLED, None)),
        ),
    ],
)
def test_sacct_combines_array_ranges_and_heterogeneous_components(
    cluster: Cluster, printed: str, expected: dict[str, tuple[JobState, int | None]]
) -> None:
    cluster.version, cluster.sacct = "2205acct", printed
    ids = ids_of_forms()
    states = SlurmHistory().states(list(ids.values()))
    assert outcomes(states, expected, ids) == expected


def test_squeue_only_job_state_gives_states_but_no_exit_codes() -> None:
    ids = ids_of("2411")
    states = statuses(ids.values(), squeue_rows(captured("squeue_only_job_state.txt", "2411")))
    assert {role: states[ids[role]].state for role in FINISHED} == {
        role: state for role, (state, _) in FINISHED.items()
    }
    assert {states[job_id].exit_code for job_id in ids.values()} == {None, 0}  # `0:0` for every job
    assert states[ids["pending"]].state is JobState.CANCELLED


def test_a_job_in_doubt_that_squeue_forgot_is_found_in_accounting(cluster2411: Cluster) -> None:
    cluster2411.sacct = "sacct_comments.txt"
    wanted = ["milex:capture_2/plain/x", "milex:capture_2/fan/x", "milex:capture_2/held/x"]
    found = SlurmScheduler().lookup(wanted)
    assert found == {"milex:capture_2/plain/x": "2", "milex:capture_2/fan/x": "3"}
    assert [call[0] for call in cluster2411.calls] == ["squeue", "sacct"]


def test_the_controllers_boot_time_is_read_in_the_standard_format(cluster2411: Cluster) -> None:
    booted = SlurmScheduler().boot_time()
    assert booted == time.mktime((2026, 11, 25, 19, 28, 35, 0, 0, -1))  # BOOT_TIME, this host's time


# The poll on 24.05+: states alone, then every field of the jobs whose state changed.


def asked(cluster: Cluster) -> list[str]:
    """What each squeue call asked: `states` (of any jobs), or every field of `--me` or `--jobs=...`."""
    return ["states" if "--only-job-state" in call else call[-1] for call in cluster.squeue_calls()]


def test_a_state_only_view_is_what_squeue_prints() -> None:
    real = squeue_rows(captured("squeue_only_job_state.txt", "2411"))
    derived = squeue_rows(state_only(captured("squeue_finished.txt", "2411")))
    held = ids_of("2411")["pending"]  # cancelled between the two captures
    assert sorted(row for row in real if row.job_id != held) == sorted(
        row for row in derived if row.job_id != held
    )
    assert {row.state for row in real if row.job_id == held} == {JobState.CANCELLED}


@pytest.mark.parametrize(
    ("printed", "state_only_poll"),
    [
        ("slurm-wlm 24.11.5", True),
        ("slurm 24.05.0", True),
        ("slurm 25.05.1-1", True),
        ("slurm-wlm 23.11.4", False),
        ("slurm-wlm 22.05.8", False),
        ("", False),
        ("squeue: command not understood", False),
    ],
)
def test_only_job_state_is_chosen_from_24_05(printed: str, state_only_poll: bool) -> None:
    assert has_only_job_state(printed) is state_only_poll


def test_22_05_is_polled_with_every_field(cluster: Cluster) -> None:
    SlurmScheduler().states(list(IDS.values()))
    SlurmScheduler().states(list(IDS.values()))
    assert cluster.squeue_calls() and not any("--only-job-state" in call for call in cluster.squeue_calls())


def test_a_poll_asks_every_field_only_of_the_jobs_whose_state_changed(cluster2411: Cluster) -> None:
    ids = cluster2411.ids
    scheduler = SlurmScheduler()
    cluster2411.squeue = "squeue_active.txt"
    active = scheduler.states(list(ids.values()))
    # The first poll knows no job: the states, then every field of every job of the user.
    assert asked(cluster2411) == ["states", "--me"]
    cluster2411.squeue = "squeue_finished.txt"
    cluster2411.calls.clear()
    finished = scheduler.states(list(ids.values()))
    assert asked(cluster2411) == ["states", "--me"]
    assert outcomes(finished, ids=ids) == FINISHED  # exit codes from the full fields
    pending = finished[ids["pending"]]
    assert (pending.state, pending.reason) == (JobState.PENDING, "JobHeldUser")
    assert finished == SlurmScheduler().states(list(ids.values()))  # as a poll of every field says
    assert any(active[job_id].state is not finished[job_id].state for job_id in ids.values())

    cluster2411.calls.clear()  # now only the held job changes: cancelled
    held = captured("squeue_pending_cancelled.txt", "2411")
    others = [
        line
        for line in captured("squeue_finished.txt", "2411").splitlines()
        if line.split("|")[0] != ids["pending"]
    ]
    cluster2411.squeue_text = "\n".join([*others, held])
    cancelled = scheduler.states(list(ids.values()))
    assert asked(cluster2411) == ["states", f"--jobs={ids['pending']}"]
    assert cancelled == {**finished, ids["pending"]: cancelled[ids["pending"]]}
    assert cancelled[ids["pending"]].state is JobState.CANCELLED


def test_a_poll_where_nothing_changed_is_one_state_only_query(cluster2411: Cluster) -> None:
    ids = cluster2411.ids
    scheduler = SlurmScheduler()
    before = scheduler.states(list(ids.values()))
    cluster2411.calls.clear()
    after = scheduler.states(list(ids.values()))
    assert [call[-2:] for call in cluster2411.calls] == [
        ("--only-job-state", f"--jobs={','.join(ids.values())}")
    ]
    assert after == before  # reasons and exit codes kept from the last full fields
    assert after[ids["exit3"]].reason == "NonZeroExitCode"


def test_a_refused_only_job_state_falls_back_to_every_field_for_good(cluster2411: Cluster) -> None:
    cluster2411.refuses_state_only = True  # a squeue that says 24.11 but does not know the option
    ids = cluster2411.ids
    scheduler = SlurmScheduler()
    assert outcomes(scheduler.states(list(ids.values())), ids=ids) == FINISHED
    assert outcomes(scheduler.states(list(ids.values())), ids=ids) == FINISHED
    tried = ["--only-job-state" in call for call in cluster2411.squeue_calls()]
    assert tried == [True, False, False]
    assert [call for call in cluster2411.calls if "--version" in call] == [("squeue", "--version")]  # once


def test_changed_jobs_are_asked_alone_or_with_every_job_of_the_user() -> None:
    # A list of ids has slurmctld pack every job it holds, anyone's: --me packs only the user's.
    assert changed_query(["7"])[-1] == "--jobs=7"
    assert changed_query(["7", "8"])[-1] == "--me"


def test_many_jobs_ask_the_state_of_every_job_and_every_field_of_the_users() -> None:
    few, many = [str(n) for n in range(10)], [str(n) for n in range(MAX_LISTED_JOBS + 1)]
    assert state_query(few)[-2:] == ["--only-job-state", f"--jobs={','.join(few)}"]
    # --me would filter out every job: the state reply names no user (seen on 24.11).
    assert state_query(many)[-1] == "--only-job-state" and "--me" not in state_query(many)
    assert full_query(many)[-1] == "--me"
