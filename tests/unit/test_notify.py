"""A run's `notify` command on the agent's side: kept with the run, started once when every job of the
run has ended (also across an agent restart), never waited for, its failures logged and harmless."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import msgspec
import pytest

from milex_agent import run_ends
from milex_agent.journal import Journal
from milex_agent.notifier import Notifier
from milex_agent.usage_gathering import USAGE_WAIT, UsageGathering
from milex_common.model import JobState, MachineSettings
from milex_common.protocol import Submitted
from milex_common.usage import TaskUsage, Usage
from tests.unit.agent_fakes import (
    FakeScheduler,
    chain_bundle,
    make_agent,
    submit_request,
    submitted,
    wait_until,
)
from tests.unit.served import Served

RUN_ID = "20240101000000-0badcafe"
COMPLETED, FAILED, RUNNING = JobState.COMPLETED, JobState.FAILED, JobState.RUNNING


def settings(tmp_path: Path, notify: str) -> MachineSettings:
    path = tmp_path / "milex"
    path.mkdir(exist_ok=True)
    return MachineSettings(name="cluster", path=str(path), notify=notify)


def run_request(tmp_path: Path, notify: str, *jobs: str, name: str = "exp") -> object:
    bundle = chain_bundle(name, *jobs)
    keys = {job: f"{bundle.stem}/{job}/{RUN_ID}" for job in bundle.jobs}
    return submit_request(bundle, settings(tmp_path, notify), keys)


USED = Usage(tasks=[TaskUsage(elapsed=4.0, cpu_time=3.0, max_rss=200 * 2**20, cpus=1)])


def end_jobs(
    fake: FakeScheduler,
    agent: object,
    outcomes: dict[str, tuple[JobState, int | None]],
    *,
    usage: bool = True,
) -> None:
    """Give the fake's jobs (by name in the bundle) these ends (each having used USED), let the agent
    poll them, and (`usage`) gather their usage as its loop does after a poll."""
    ids = {call.job: call.job_id for call in fake.calls if call.job_id}
    for job, (state, exit_code) in outcomes.items():
        fake.set_state(ids[job], state, exit_code)
        fake.used[ids[job]] = USED
    agent.poller.poll()  # type: ignore[attr-defined]
    if usage:
        gathering = UsageGathering(agent.journal, lambda kind, path: fake)  # type: ignore[attr-defined]
        plan = gathering.plan()
        gathering.apply(plan, gathering.query(plan))


@pytest.fixture
def journal(tmp_path: Path):
    journal = Journal(tmp_path / "journal.sqlite")
    yield journal
    journal.close()


def test_a_run_ends_once_every_job_has_ended_and_its_summary_names_each(tmp_path, journal):
    fake = FakeScheduler()
    agent = make_agent(journal, fake)
    submitted(agent, run_request(tmp_path, "cat", "ok", "fails", "never"))
    assert list(run_ends.ended(journal)) == []
    end_jobs(fake, agent, {"ok": (COMPLETED, 0)})
    assert list(run_ends.ended(journal)) == []  # "fails" runs, "never" waits for it
    end_jobs(fake, agent, {"fails": (FAILED, 3), "never": (JobState.CANCELLED, None)})

    [ended] = run_ends.ended(journal)

    summary = ended.summary
    assert (ended.run, ended.command, summary.bundle, summary.run_id, summary.machine) == (
        f"exp_{chain_bundle().created}/{RUN_ID}",
        "cat",
        f"exp_{chain_bundle().created}",
        RUN_ID,
        "cluster",
    )
    assert [(job.name, job.state, job.exit_code) for job in summary.jobs] == [
        ("ok", COMPLETED, 0), ("fails", FAILED, 3), ("never", JobState.CANCELLED, None)
    ]  # fmt: skip
    assert all(job.job_id and job.key.endswith(f"/{RUN_ID}") for job in summary.jobs)
    assert [job.usage for job in summary.jobs] == [USED, USED, USED]
    assert summary.counts == {"CANCELLED": 1, "COMPLETED": 1, "FAILED": 1}
    assert summary.summary == (
        f"bundle exp_{chain_bundle().created} done: 1 completed, 1 failed, 1 cancelled "
        "(job fails exit 3, job never cancelled)"
    )


def test_a_run_without_notify_is_not_kept_and_a_retried_request_is_kept_once(tmp_path, journal):
    agent = make_agent(journal, FakeScheduler())
    submitted(agent, run_request(tmp_path, "", "a", name="quiet"))
    request = run_request(tmp_path, "cat", "a", name="told")
    submitted(agent, request)
    submitted(agent, request)
    assert [row[0] for row in journal.db.execute("SELECT bundle FROM run_notices")] == [
        f"told_{chain_bundle().created}"
    ]


def test_a_run_refused_whole_ends_at_once_its_jobs_never_submitted(tmp_path, journal):
    fake = FakeScheduler(refuse={"a": "sbatch: error: Invalid account"})
    agent = make_agent(journal, fake)
    reply = submitted(agent, run_request(tmp_path, "cat", "a", "b"))
    assert reply.error

    [ended] = run_ends.ended(journal)

    assert [(job.name, job.state, job.reason) for job in ended.summary.jobs] == [
        ("a", JobState.CANCELLED, run_ends.NEVER_SUBMITTED),
        ("b", JobState.CANCELLED, run_ends.NEVER_SUBMITTED),
    ]


def test_the_run_id_is_read_from_keys_of_the_clients_form_only(tmp_path):
    request = run_request(tmp_path, "cat", "a", "b")
    assert run_ends.run_id_of(request) == RUN_ID
    bundle = chain_bundle("exp", "a", "b")
    assert run_ends.run_id_of(submit_request(bundle, settings(tmp_path, "cat"))) == ""


def command_writing_to(path: Path) -> str:
    return f'cat > {path} && echo "$MILEX_BUNDLE|$MILEX_RUN_ID|$MILEX_MACHINE|$MILEX_SUMMARY" > {path}.env'


def test_the_command_gets_the_summary_on_stdin_once_and_never_again_after_a_restart(tmp_path):
    journal_path = tmp_path / "journal.sqlite"
    told = tmp_path / "told.json"
    journal = Journal(journal_path)
    fake = FakeScheduler()
    agent = make_agent(journal, fake)
    submitted(agent, run_request(tmp_path, command_writing_to(told), "ok", "fails"))
    notifier = Notifier(journal)
    notifier.step()
    assert notifier.running == [] and journal.has_work()
    end_jobs(fake, agent, {"ok": (COMPLETED, 0), "fails": (FAILED, 3)})
    assert journal.has_work()  # every job has ended, but the notification is not sent yet

    notifier.step()

    wait_until(lambda: (notifier.reap(), not notifier.running)[1], deadline=10)
    summary = json.loads(told.read_text())
    assert summary["summary"] == (
        f"bundle exp_{chain_bundle().created} done: 1 completed, 1 failed (job fails exit 3)"
    )
    assert [(job["name"], job["state"], job.get("exit_code")) for job in summary["jobs"]] == [
        ("ok", "COMPLETED", 0), ("fails", "FAILED", 3)
    ]  # fmt: skip
    assert Path(f"{told}.env").read_text().strip() == (
        f"exp_{chain_bundle().created}|{RUN_ID}|cluster|{summary['summary']}"
    )
    assert not journal.has_work()
    told.unlink()
    journal.close()

    restarted = Journal(journal_path)  # a new agent on the same journal
    again = Notifier(restarted, recheck=0)
    again.step()
    again.step()
    assert again.running == [] and not told.exists()
    restarted.close()


def test_a_run_that_ended_while_no_agent_ran_is_told_by_the_next_one(tmp_path):
    journal_path = tmp_path / "journal.sqlite"
    told = tmp_path / "told.json"
    journal = Journal(journal_path)
    fake = FakeScheduler()
    agent = make_agent(journal, fake)
    submitted(agent, run_request(tmp_path, command_writing_to(told), "ok"))
    end_jobs(fake, agent, {"ok": (COMPLETED, 0)})  # the agent dies before its notifier's turn
    journal.close()

    restarted = Journal(journal_path)
    notifier = Notifier(restarted)
    notifier.step()

    wait_until(lambda: (notifier.reap(), not notifier.running)[1], deadline=10)
    assert json.loads(told.read_text())["counts"] == {"COMPLETED": 1}
    restarted.close()


@pytest.mark.parametrize(
    ("command", "said"),
    [
        ("echo 'no such list' >&2; exit 3", "exited 3; its output: no such list"),
        (
            "milex-no-such-notifier",
            "exited 127; its output: bash: line 1: milex-no-such-notifier: command not found",
        ),
    ],
)
def test_a_failing_command_is_logged_with_its_stderr_and_changes_nothing_else(
    tmp_path, journal, caplog, command, said
):
    fake = FakeScheduler()
    agent = make_agent(journal, fake)
    submitted(agent, run_request(tmp_path, command, "ok"))
    end_jobs(fake, agent, {"ok": (COMPLETED, 0)})
    notifier = Notifier(journal)
    caplog.set_level(logging.INFO, logger="milex_agent")

    notifier.step()
    wait_until(lambda: (notifier.reap(), not notifier.running)[1], deadline=10)

    [warning] = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert said in warning and f"exp_{chain_bundle().created}/{RUN_ID}" in warning
    [job] = journal.jobs()
    assert (job.state, job.exit_code) == (COMPLETED, 0)
    assert not journal.has_work()  # not tried again: at most once


def test_a_hanging_command_is_never_waited_for_and_is_killed_past_its_timeout(tmp_path, journal, caplog):
    fake = FakeScheduler()
    agent = make_agent(journal, fake)
    submitted(agent, run_request(tmp_path, "echo started; sleep 60 & wait", "ok"))
    end_jobs(fake, agent, {"ok": (COMPLETED, 0)})
    notifier = Notifier(journal, timeout=0.5)
    caplog.set_level(logging.INFO, logger="milex_agent")

    began = time.monotonic()
    notifier.step()
    assert time.monotonic() - began < 0.5 and len(notifier.running) == 1
    [started] = notifier.running
    wait_until(lambda: (notifier.reap(), not notifier.running)[1], deadline=10)

    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings == [
        f"notify command of exp_{chain_bundle().created}/{RUN_ID} ran past its 0.5 s and was killed; "
        "its output: started"
    ]
    wait_until(lambda: group_gone(started.process.pid), deadline=5)  # its children too


def group_gone(pgid: int) -> bool:
    """Whether no process of the group is left (a killed child is reaped by init, soon after)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_defect_in_the_notifier_is_logged_and_the_loop_goes_on(tmp_path, journal, caplog, monkeypatch):
    def broken(_: object) -> object:
        raise RuntimeError("a defect")

    monkeypatch.setattr(run_ends, "ended", broken)
    notifier = Notifier(journal)
    notifier.step()
    assert "notifying the end of runs failed" in caplog.text


def test_the_agent_loop_tells_a_run_that_ends_while_no_client_watches(running: Served, tmp_path):
    told = tmp_path / "told.json"
    running.settings = msgspec.structs.replace(running.settings, notify=command_writing_to(told))
    bundle = chain_bundle("loop", "ok", "fails")
    keys = {job: f"{bundle.stem}/{job}/{RUN_ID}" for job in bundle.jobs}
    with running.connect() as connection:
        reply = connection.request(submit_request(bundle, running.settings, keys), expect=Submitted)
    assert isinstance(reply, Submitted) and not reply.error
    ids = {job.name: job.job_id for job in reply.jobs}
    running.fake.used.update({ids["ok"]: USED, ids["fails"]: USED})
    running.fake.set_state(ids["ok"], COMPLETED, 0)
    running.fake.set_state(ids["fails"], FAILED, 2)

    wait_until(told.exists, deadline=10)
    wait_until(lambda: Path(f"{told}.env").exists(), deadline=10)

    summary = json.loads(told.read_text())
    assert summary["summary"] == f"bundle {bundle.stem} done: 1 completed, 1 failed (job fails exit 2)"
    assert [job["usage"]["tasks"][0]["max_rss"] for job in summary["jobs"]] == [200 * 2**20] * 2
    wait_until(lambda: not running.server.notifier.running, deadline=10)


def test_a_run_is_told_once_its_usage_is_recorded_or_past_the_wait_for_it(tmp_path, journal):
    fake = FakeScheduler()
    agent = make_agent(journal, fake)
    submitted(agent, run_request(tmp_path, "cat", "ok"))
    end_jobs(fake, agent, {"ok": (COMPLETED, 0)}, usage=False)
    assert list(run_ends.ended(journal)) == []  # accounting lags the end: its usage is still to come

    journal.db.execute("UPDATE jobs SET updated_at = updated_at - ?", (USAGE_WAIT + 120,))
    [told] = run_ends.ended(journal)  # ended long ago (no agent ran to ask): told without usage
    assert [job.usage for job in told.summary.jobs] == [None]
