"""The laptop sleeps: the link to a namespaced login node is cut silently for two minutes (the host's
end of its veth set down: no FIN, no RST, what a closed lid or a change of network does), then comes
back. Commands fail fast meanwhile, saying so; afterwards everything resumes by itself."""

from __future__ import annotations

import json
import select
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from milex.cli.status_view import OFFLINE
from tests.e2e.clusters import LoginNode
from tests.e2e.conftest import REMOTE, MilexHome
from tests.e2e.test_remote import BundleWatch, status

pytestmark = pytest.mark.timeout(600)

CUT = 120.0  # the two minutes: a lid closed over lunch, a train through a tunnel
FAST = 12.0  # the longest a command may take to say the link is down (4 s probe + 5 s reconnection)
PACE = 4.0  # between two rounds of commands while cut: a user trying now and then, not a busy loop
DOWN = f"the link to {REMOTE} is down"
ADVICE = f"`milex tunnel status --machine {REMOTE}`"


@pytest.fixture
def lid(login_node: LoginNode) -> Iterator[LoginNode]:
    """The login node, whose link the test may cut: up again after the test, whatever happened."""
    login_node.set_link(up=True)
    try:
        yield login_node
    finally:
        login_node.set_link(up=True)


@dataclass
class Attempt:
    argv: tuple[str, ...]
    seconds: float
    code: int
    stdout: str
    stderr: str


def attempt(laptop: MilexHome, *argv: str) -> Attempt:
    started = time.monotonic()
    done = laptop.milex(*argv, check=False)
    return Attempt(argv, time.monotonic() - started, done.returncode, done.stdout, done.stderr)


def journal_events(node: LoginNode) -> list[tuple[int, str, str]]:
    """(seq, key, state) of every event in the agent's journal, read on the login node (read-only)."""
    script = (
        "import glob, json, os, sqlite3; "
        "[path] = glob.glob(os.path.expanduser('~/milex/agent/*/journal.sqlite')); "
        "db = sqlite3.connect(f'file:{path}?mode=ro', uri=True); "
        "print(json.dumps(db.execute('SELECT seq, key, state FROM events ORDER BY seq').fetchall()))"
    )
    return [tuple(row) for row in json.loads(node.sh(f"python3 -c {shlex.quote(script)}"))]


def commands_while_cut(laptop: MilexHome, node: LoginNode, agent_pid: int, until: float) -> list[Attempt]:
    """`milex status` and `milex-run` in turn until `until`, checking between them that the agent
    lives on, untouched by the cut."""
    attempts: list[Attempt] = []
    while time.monotonic() < until:
        attempts.append(attempt(laptop, "milex", "status", "lid", "--machine", REMOTE))
        attempts.append(attempt(laptop, "milex-run", "asleep", "--machine", REMOTE))
        info = node.agent_info()
        assert info is not None and info["pid"] == agent_pid, info
        time.sleep(PACE)
    return attempts


def printed_until(process: subprocess.Popen[str], text: str, timeout: float = 60) -> str:
    """What `process` printed on its stdout (a pipe) up to the line with `text`."""
    assert process.stdout is not None
    printed = ""
    deadline = time.monotonic() + timeout
    while text not in printed:
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        line = process.stdout.readline() if ready else ""
        if not line:
            stderr = "" if process.poll() is None else process.communicate()[1]
            pytest.fail(f"{text!r} not printed within {timeout:.0f} s: {printed!r} {stderr}", pytrace=False)
        printed += line
    return printed


@pytest.mark.parametrize("login_node", ["cluster1"], indirect=True)
def test_a_laptop_asleep_for_two_minutes_fails_fast_then_finds_everything_on_waking(
    laptop: MilexHome, lid: LoginNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = lid
    for key, value in laptop.env.items():  # the watch of this process reads the laptop's configuration
        monkeypatch.setenv(key, value)
    laptop.milex("milex-schedule", "milex-example", "--name", "lid", "--job_name", "first", "--sleep", "30")
    laptop.milex("milex-schedule", "milex-example", "--name", "lid", "--append", "--job_name", "second",
                 "--dependencies", "first", "--sleep", "140")  # fmt: skip
    laptop.milex("milex-schedule", "milex-example", "--name", "asleep")  # run while the lid is closed
    laptop.milex("milex-run", "lid", "--machine", REMOTE)
    agent = node.agent_info()
    assert agent is not None
    second = status(laptop, "lid")["second"]["job_id"]
    watch = BundleWatch("", ends=3)  # every event of the agent, until lid's two jobs and asleep's end
    with laptop.background("milex", "status", "lid", "--machine", REMOTE, "--watch") as cli_watch:
        before = printed_until(cli_watch, "(watching; Ctrl-C to stop)")  # it follows the agent: cut now
        watch.reached("RUNNING")
        try:
            node.set_link(up=False)
            cut = time.monotonic()
            attempts = commands_while_cut(laptop, node, agent["pid"], until=cut + CUT)
            # Meanwhile the jobs went on: the first ended, the second started (events no watch saw yet).
            assert node.slurm_state(second) == "RUNNING", node.slurm_state(second)
            tunnel = attempt(laptop, "milex", "tunnel", "status", "--machine", REMOTE)
        finally:
            node.set_link(up=True)

        woken = time.monotonic()
        assert status(laptop, "lid")["second"]["state"] == "RUNNING"  # the next command reconnects itself
        reconnected = time.monotonic() - woken
        laptop.milex("milex-run", "asleep", "--machine", REMOTE)
        states = watch.finish(timeout=CUT)
        cli_watch.wait(timeout=60)
        watched = cli_watch.communicate()

    report = [(a.argv[0], a.argv[1], round(a.seconds, 1), a.code) for a in attempts]
    print(f"while cut: {report}; the first command after: {reconnected:.1f} s")
    assert len(attempts) >= 8 and all(a.seconds < FAST for a in attempts), report
    for each in attempts:
        said = each.stderr
        assert DOWN in said and ADVICE in said, (each.argv, said)
        if each.argv[0] == "milex":  # status shows the last known states, saying why
            assert each.code == OFFLINE and "Last known states" in said, said
        else:
            assert each.code == 1, said
    assert "link down since" in tunnel.stdout and tunnel.seconds < FAST, tunnel
    assert reconnected < 30, reconnected
    # The watch started before the cut saw every event once, in order (BundleWatch checks the numbers
    # are contiguous); they are the journal's, which the agent (the same process) kept whole.
    assert [(e.seq, e.key, e.state.value) for e in watch.seen] == journal_events(node)
    by_job: dict[str, list[str]] = {}
    for event in watch.seen:
        by_job.setdefault(event.name, []).append(event.state.value)
    assert set(by_job) == {"first", "second", "milex-example"}, by_job
    assert all(seen[-1] == "COMPLETED" for seen in by_job.values()), (by_job, states)
    assert by_job["second"][-2:] == ["RUNNING", "COMPLETED"], by_job
    info = node.agent_info()
    assert info is not None and info["pid"] == agent["pid"]
    # Each job went to SLURM once, and the runs of `asleep` while cut (same bundle) submitted nothing.
    stems = {event.key.split("/")[0] for event in watch.seen}
    ours = [comment for comment in node.comments() if comment.removeprefix("milex:").split("/")[0] in stems]
    assert sorted(ours) == sorted({f"milex:{event.key}" for event in watch.seen}), ours
    assert cli_watch.returncode == 0 and (before + watched[0]).count("COMPLETED") >= 2, watched
