"""A run's end told on each namespaced cluster: the machine's `notify` command, run by the agent on the
login node with the run's summary on stdin while the laptop is away; and the laptop's one line (and
desktop notification) after `milex-run --wait` and `milex status --watch`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.e2e.clusters import LoginNode
from tests.e2e.conftest import REMOTE, MilexHome, wait_until

pytestmark = pytest.mark.timeout(600)
TOLD = "notified.jsonl"  # in the login user's home: one line of JSON per notification


def schedule_pair(laptop: MilexHome, bundle: str, sleep: str) -> None:
    """A job that succeeds after `sleep` seconds, and one that fails with 3 after it."""
    laptop.milex("milex-schedule", "milex-example", "--name", bundle, "--job_name", "ok", "--sleep", sleep)
    laptop.milex("milex-schedule", "milex-example", "--name", bundle, "--append", "--job_name", "fails",
                 "--sleep", sleep, "--exit_code", "3")  # fmt: skip


def told(node: LoginNode) -> list[str]:
    """The notifications written so far, a line each."""
    return node.sh(f"cat ~/{TOLD} 2>/dev/null || true").splitlines()


def tunnel_running(laptop: MilexHome) -> bool:
    shown = laptop.milex("milex", "tunnel", "status", "--machine", REMOTE, check=False)
    return "up" in shown.stdout.split()


def test_the_notify_command_gets_the_runs_summary_once_with_the_laptop_away(
    laptop: MilexHome, login_node: LoginNode
) -> None:
    node = login_node
    node.sh(f"rm -f ~/{TOLD}")
    laptop.milex("milex", "config", "set", REMOTE, "notify", f"cat >> ~/{TOLD}")
    schedule_pair(laptop, "told", "6")

    laptop.milex("milex-run", "told", "--machine", REMOTE)
    laptop.milex("milex", "tunnel", "down", "--machine", REMOTE)  # the laptop closes
    assert not tunnel_running(laptop)

    wait_until(lambda: told(node) != [], timeout=120, what="the notify command")
    [submission] = laptop.submissions()
    ids = {name: job["job_id"] for name, job in submission["jobs"].items()}
    [line] = told(node)
    summary = json.loads(line)
    stem, run_id = submission["bundle"], submission["run_id"]
    assert (summary["bundle"], summary["run_id"], summary["machine"]) == (stem, run_id, REMOTE)
    assert summary["summary"] == f"bundle {stem} done: 1 completed, 1 failed (job fails exit 3)"
    assert summary["counts"] == {"COMPLETED": 1, "FAILED": 1}
    assert [(job["name"], job["key"], job["job_id"], job["state"], job["exit_code"])
            for job in summary["jobs"]] == [
        ("ok", f"{stem}/ok/{run_id}", ids["ok"], "COMPLETED", 0),
        ("fails", f"{stem}/fails/{run_id}", ids["fails"], "FAILED", 3),
    ]  # fmt: skip
    assert not tunnel_running(laptop)  # told with no laptop there

    # Once: the laptop's next command (an agent restarted meanwhile would not tell it again either).
    laptop.milex("milex", "agent", "stop", "--machine", REMOTE)
    laptop.milex("milex", "status", "--machine", REMOTE)
    time.sleep(3)  # the new agent's notifier checks at its first turns
    assert told(node) == [line]


def test_a_failing_notify_command_is_logged_and_the_jobs_end_as_they_would(
    laptop: MilexHome, login_node: LoginNode
) -> None:
    laptop.milex("milex", "config", "set", REMOTE, "notify", "echo 'no route to chat' >&2; exit 7")
    schedule_pair(laptop, "unheard", "0")

    result = laptop.milex(
        "milex-run", "unheard", "--machine", REMOTE, "--wait", "--timeout", "120", check=False
    )

    assert result.returncode == 1, result.stdout + result.stderr
    [submission] = laptop.submissions()
    log = "~/milex/agent/*/agent.log"
    wait_until(lambda: "no route to chat" in login_node.sh(f"cat {log}"), timeout=30, what="the agent's log")
    said = login_node.sh(f"grep 'notify command of' {log}")
    assert f"notify command of {submission['bundle']}/{submission['run_id']} exited 7" in said, said
    assert {name: (job["state"], job.get("exit_code")) for name, job in submission["jobs"].items()} == {
        "ok": ("COMPLETED", 0),
        "fails": ("FAILED", 3),
    }


def fake_desktop(laptop: MilexHome) -> Path:
    """A `notify-send` on the laptop's PATH, and a display: it writes what it was asked to show."""
    shown = laptop.root / "shown"
    fake = laptop.root / "desktop" / "notify-send"
    fake.parent.mkdir()
    # One write per notification: --wait and --watch end together, and two appends each would interleave.
    fake.write_text(f'#!/bin/sh\nshown=$(printf "%s|" "$@")\nprintf "%s\\n" "$shown" >> {shown}\n')
    fake.chmod(0o755)
    laptop.env.update(PATH=f"{fake.parent}{os.pathsep}{laptop.env['PATH']}", DISPLAY=":99")
    return shown


def test_wait_and_watch_end_with_the_runs_line_and_a_desktop_notification(
    laptop: MilexHome, login_node: LoginNode
) -> None:
    shown = fake_desktop(laptop)
    schedule_pair(laptop, "waited", "10")

    with laptop.background("milex-run", "waited", "--machine", REMOTE, "--wait", "--timeout", "120") as run:
        wait_until(lambda: bool(laptop.submissions()), timeout=60, what="the run's record")
        watched = laptop.milex("milex", "status", "waited", "--machine", REMOTE, "--watch", check=False)
        waited, errors = run.communicate(timeout=120)

    assert run.returncode == 1, waited + errors
    [submission] = laptop.submissions()
    line = f"bundle {submission['bundle']} done: 1 completed, 1 failed (job fails exit 3)"
    assert waited.splitlines()[-1] == line, waited
    assert "\a" not in waited  # not a terminal: no bell
    assert watched.stdout.splitlines()[-1] == line, watched.stdout + watched.stderr
    assert shown.read_text().splitlines() == [f"Milex|{line}|"] * 2, shown.read_text()  # --wait's, --watch's
