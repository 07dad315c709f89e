"""How a run's end is said: the one line (agent and laptop alike), and the laptop's desktop
notification or bell after `milex-run --wait` and `milex status --watch`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from milex.cli import ended
from milex.records import Submission, SubmittedJobRecord
from milex_common.model import JobState, JobStatus
from milex_common.run_summary import JobOutcome, one_line, summarize

COMPLETED, FAILED = JobState.COMPLETED, JobState.FAILED


def outcome(name: str, state: JobState, exit_code: int | None = None) -> JobOutcome:
    return JobOutcome(name=name, state=state, exit_code=exit_code)


def test_the_line_counts_each_end_completed_first_and_names_the_jobs_that_did_not_complete():
    jobs = [outcome("x", FAILED, 3), *(outcome(f"ok{i}", COMPLETED, 0) for i in range(7)),
            outcome("slow", JobState.TIMEOUT), outcome("oom", JobState.OUT_OF_MEMORY, 137)]  # fmt: skip
    assert one_line("b_20240101000000", jobs) == (
        "bundle b_20240101000000 done: 7 completed, 1 failed, 1 timeout, 1 out of memory "
        "(job x exit 3, job slow timeout, job oom out of memory exit 137)"
    )


def test_the_line_names_three_jobs_and_counts_the_rest():
    jobs = [outcome(f"j{i}", FAILED, i) for i in range(1, 6)]
    assert (
        one_line("b", jobs) == "bundle b done: 5 failed (job j1 exit 1, job j2 exit 2, job j3 exit 3, 2 more)"
    )
    assert one_line("b", [outcome("a", COMPLETED, 0)]) == "bundle b done: 1 completed"
    assert one_line("b", []) == "bundle b done: no job"


def test_the_summary_counts_by_state():
    summary = summarize("b", "r", "m", [outcome("a", COMPLETED, 0), outcome("c", FAILED, 1)])
    assert (summary.counts, summary.summary) == (
        {"COMPLETED": 1, "FAILED": 1},
        "bundle b done: 1 completed, 1 failed (job c exit 1)",
    )


def test_a_waited_runs_line_takes_the_states_the_wait_saw():
    submission = Submission(bundle="b_1", machine="m", submitted_at="1", jobs={
        "a": SubmittedJobRecord(job_id="1", state=JobState.PENDING),
        "c": SubmittedJobRecord(job_id="2", state=JobState.RUNNING)})  # fmt: skip
    states = {"a": JobStatus(job_id="1", state=COMPLETED, exit_code=0),
              "c": JobStatus(job_id="2", state=FAILED, exit_code=4)}  # fmt: skip
    assert (
        ended.submission_line(submission, states) == "bundle b_1 done: 1 completed, 1 failed (job c exit 4)"
    )


@pytest.fixture
def notify_send(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `notify-send` on PATH that writes its arguments to a file (nothing shown); no display yet."""
    shown = tmp_path / "shown"
    fake = tmp_path / "bin" / "notify-send"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\nprintf "%s|" "$@" > {shown}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    return shown


def test_a_desktop_notification_where_there_is_a_display_and_no_bell(notify_send, monkeypatch, capsys):
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    ended.announce(["bundle b done: 1 completed"])
    assert capsys.readouterr().out == "bundle b done: 1 completed\n"
    assert notify_send.read_text() == "Milex|bundle b done: 1 completed|"


def test_the_bell_on_a_terminal_without_a_display(notify_send, monkeypatch, capsys):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    ended.announce(["bundle b done: 1 completed"])
    assert capsys.readouterr().out == "bundle b done: 1 completed\n\a"
    assert not notify_send.exists()


def test_neither_bell_nor_notification_in_a_pipe_nor_without_alert(notify_send, monkeypatch, capsys):
    ended.announce(["bundle b done: 1 completed"])
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    ended.announce(["bundle c done: 1 completed"], alert=False)
    assert capsys.readouterr().out == "bundle b done: 1 completed\nbundle c done: 1 completed\n"


def test_a_notifier_that_fails_or_is_missing_is_no_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert ended.desktop_notification("x") is False
    (tmp_path / "notify-send").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "notify-send").chmod(0o755)
    assert ended.desktop_notification("x") is False
