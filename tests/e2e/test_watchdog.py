"""The agent's watchdog on the namespaced login nodes, whose cron runs users' crontabs: an agent killed
with -9 while jobs wait in its queue, the laptop away, is started again by cron within two minutes and
submits the rest, each job once; the line is installed once, beside the user's own lines, and
`--remove` takes it out alone."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.e2e.clusters import LoginNode
from tests.e2e.conftest import REMOTE, MilexHome, wait_until
from tests.e2e.test_agent_queue import away, ended, run
from tests.e2e.test_controller_faults import independent
from tests.e2e.test_remote_faults import submitted

pytestmark = pytest.mark.timeout(600)
CAP, BUNDLE, SECONDS = 4, 12, 15  # max_submitted, jobs, and how long each runs: three rounds
MARK = "# milex-agent watchdog "
USERS_OWN = "MAILTO=''\n# the user's own line, which Milex must leave alone\n0 3 * * * true\n"


def crontab(node: LoginNode) -> str:
    return node.sh("crontab -l 2>/dev/null || true")


@pytest.fixture
def watchdog(laptop: MilexHome, login_node: LoginNode) -> Iterator[str]:
    """The watchdog installed from the laptop into a crontab that has lines of the user's; what the
    install said. The administrator empties the crontab after, whatever the test left."""
    login_node.write("own.cron", USERS_OWN)
    login_node.sh("crontab own.cron && rm own.cron")
    yield laptop.milex("milex", "agent", "watchdog", "--machine", REMOTE).stdout
    login_node.sh("crontab -r 2>/dev/null || true")


def test_a_killed_agent_is_started_again_by_cron_and_submits_its_queue_once(
    laptop: MilexHome, login_node: LoginNode, watchdog: str
) -> None:
    assert "watchdog installed in your crontab" in watchdog, watchdog
    config = json.loads(laptop.config.read_text())
    config[REMOTE]["max_submitted"] = CAP  # the rest of the bundle waits in the agent's queue
    laptop.config.write_text(json.dumps(config))
    bundle = independent("watched", BUNDLE)
    for job in bundle.jobs.values():
        job.script_args = {"sleep": SECONDS}
    out = run(laptop, bundle)
    assert f"{CAP} job(s) submitted, {BUNDLE - CAP} in the agent's queue" in out, out

    away(laptop)  # from here on, no command from the laptop
    killed = login_node.agent_info()
    assert killed is not None
    login_node.kill(killed["pid"])
    wait_until(lambda: login_node.agent_info() is None, timeout=10, what="the agent gone")
    assert len(submitted(login_node, bundle)) == CAP  # nothing more while no agent runs

    # cron's next minute: no agent runs, the journal holds work: `milex-agent start --if-work`.
    wait_until(lambda: login_node.agent_info() is not None, timeout=130, interval=2.0,
               what="cron to start the agent again")  # fmt: skip
    restarted = login_node.agent_info()
    assert restarted is not None and restarted["pid"] != killed["pid"]
    wait_until(lambda: len(ended(login_node, bundle)) == BUNDLE, timeout=240, interval=2.0,
               what=f"all {BUNDLE} jobs ended")  # fmt: skip
    states = ended(login_node, bundle)
    assert {name: runs for name, runs in states.items() if runs != ["COMPLETED"]} == {}  # each once, done
    assert sorted(submitted(login_node, bundle)) == sorted(bundle.jobs)
    assert login_node.agent_info() == restarted  # one agent all along: cron's minutes since left it be


def test_the_line_is_installed_once_beside_the_users_own_and_removed_alone(
    laptop: MilexHome, login_node: LoginNode, watchdog: str
) -> None:
    assert "watchdog installed in your crontab" in watchdog, watchdog
    again = laptop.milex("milex", "agent", "watchdog", "--machine", REMOTE).stdout
    assert "installed already" in again, again
    lines = crontab(login_node).splitlines()
    [line] = [line for line in lines if MARK in line]
    assert line.startswith("* * * * * bash -lc ") and "start --path" in line and "--if-work" in line, line
    assert line.endswith(f"{MARK}{login_node.home}/milex/agent/{login_node.cluster}"), line
    assert [line for line in lines if MARK not in line] == USERS_OWN.splitlines()
    status = laptop.milex("milex", "agent", "status", "--machine", REMOTE).stdout
    assert "watchdog: installed" in status, status

    removed = laptop.milex("milex", "agent", "watchdog", "--remove", "--machine", REMOTE).stdout
    assert "watchdog removed" in removed, removed
    assert crontab(login_node) == USERS_OWN
    status = laptop.milex("milex", "agent", "status", "--machine", REMOTE).stdout
    assert "watchdog: not installed" in status, status
    again = laptop.milex("milex", "agent", "watchdog", "--remove", "--machine", REMOTE).stdout
    assert "no watchdog was installed" in again, again
