"""One agent per user and cluster on login nodes that share its directory: the cluster's name, the
directory of a node's former agent, and the agent moving to the node a command lands on.

The nodes are real: each agent runs in a UTS namespace of its own (`unshare --uts`, as root) whose
hostname is the node's, on the same directory, as two login nodes on one shared home."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import msgspec
import pytest

from milex_agent import daemon, handover
from milex_agent.journal import Journal
from milex_agent.lifetime import Lifetime
from milex_common import agent_layout
from milex_common.errors import MilexError
from tests.unit.agent_fakes import FakeClock
from tests.unit.test_daemon import wait_until_gone

START = """
import sys, msgspec
from pathlib import Path
from milex_agent import daemon
print(msgspec.json.encode(daemon.{action}(Path(sys.argv[1]), **{options})).decode())
"""


def on_node(node: str, action: str, directory: Path, **options: float) -> dict[str, object] | None:
    """`daemon.ACTION(directory)` run on login node `node`: its result, as JSON."""
    code = START.format(action=action, options=options)
    argv = ["unshare", "--uts", "sh", "-c", f'hostname {node} && exec "$0" -c "$1" "$2"', sys.executable,
            code, str(directory)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def shared(tmp_path: Path):
    directory = tmp_path / "milex" / "agent" / "cluster1"
    yield directory
    info = daemon.read_info(directory)
    if info is not None:
        os.kill(info.pid, signal.SIGKILL)


def test_the_cluster_is_slurms_name_for_it_else_the_nodes(tmp_path, monkeypatch):
    conf = tmp_path / "slurm.conf"
    conf.write_text("# ClusterName=commented\nSlurmctldHost=head\nClusterName=Perlmutter  # ours\n")
    monkeypatch.delenv("SLURM_CONF", raising=False)
    assert agent_layout.cluster_name((str(conf),)) == "perlmutter"  # slurmctld lowercases it too
    assert agent_layout.cluster_name((str(tmp_path / "none"),)) == agent_layout.node_name()
    monkeypatch.setenv("SLURM_CONF", str(conf))
    assert agent_layout.cluster_name((str(tmp_path / "none"),)) == "perlmutter"


def test_a_nodes_former_agent_directory_becomes_the_clusters(tmp_path):
    former = tmp_path / "agent" / agent_layout.node_name()
    former.mkdir(parents=True)
    Journal(former / "journal.sqlite").close()
    directory = agent_layout.agent_dir(tmp_path, cluster="cluster1")
    assert directory == tmp_path / "agent" / "cluster1"
    assert (directory / "journal.sqlite").exists() and not former.exists()  # its jobs stay watched
    other = tmp_path / "agent" / "elsewhere"
    assert agent_layout.agent_dir(tmp_path, cluster="elsewhere") == other and not other.exists()


def test_a_request_to_leave_names_the_agent_it_is_for(tmp_path):
    clock = FakeClock()
    request = handover.LeaveRequest(host="login1", pid=41, by="login2", at=0.0)
    (tmp_path / handover.LEAVE_FILE).write_bytes(msgspec.json.encode(request))
    mine = Lifetime(idle_exit=0, clock=clock, leave=lambda: handover.leave_reason(tmp_path, "login1", 41))
    theirs = Lifetime(idle_exit=0, clock=clock, leave=lambda: handover.leave_reason(tmp_path, "login1", 42))
    assert mine.reason_to_stop(lambda: True) is None  # asked at most every second
    clock.advance(1.0)
    reason = mine.reason_to_stop(lambda: True)
    assert reason is not None and "asked to leave by a command on login2" in reason
    assert theirs.reason_to_stop(lambda: True) is None  # a request for an agent that has left


def test_the_agent_moves_to_the_node_a_command_lands_on_with_its_journal(shared):
    first = on_node("login1", "start", shared, poll_interval=0.1, max_interval=0.5)
    assert first is not None and first["host"] == "login1"
    assert on_node("login1", "start", shared)["pid"] == first["pid"]  # the same node: the same agent
    moved = on_node("login2", "start", shared, poll_interval=0.1, max_interval=0.5)
    assert moved is not None and moved["host"] == "login2" and moved["pid"] != first["pid"]
    wait_until_gone(int(first["pid"]))  # type: ignore[call-overload]
    assert "asked to leave by a command on login2" in (shared / "agent.log").read_text()
    assert not (shared / handover.LEAVE_FILE).exists()
    stopped = on_node("login1", "stop", shared)  # stopped from the other node: asked, not signalled
    assert stopped is not None and (stopped["pid"], stopped["running"]) == (moved["pid"], False)
    wait_until_gone(int(moved["pid"]))  # type: ignore[call-overload]
    assert daemon.read_info(shared) is None


def test_an_agent_that_does_not_leave_is_named_with_what_to_do(shared):
    first = on_node("login1", "start", shared, poll_interval=0.1, max_interval=0.5)
    assert first is not None
    os.kill(int(first["pid"]), signal.SIGSTOP)  # type: ignore[call-overload]
    try:
        with pytest.raises(MilexError, match=r"the agent on login1 \(pid \d+\) did not leave .* within 1 s"):
            handover.ask_to_leave(shared, "login1", int(first["pid"]), timeout=1.0)  # type: ignore[call-overload]
    finally:
        os.kill(int(first["pid"]), signal.SIGCONT)  # type: ignore[call-overload]
    assert not (shared / handover.LEAVE_FILE).exists()


def test_a_lock_granted_while_another_nodes_agent_still_beats_is_refused(tmp_path):
    # Locks that hold within a node only (NFS local_lock, Lustre localflock): the second node's
    # agent gets the lock while the first still runs; its beating agent.json gives it away.
    record = tmp_path / "agent.json"
    record.write_text(json.dumps({"host": "login9", "pid": 4242}))
    beating = threading.Event()

    def beat() -> None:
        while not beating.wait(0.05):
            handover.beat(tmp_path)

    thread = threading.Thread(target=beat)
    thread.start()
    try:
        reason = handover.live_elsewhere(tmp_path, every=0.2)
    finally:
        beating.set()
        thread.join()
    assert reason is not None and "the agent on login9 (pid 4242) still runs" in reason
    assert "do not reach across login nodes" in reason
    assert handover.live_elsewhere(tmp_path, every=0.2) is None  # it stopped beating: it died
    record.write_text(json.dumps({"host": agent_layout.node_name(), "pid": 1}))
    assert handover.live_elsewhere(tmp_path, every=60) is None  # this node's: the lock said enough
