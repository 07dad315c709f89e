"""End to end on a filesystem whose locks fail (tests/e2e/lockfs.py, a FUSE passthrough): the agent
refuses to keep its journal there, the `milex` command says so and names a directory of the node to use
as the machine's `state_dir`, and with that key set the agent serves. Locks that hold within one login
node only (two mounts of one directory, as NFS with `local_lock`) never let a second node's agent
start on the journal the first one writes.

Both ways a laptop starts an agent are taken: in-process for a local machine (the mount on this host),
over SSH through the tunnel for a remote one: cluster1's login node, lockfs mounted in its own mount
namespace (run from this host's environment: the node's root has no libfuse) on its user's home.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from milex_agent.daemon import START_TIMEOUT
from milex_common.agent_layout import agent_dir, node_name
from tests.e2e.clusters import LoginNode
from tests.e2e.conftest import REMOTE, MilexHome, use_login_node

LOCKFS = Path(__file__).with_name("lockfs.py")
STATE_DIR_LINE = re.compile(r'\n    "state_dir": "([^"]+)",\n')


@contextmanager
def mounted(backing: Path, mountpoint: Path, mode: str) -> Iterator[Path]:
    """`backing` seen through lockfs (locks failing as `mode` says) at `mountpoint` while the block
    runs; lockfs's output in `backing`.log."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    with serving_lockfs([], backing, mountpoint, mode, mountpoint, backing.with_name(f"{backing.name}.log")):
        yield mountpoint


@contextmanager
def mounted_on(node: LoginNode, name: str, mode: str, log: Path) -> Iterator[str]:
    """The login user's `~/NAME` on lockfs (locks failing as `mode` says) on the namespaced login
    node `node`, mounted in its own mount namespace while the block runs: its path there."""
    backing, mountpoint = f"{node.home}/{name}-backing", f"{node.home}/{name}"
    node.sh(f"mkdir -p {backing} {mountpoint}")  # the login user's, as directories of their home are
    init = node.init_pid()
    # lockfs runs here, in the node's mount namespace, where the node's root is a directory.
    inside = [f"{node.root}{backing}", f"{node.root}{mountpoint}"]
    enter = ["nsenter", "--target", str(init), "--mount", "--"]
    with serving_lockfs(enter, *map(Path, inside), mode, Path(f"/proc/{init}/root{mountpoint}"), log):
        yield mountpoint
    node.sh(f"rmdir {mountpoint} && rm -rf {backing}")


def is_mount(path: Path) -> bool:
    """Whether a filesystem is mounted at `path`: its device is not its parent's (os.path.ismount
    resolves the parent, which through /proc/PID/root leads out of that process's root)."""
    try:
        return path.stat().st_dev != path.parent.stat().st_dev
    except FileNotFoundError:
        return False


@contextmanager
def serving_lockfs(
    enter: list[str], backing: Path, mountpoint: Path, mode: str, seen: Path, log: Path, timeout: float = 30.0
) -> Iterator[None]:
    """lockfs serving `backing` at `mountpoint` (run after `enter`, whose mount namespace has them)
    while the block runs; `seen`: the mount point as this process sees it."""
    with open(log, "wb") as output:
        command = [*enter, sys.executable, str(LOCKFS), str(backing), str(mountpoint), mode]
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while not is_mount(seen):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"lockfs did not mount {mountpoint} (deploy/setup.sh installs fuse3 and "
                            f"mfusepy): {log.read_text()}", pytrace=False)  # fmt: skip
            time.sleep(0.05)
        yield
    finally:
        subprocess.run([*enter, "umount", "--lazy", str(mountpoint)], check=False, capture_output=True)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def refused(result: subprocess.CompletedProcess[str], directory: Path, took: float) -> str:
    """The state_dir the refusal proposes, once it is checked to be the refusal of `directory`."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"file locks do not work in {directory}" in result.stderr, result.stderr
    assert "two agents could both write its journal" in result.stderr
    assert took < START_TIMEOUT, f"the refusal took {took:.1f} s: a timeout, not an answer"
    [proposed] = STATE_DIR_LINE.findall(result.stderr)
    assert f"milex config set <machine> state_dir {proposed}" in result.stderr
    return proposed


@pytest.mark.parametrize("mode", ["ENOSYS", "fake", "fake-posix"])
def test_a_local_machine_on_a_home_without_working_locks_refuses_then_serves_from_its_state_dir(
    milex_home: MilexHome, tmp_path: Path, mode: str
) -> None:
    backing = tmp_path / "backing"
    backing.mkdir()
    with mounted(backing, tmp_path / "shared-home", mode) as home:
        env_command = f"source {Path(sys.executable).parent}/activate"
        milex_home.configure({
            "local": {"path": str(tmp_path / "milex"), "env_command": "", "slurm_account": ""},
            "lustre": {"path": str(home / "milex"), "env_command": env_command, "slurm_account": "physics"},
        })  # fmt: skip
        milex_home.milex("milex-schedule", "milex-example", "--name", "probe", "--message", "locks")

        began = time.monotonic()
        result = milex_home.milex("milex-run", "probe", "--machine", "lustre", check=False)
        proposed = refused(result, agent_dir(home / "milex"), time.monotonic() - began)

        assert not list(backing.rglob("journal.sqlite*")), "a journal was opened where locks fail"
        assert Path(proposed).parent in (Path("/var/tmp"), Path("/tmp")), proposed  # this node's disk
        # As the message says, with a directory of this node of the test's own.
        state_dir = tmp_path / "node-local"
        milex_home.milex("milex", "config", "set", "lustre", "state_dir", str(state_dir))
        run = milex_home.milex("milex-run", "probe", "--machine", "lustre", "--wait", "--timeout", "120")

        assert "COMPLETED" in run.stdout, run.stdout
        assert (agent_dir(state_dir, cluster=node_name()) / "journal.sqlite").exists()
        [output] = (home / "milex" / "slurm").glob("probe_*.out")  # the jobs' files stay on the path
        assert MilexHome.read_report(output)["arguments"]["message"] == "locks"
        milex_home.milex("milex", "agent", "stop", "--machine", "lustre")


@pytest.mark.parametrize("login_node", ["cluster1"], indirect=True)
def test_a_remote_machine_on_a_home_without_working_locks_says_so_through_the_tunnel_then_serves(
    laptop: MilexHome, login_node: LoginNode, tmp_path: Path
) -> None:
    with mounted_on(login_node, "lustre", "fake", tmp_path / "lockfs.log") as home:
        use_login_node(laptop, login_node.alias, path=f"{home}/milex")
        began = time.monotonic()
        result = laptop.milex("milex", "agent", "status", "--machine", REMOTE, check=False)
        proposed = refused(result, Path(f"{home}/milex/agent/{login_node.cluster}"), time.monotonic() - began)
        assert "a second process was granted the flock" in result.stderr
        assert proposed == f"/var/tmp/milex-{login_node.user}"

        try:  # following the message word for word
            laptop.milex("milex", "config", "set", REMOTE, "state_dir", proposed)
            status = laptop.milex("milex", "agent", "status", "--machine", REMOTE)
            assert f"running as {login_node.user}" in status.stdout, status.stdout
            assert login_node.exists(f"{proposed}/agent/login1/journal.sqlite")
            laptop.milex("milex-schedule", "milex-example", "--name", "probe", "--message", "locks")
            run = laptop.milex("milex-run", "probe", "--machine", REMOTE, "--wait", "--timeout", "120")
            assert "COMPLETED" in run.stdout, run.stdout
            assert (
                login_node.sh(f"ls {home}/milex/slurm").count(".out") == 1
            )  # the jobs' files stay on the path
        finally:
            laptop.milex("milex", "agent", "stop", "--machine", REMOTE, check=False)
            laptop.milex("milex", "tunnel", "down", "--machine", REMOTE, check=False)
            login_node.sh(f"rm -rf {proposed}")


def on_node(node: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """`argv` run on login node `node`: a UTS namespace of its own named `node` (as root)."""
    command = ["unshare", "--uts", "sh", "-c", f'hostname {node} && exec "$@"', "sh", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_locks_that_hold_within_a_node_only_never_give_a_second_node_the_journal(tmp_path: Path) -> None:
    # The lock check passes on each node (two processes of one mount exclude each other), and each
    # node is granted the agent's lock: the first agent's beat is what the second node sees.
    agent = str(Path(sys.executable).with_name("milex-agent"))
    backing = tmp_path / "home"
    backing.mkdir()
    with (
        mounted(backing, tmp_path / "login1", "node") as one,
        mounted(backing, tmp_path / "login2", "node") as two,
    ):
        first = on_node("login1", agent, "start", "--dir", str(one / "agent"))
        assert first.returncode == 0, first.stderr
        serving = json.loads(first.stdout)
        try:
            assert serving["host"] == "login1"
            assert not serving["socket"].startswith(str(tmp_path)), "a socket on a filesystem that holds none"

            began = time.monotonic()
            second = on_node("login2", agent, "start", "--dir", str(two / "agent"))
            took = time.monotonic() - began

            assert second.returncode == 1, second.stdout + second.stderr
            assert f"the agent on login1 (pid {serving['pid']}) still runs" in second.stderr, second.stderr
            assert "do not reach across login nodes" in second.stderr
            assert STATE_DIR_LINE.search(second.stderr), second.stderr
            assert took < START_TIMEOUT, f"the refusal took {took:.1f} s"
            still = on_node("login1", agent, "status", "--dir", str(one / "agent"))
            assert json.loads(still.stdout)["pid"] == serving["pid"], still.stdout + still.stderr
            os.kill(serving["pid"], 0)  # the first agent serves on, alone on its journal
        finally:
            stopped = on_node("login1", agent, "stop", "--dir", str(one / "agent"))
        assert stopped.stdout.strip() == f"stopped agent {serving['pid']}", stopped.stdout + stopped.stderr

        # Gone from login1 (its record with it), the agent starts on login2, with the same journal.
        moved = on_node("login2", agent, "start", "--dir", str(two / "agent"))
        assert moved.returncode == 0, moved.stderr
        assert json.loads(moved.stdout)["host"] == "login2"
        on_node("login2", agent, "stop", "--dir", str(two / "agent"))
        assert [path.name for path in backing.rglob("journal.sqlite")] == ["journal.sqlite"]
