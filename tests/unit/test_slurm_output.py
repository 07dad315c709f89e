"""The one decoding of SLURM's exit codes and rows, and the one combination of an array's tasks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from milex_agent.scheduler.slurm.output import (
    TaskRow,
    combine,
    exit_code_from_pair,
    ids_by_comment,
    iter_squeue_rows,
    jobcomp_line,
    sacct_rows,
    squeue_exit_code,
    squeue_rows,
)
from milex_common.model import JobState

CAPTURES = Path(__file__).parent / "slurm_captured"
CAPTURED = CAPTURES / "2205"
C, F, CA, R, PD = JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.RUNNING, JobState.PENDING


@pytest.mark.parametrize(
    ("printed", "code"),
    [
        ("0:0", 0),
        ("3:0", 3),
        ("0:9", 137),
        ("0:15", 143),
        ("255:0", 255),
        ("", None),
        ("x:0", None),
        ("1:", None),
    ],
)
def test_code_signal_pairs(printed: str, code: int | None) -> None:
    assert exit_code_from_pair(printed) == code


@pytest.mark.parametrize(
    ("printed", "code"),
    [
        *[("0", 0), ("768", 3), ("1280", 5), ("9", 137), ("15", 143), ("", None), ("4294967294", None)],
        *[("3:0", 3), ("0:9", 137), ("0:15", 143)],  # as 24.11 prints them
    ],
)
def test_squeue_wait_statuses(printed: str, code: int | None) -> None:
    assert squeue_exit_code(printed) == code


def test_squeue_and_scontrol_print_the_same_exit_codes_two_ways() -> None:
    """Every captured job: squeue's wait status and scontrol's `code:signal` decode alike."""
    from_squeue = {
        row.task or row.job_id: row.exit_code
        for row in squeue_rows((CAPTURED / "squeue_finished.txt").read_text())
    }
    shown = (CAPTURED / "scontrol_show_job.txt").read_text()
    from_scontrol = {
        job_id: exit_code_from_pair(code)
        for job_id, code in re.findall(r"^JobId=(\d+) .*?ExitCode=(\S+)", shown, re.MULTILINE | re.DOTALL)
    }
    assert from_squeue == from_scontrol
    assert set(from_squeue.values()) == {0, 3, 5, 137, 143}


def test_squeue_rows_name_the_array_they_belong_to() -> None:
    rows = squeue_rows(
        "190|189|COMPLETED|None|0|\n\n189|189|RUNNING|None|0|\n200+1|201|FAILED|NonZeroExitCode|512|\n"
    )
    assert rows == [
        TaskRow("189", "190", C, "", 0),
        TaskRow("189", "", R, "", 0),
        TaskRow("200", "+1", F, "NonZeroExitCode", 2),
    ]


def test_sacct_rows_keep_allocations_and_drop_steps() -> None:
    forms = sacct_rows((CAPTURES / "2205acct" / "sacct_forms_active.txt").read_text())
    assert [(row.job_id, row.task, row.state) for row in forms] == [
        ("55", "_0", R),
        ("55", "_[1-3%1]", PD),  # a throttled array's tasks not started: one row, `%` and all
        ("58", "+0", PD),
        ("58", "+1", PD),
        ("56", "_[0-3]", PD),
    ]
    steps = sacct_rows((CAPTURES / "2205acct" / "sacct_steps.txt").read_text())
    assert [row.job_id + row.task for row in steps][-5:] == ["50_0", "50_1", "50_2", "50_3", "48"]
    assert not any("." in row.task for row in steps)


def test_jobcomp_lines_name_array_tasks_and_heterogeneous_components() -> None:
    lines = (CAPTURED / "jobcomp.log").read_text().splitlines()
    task = next(line for line in lines if "ArrayTaskId=2 " in line)
    assert jobcomp_line(task) == ("0", TaskRow("189", "2", F, "", 137, array_task="2"), "2026-11-25T17:30:21")
    het = (  # the format of SLURM 22.05's jobcomp_filetxt.c for a heterogeneous job's component
        "JobId=201 UserId=u(7) JobState=FAILED EligibleTime=x HetJobId=200 HetJobOffset=1 "
        "DerivedExitCode=0:0 ExitCode=2:0 "
    )
    assert jobcomp_line(het) == ("7", TaskRow("200", "+1", F, "", 2), "")


def row(state: JobState, code: int | None = None, reason: str = "", task: str = "") -> TaskRow:
    return TaskRow("7", task, state, reason, code)


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([C, F, R, PD], (R, None)),  # an active task first
        ([C, PD, CA], (PD, None)),
        ([C, JobState.UNKNOWN], (JobState.UNKNOWN, None)),  # a task not understood: not over
        ([C, C], (C, 0)),
        ([C, CA, F], (F, 4)),  # the job's own failure before SLURM's cancel
        ([C, JobState.TIMEOUT], (JobState.TIMEOUT, None)),
        ([CA, JobState.OUT_OF_MEMORY, F], (JobState.OUT_OF_MEMORY, None)),
    ],
)
def test_tasks_combine_into_one_status(states: list[JobState], expected: tuple[JobState, int | None]) -> None:
    codes = {C: 0, F: 4}
    status = combine(
        "7", [row(state, codes.get(state, 0), task=str(index)) for index, state in enumerate(states)]
    )
    assert (status.state, status.exit_code) == expected


def test_the_exit_code_is_the_worst_failed_tasks() -> None:
    status = combine("7", [row(F, 5, "NonZeroExitCode"), row(F, 137, "JobLaunchFailure"), row(CA, 143)])
    assert (status.state, status.exit_code, status.reason) == (F, 137, "NonZeroExitCode")


def test_slurm_ending_a_job_is_no_exit_code_of_the_job() -> None:
    assert combine("7", [row(CA, 143)]).exit_code is None
    assert combine("7", [row(JobState.TIMEOUT, 143)]).exit_code is None
    assert combine("7", [row(F, 0)]).exit_code is None  # failed, but no code printed: unknown


def test_no_rows_is_unknown() -> None:
    assert combine("7", []).state is JobState.UNKNOWN


@pytest.mark.parametrize("state", list(JobState))
def test_every_state_is_ranked(state: JobState) -> None:
    assert combine("7", [row(state), row(state, task="1")]).state is state


def test_ids_by_comment_reads_squeue_and_sacct_lines_alike() -> None:
    squeue = "1001|milex:a/x/1|\n1002_3|milex:arr/x/1|\n1002_4|milex:arr/x/1|\n1003|other|\n"
    sacct = "2001|milex:b/x/1\n2002_[0-9]|milex:c/x/1\n"
    wanted = {"milex:a/x/1", "milex:arr/x/1", "milex:b/x/1", "milex:c/x/1", "milex:gone/x/1"}
    assert ids_by_comment(squeue, wanted) == {"milex:a/x/1": "1001", "milex:arr/x/1": "1002"}
    assert ids_by_comment(sacct, wanted) == {"milex:b/x/1": "2001", "milex:c/x/1": "2002"}


@pytest.mark.parametrize("state", list(JobState))
@pytest.mark.parametrize(("code", "reason"), [(None, ""), (0, "None?"), (3, "NonZeroExitCode"), (137, "")])
def test_a_plain_jobs_one_row_combines_as_several_rows_of_it_would(
    state: JobState, code: int | None, reason: str
) -> None:
    one = TaskRow("7", "", state, reason, code)
    assert combine("7", [one]) == combine("7", [one, one])  # the shortcut for one row, and the rule


def test_squeue_rows_one_at_a_time_are_the_rows() -> None:
    text = "190|189|RUNNING|None|0|1|\n\n189|189|PENDING|JobHeldUser|0|2-5%2|\n"
    assert list(iter_squeue_rows(text)) == squeue_rows(text)
