"""Several login nodes behind one name: cluster1's node and its second login node (hosts of their own
with their own host keys, one /home), the name the user configured resolving to either, changing
between commands as round-robin DNS does. Wherever a command lands, the one agent of the user and
cluster follows it with its journal: no job twice or lost, `milex status` shows every job, `milex
agent stop` stops it wherever it runs, and never do two agents run."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from milex.records import save_bundle
from milex_common.model import Bundle
from tests.e2e.clusters import LoginNode
from tests.e2e.conftest import REMOTE, MilexHome, remote_laptop
from tests.e2e.test_controller_faults import independent
from tests.e2e.test_remote_faults import submitted

pytestmark = pytest.mark.parametrize("login_node", ["cluster1"], indirect=True)
NAME = "cluster1-login.rr.milex.test"  # the name the user configured, in the host's /etc/hosts
HOSTS = Path("/etc/hosts")
MARK = "# milex test: round-robin name"


@contextmanager
def resolving(address: str) -> Iterator[None]:
    """NAME leads to `address` (one login node) until the block ends."""
    kept = [line for line in HOSTS.read_text().splitlines(keepends=True) if MARK not in line]
    HOSTS.write_text("".join(kept) + f"{address} {NAME} {MARK}\n")
    try:
        yield
    finally:
        HOSTS.write_text("".join(kept))


@pytest.fixture
def nodes(login_node: LoginNode) -> tuple[LoginNode, LoginNode]:
    return login_node, login_node.second_login()


@pytest.fixture
def laptop(tmp_path: Path, nodes: tuple[LoginNode, LoginNode]) -> Iterator[MilexHome]:
    """A laptop whose machine is NAME, with both nodes' host keys under that name in known_hosts (a
    user who met each of them once)."""
    first = nodes[0]
    first.sh("rm -rf ~/milex")
    laptop = remote_laptop(tmp_path, first)
    ssh = laptop.root / "home" / ".ssh"
    (ssh / "config").write_text(first.ssh_config().replace(f"HostName {first.host}", f"HostName {NAME}"))
    (ssh / "known_hosts").write_text("".join(f"{NAME} {node.host_key}\n" for node in nodes))
    yield laptop
    with resolving(first.host):
        laptop.milex("milex", "agent", "stop", "--machine", REMOTE, check=False)
        laptop.milex("milex", "tunnel", "down", "--machine", REMOTE, check=False)
    first.sh("scancel --user=$USER", check=False)


def agents(nodes: tuple[LoginNode, LoginNode]) -> dict[str, list[str]]:
    """The user's agent processes on each node, by node."""
    found = {}
    for node in nodes:
        lines = node.sh("pgrep -u $USER -f -a 'milex_agent[.]cli run' || true").splitlines()
        found["second" if node.second else "first"] = [line for line in lines if line.strip()]
    return found


def on(laptop: MilexHome, node: LoginNode, *argv: str) -> str:
    """A command run while NAME leads to `node`, from a laptop whose tunnel was down (asleep)."""
    with resolving(node.host):
        out = laptop.milex(*argv).stdout
        laptop.milex("milex", "tunnel", "down", "--machine", REMOTE)
    return out


def run(laptop: MilexHome, node: LoginNode, bundle: Bundle) -> list[str]:
    """`milex-run` of `bundle` while NAME leads to `node`: the SLURM ids it printed."""
    save_bundle(laptop.jobs, bundle)
    out = on(laptop, node, "milex-run", bundle.name, "--machine", REMOTE)
    ids = [
        line.split()[1] for line in out.splitlines() if line.split()[:1] and line.split()[0] in bundle.jobs
    ]
    assert len(ids) == len(bundle.jobs) and all(i.isdigit() for i in ids), out
    return ids


def test_commands_landing_on_either_node_share_one_agent_and_every_job(
    laptop: MilexHome, nodes: tuple[LoginNode, LoginNode]
) -> None:
    first, second = nodes
    node_of = {first.host: "login1", second.host: "login1b"}
    a, b = independent("rr-a", 6), independent("rr-b", 6)
    run(laptop, first, a)
    one = agents(nodes)
    assert len(one["first"]) == 1 and one["second"] == [], one
    # The name now leads to the other node: the agent moves there, with every job it had.
    with resolving(second.host):
        status = laptop.milex("milex", "status", "--machine", REMOTE, a.name).stdout
        assert all(job in status for job in a.jobs), status
        tunnel = laptop.milex("milex", "tunnel", "status", "--machine", REMOTE).stdout
        assert f"(login node {node_of[second.host]}) up since" in tunnel, tunnel
        agent = laptop.milex("milex", "agent", "status", "--machine", REMOTE).stdout
        assert f" on {node_of[second.host]}," in agent, agent
        laptop.milex("milex", "tunnel", "down", "--machine", REMOTE)
    moved = agents(nodes)
    assert moved["first"] == [] and len(moved["second"]) == 1, moved
    run(laptop, second, b)
    # Back on the first node: both bundles, each job once in SLURM, every one COMPLETED.
    deadline = time.monotonic() + 120
    while True:
        status = on(laptop, first, "milex", "status", "--machine", REMOTE)
        if status.count("COMPLETED") >= 12 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert status.count("COMPLETED") == 12, status
    for bundle in (a, b):
        assert sorted(submitted(first, bundle)) == sorted(bundle.jobs)
    back = agents(nodes)
    assert len(back["first"]) == 1 and back["second"] == [], back


def test_agent_stop_stops_the_agent_on_whichever_node_it_runs(
    laptop: MilexHome, nodes: tuple[LoginNode, LoginNode]
) -> None:
    first, second = nodes
    run(laptop, second, independent("rr-stop", 2))
    assert len(agents(nodes)["second"]) == 1
    stopped = on(laptop, first, "milex", "agent", "stop", "--machine", REMOTE)
    assert re.search(r"stopped agent \d+", stopped), stopped
    assert agents(nodes) == {"first": [], "second": []}
    assert first.agent_info() is None  # the directory says so from either node
