"""End to end on the real cluster: a log followed through a long quiet, and agents that leave when
they have no reason to run (idle, or their directory gone) and come back on the next command."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from milex_agent.daemon import read_info, running
from milex_common.agent_layout import AgentInfo, agent_dir
from tests.e2e.conftest import BIN, MilexHome, wait_until


def job_of(milex_home: MilexHome, bundle: str) -> dict:
    [job] = json.loads(milex_home.milex("milex", "status", bundle, "--json").stdout)
    return job


def running_agent(milex_home: MilexHome) -> AgentInfo:
    info = read_info(agent_dir(milex_home.root / "milex"))
    assert info is not None, "no agent runs"
    return info


def in_squeue(job_id: str) -> bool:
    out = subprocess.run(["squeue", "--noheader", f"--jobs={job_id}", "--Format=State"],
                         capture_output=True, text=True, check=False).stdout  # fmt: skip
    return bool(out.strip())


# ---- milex logs -f --------------------------------------------------------------------------------


def test_logs_follow_prints_both_lines_of_a_job_quiet_for_40_s_and_exits_when_it_ends(
    milex_home: MilexHome,
) -> None:
    # 40 s of silence: longer than the client's 30 s default timeout, which used to end the follow.
    milex_home.milex("milex-schedule", "milex-example", "--name", "quiet", "--sleep", "40",
                     "--then", "the second line", "--run-now")  # fmt: skip
    job = job_of(milex_home, "quiet")

    followed = milex_home.milex("milex", "logs", job["job_id"], "--follow")

    first, second = followed.stdout.splitlines()
    assert json.loads(first)["job_id"] == job["job_id"]
    assert second == "the second line"
    assert job_of(milex_home, "quiet")["state"] == "COMPLETED"


def test_logs_follow_resumes_from_its_offset_when_the_agent_is_killed(milex_home: MilexHome) -> None:
    milex_home.milex("milex-schedule", "milex-example", "--name", "resumed", "--sleep", "25",
                     "--then", "after the restart", "--run-now")  # fmt: skip
    job = job_of(milex_home, "resumed")
    follower = subprocess.Popen(
        [str(BIN / "milex"), "logs", job["job_id"], "-f"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=milex_home.env,
        cwd=milex_home.root,
    )
    try:
        assert follower.stdout is not None
        first = follower.stdout.readline()  # the job's first line has reached the client
        assert json.loads(first)["job_id"] == job["job_id"]
        killed = running_agent(milex_home)
        os.kill(killed.pid, signal.SIGKILL)

        rest, errors = follower.communicate(timeout=120)
    finally:
        follower.kill()
    assert follower.returncode == 0, errors
    assert rest == "after the restart\n"  # from the offset reached: nothing again, nothing missed
    assert running_agent(milex_home).pid != killed.pid


# ---- agents that leave ----------------------------------------------------------------------------


def test_an_idle_agent_exits_after_its_jobs_end_and_the_next_status_starts_one(
    milex_home: MilexHome,
) -> None:
    milex_home.env["MILEX_AGENT_IDLE_EXIT"] = "3"
    milex_home.milex("milex-schedule", "milex-example", "--name", "idle", "--sleep", "6", "--run-now")
    job = job_of(milex_home, "idle")
    first = running_agent(milex_home)

    while in_squeue(job["job_id"]):  # no client is connected, but a job runs: the agent stays
        assert running(first.pid), "the agent left while its job ran"
        time.sleep(0.2)
    wait_until(lambda: not running(first.pid), timeout=60, what="the idle agent to exit")

    directory = agent_dir(milex_home.root / "milex")
    assert read_info(directory) is None
    assert not (directory / "agent.json").exists() and not Path(first.socket).exists()
    assert "stopping: idle for" in (directory / "agent.log").read_text()
    after = job_of(milex_home, "idle")  # a new agent, from the same journal
    assert (after["state"], after["exit_code"]) == ("COMPLETED", 0)
    assert running_agent(milex_home).pid != first.pid


def test_an_agent_whose_directory_is_removed_exits(milex_home: MilexHome) -> None:
    milex_home.milex("milex", "status")
    info = running_agent(milex_home)

    shutil.rmtree(agent_dir(milex_home.root / "milex"))

    wait_until(lambda: not running(info.pid), timeout=30, what="the agent without a directory to exit")
    milex_home.milex("milex", "status")  # the next command starts a new agent in a new directory
    assert running_agent(milex_home).pid != info.pid


def test_an_agent_whose_journal_is_replaced_exits(milex_home: MilexHome) -> None:
    milex_home.milex("milex", "status")
    info = running_agent(milex_home)
    journal = agent_dir(milex_home.root / "milex") / "journal.sqlite"

    shutil.copy(journal, journal.with_name("copy.sqlite"))
    journal.with_name("copy.sqlite").replace(journal)

    wait_until(lambda: not running(info.pid), timeout=30, what="the agent whose journal was replaced to exit")
    assert "journal.sqlite was replaced" in (journal.parent / "agent.log").read_text()
