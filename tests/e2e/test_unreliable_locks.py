"""End to end on a filesystem whose locks fail (tests/e2e/lockfs.py, a FUSE passthrough): the agent
refuses to keep its journal there, the `milex` command says so and names a directory of the node to use
as the machine's `state_dir`, and with that key set the agent serves. Locks that hold within one login
node only (two mounts of one directory, as NFS with `local_lock`) never let a second node's agent
start on the journal the first one writes.

On this host, not on a namespaced login node: the mount must be where the agent runs, and the host is
where a FUSE filesystem can be mounted by the test itself (the clusters' roots have no libfuse). Both
ways a laptop starts an agent are taken: in-process for a local machine, over SSH through the tunnel
(the loopback sshd's login user) for a remote one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from milex.agent.daemon import START_TIMEOUT, agent_dir
from milex.agent.handover import node_name
from tests.e2e.conftest import MilexHome
from tests.e2e.other_user import OtherUser
from tests.e2e.sshd import LOGIN, Keys, LoginUser, Sshd

LOCKFS = Path(__file__).with_name("lockfs.py")
STATE_DIR_LINE = re.compile(r'\n    "state_dir": "([^"]+)",\n')


@contextmanager
def mounted(backing: Path, mountpoint: Path, mode: str, timeout: float = 30.0) -> Iterator[Path]:
    """`backing` seen through lockfs (locks failing as `mode` says) at `mountpoint` while the block
    runs; lockfs's output in `backing`.log."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    log = backing.with_name(f"{backing.name}.log")
    with open(log, "wb") as output:
        command = [sys.executable, str(LOCKFS), str(backing), str(mountpoint), mode]
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while not os.path.ismount(mountpoint):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"lockfs did not mount {mountpoint} (deploy/setup.sh installs fuse3 and "
                            f"mfusepy): {log.read_text()}", pytrace=False)  # fmt: skip
            time.sleep(0.05)
        yield mountpoint
    finally:
        subprocess.run(["umount", "--lazy", str(mountpoint)], check=False, capture_output=True)
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


@pytest.fixture
def login_mount(login: LoginUser) -> Iterator[Path]:
    """A directory of the login user's home on lockfs with faked locks (the login user's own)."""
    work = Path(tempfile.mkdtemp(prefix="milex-lockfs-"))
    backing = work / "backing"
    backing.mkdir()
    backing.chmod(0o755)  # the login user's, as a directory of their home would be
    shutil.chown(backing, LOGIN, LOGIN)
    mountpoint = Path(os.path.expanduser(f"~{LOGIN}")) / work.name
    try:
        with mounted(backing, mountpoint, "fake") as mount:
            yield mount
    finally:
        mountpoint.rmdir()
        shutil.rmtree(work)


def test_a_remote_machine_on_a_home_without_working_locks_says_so_through_the_tunnel_then_serves(
    milex_home: MilexHome, login_mount: Path, login_venv: OtherUser, sshd: Sshd, keys: Keys, known_hosts: str
) -> None:
    ssh = Path(milex_home.env["HOME"]) / ".ssh"
    ssh.mkdir(exist_ok=True)
    (ssh / "known_hosts").write_text(known_hosts)
    milex_home.env["XDG_RUNTIME_DIR"] = str(milex_home.root / "run")  # the laptop's tunnel files
    (milex_home.root / "run").mkdir(mode=0o700)
    milex_home.configure({
        "local": {"path": str(milex_home.root / "milex"), "env_command": "", "slurm_account": ""},
        "cluster": {"hostname": "127.0.0.1", "port": sshd.port, "username": LOGIN,
                    "key_path": str(keys.plain), "path": str(login_mount / "milex"), "slurm_account": "",
                    "env_command": f"source {login_venv.venv}/bin/activate"},
    })  # fmt: skip

    began = time.monotonic()
    result = milex_home.milex("milex", "agent", "status", "--machine", "cluster", check=False)
    proposed = refused(result, agent_dir(login_mount / "milex"), time.monotonic() - began)
    assert "a second process was granted the flock" in result.stderr
    assert proposed == f"/var/tmp/milex-{LOGIN}"

    try:  # following the message word for word
        milex_home.milex("milex", "config", "set", "cluster", "state_dir", proposed)
        status = milex_home.milex("milex", "agent", "status", "--machine", "cluster")
        assert f"running as {LOGIN}" in status.stdout, status.stdout
        assert (agent_dir(proposed, cluster=node_name()) / "journal.sqlite").exists()
    finally:
        milex_home.milex("milex", "agent", "stop", "--machine", "cluster", check=False)
        milex_home.milex("milex", "tunnel", "down", "--machine", "cluster", check=False)
        shutil.rmtree(proposed, ignore_errors=True)


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
