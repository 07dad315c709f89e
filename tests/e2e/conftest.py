"""Fixtures for end-to-end tests: the real SLURM cluster of deploy/, Milex run as its CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.clusters import CLUSTERS, LoginNode
from tests.e2e.other_user import OtherUser, ensure_user
from tests.e2e.sshd import (
    PASSPHRASE,
    PASSWORD,
    Keys,
    LoginUser,
    Sshd,
    ensure_login_user,
    generate_key,
    known_hosts_line,
    start_sshd,
)

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(item.path).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """The test cluster must be up: a missing cluster fails the run, it never skips it."""
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, check=False)
    if "is UP" not in ping.stdout:
        pytest.fail(
            "the SLURM test cluster is not running (scontrol ping: "
            f"{(ping.stdout + ping.stderr).strip()!r}); start it with `deploy/slurm-up.sh`.",
            pytrace=False,
        )


@dataclass
class MilexHome:
    """A user's Milex set-up in a temporary directory: configuration, machine path, CLI runner."""

    root: Path
    config: Path
    env: dict[str, str]

    @property
    def jobs(self) -> Path:
        return self.root / "milex" / "jobs"

    @property
    def slurm(self) -> Path:
        return self.root / "milex" / "slurm"

    def configure(self, machines: dict[str, dict[str, str]]) -> None:
        source = self.root / "machines.json"
        source.write_text(json.dumps(machines))
        self.milex("milex-configuration", "--from", str(source))

    def milex(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a Milex command as the user would, from the venv's bin directory."""
        command = [str(BIN / argv[0]), *argv[1:]]
        completed = subprocess.run(
            command, capture_output=True, text=True, env=self.env, cwd=self.root, timeout=180
        )
        if check and completed.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {completed.returncode}\n"
                f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
            )
        return completed

    @contextmanager
    def background(self, *argv: str) -> Iterator[subprocess.Popen[str]]:
        """A Milex command started as the user would, running while the block runs; killed if it
        still runs at the block's end (a test that failed)."""
        command = [str(BIN / argv[0]), *argv[1:]]
        run = subprocess.Popen(command, env=self.env, cwd=self.root, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            yield run
        finally:
            if run.poll() is None:
                run.kill()
                run.communicate()

    def reports(self, pattern: str) -> list[dict]:
        """The JSON reports the example app printed into the SLURM output files matching `pattern`."""
        return [self.read_report(path) for path in sorted(self.slurm.glob(pattern))]

    @staticmethod
    def read_report(path: Path) -> dict:
        return json.loads(path.read_text())

    def submissions(self) -> list[dict]:
        """Every submission recorded beside every bundle."""
        return [s for p in sorted(self.jobs.glob("*.runs.json")) for s in json.loads(p.read_text())]


@pytest.fixture
def milex_home(tmp_path: Path, slurm_cluster: None) -> Iterator[MilexHome]:
    """A fresh user set-up whose `local` machine submits to the test cluster; its agent is
    stopped afterwards."""
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "MILEX_CONFIG": str(tmp_path / "milexconfig"),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        # Tests wait for jobs of a second or two: keep the agent's polls frequent.
        "MILEX_AGENT_POLL_INTERVAL": "0.5",
        "MILEX_AGENT_MAX_INTERVAL": "1",
    }
    env.pop("MILEX_MACHINE", None)
    user = MilexHome(root=tmp_path, config=tmp_path / "milexconfig", env=env)
    user.configure(
        {
            "local": {
                "path": str(tmp_path / "milex"),
                "env_command": f"source {BIN}/activate",
                "slurm_account": "physics",
            }
        }
    )
    yield user
    for lock in tmp_path.glob("**/agent/*/agent.lock"):  # every machine's agent the test started
        subprocess.run([str(BIN / "milex-agent"), "stop", "--dir", str(lock.parent)], check=False)


def wait_until(
    predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition", interval: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# ---- the test sshd and its login user (shared by the tunnel and remote-machine tests) ----------


@pytest.fixture(scope="session")
def sshd() -> Sshd:
    return start_sshd()


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    directory = tmp_path_factory.mktemp("keys")
    return Keys(plain=directory / "id_plain", encrypted=directory / "id_encrypted")


@pytest.fixture(scope="session")
def login(sshd: Sshd, keys: Keys) -> LoginUser:
    public = [generate_key(keys.plain), generate_key(keys.encrypted, PASSPHRASE)]
    return ensure_login_user(public, PASSWORD)


@pytest.fixture(scope="session")
def known_hosts(sshd: Sshd) -> str:
    ports = (sshd.port, sshd.no_streamlocal_port, sshd.kbdint_port)
    return "".join(known_hosts_line(port) for port in ports)


@pytest.fixture(scope="session")
def login_venv(login: LoginUser, slurm_cluster: None) -> OtherUser:
    """The login user with Milex (and so pyzmq) in a venv of its own, built from wheels."""
    return ensure_user(login.name)


# ---- the namespaced clusters of deploy/cluster/: a laptop and a login node that is a host of its own --


REMOTE = "cluster"  # the laptop's machine on the login node
FRAGILE_PORT = 2232  # a second sshd on the login node, which fault tests kill
RELAY_PORT = 2223  # a third, forbidding stream-local forwarding: the tunnel relays (`milex-agent bridge`)
# On the login node, behind `sbatch`: lingers after SLURM accepted a job for the seconds in
# ~/sbatch-delay (read at each call), so that a kill lands between acceptance and the agent's journal.
SBATCH_WRAPPER = (
    '#!/bin/bash\nout=$(/usr/bin/sbatch "$@") || exit $?\necho "$out"\n'
    'delay=$(cat ~/sbatch-delay 2>/dev/null); sleep "${delay:-0}"\n'
)


@pytest.fixture(scope="session", params=CLUSTERS)
def login_node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LoginNode:
    """A cluster's login node, set up as a user would: a venv of their own, Milex installed in it by
    `milex agent deploy --wheel` from a laptop (the login node has no route to a package index). No
    watchdog: cron would start again the agents tests kill or stop (tests/e2e/test_watchdog.py
    installs it); an empty crontab, whatever a killed run left there."""
    node = LoginNode.of(request.param)
    node.set_link(up=True)  # a run killed while the link was cut left it down
    node.lift_limits()
    node.sh("crontab -r 2>/dev/null; rm -rf ~/milex ~/venv ~/bin ~/sbatch-delay && mkdir ~/bin")
    node.sh("python3 -m venv ~/venv")
    node.write("bin/sbatch", SBATCH_WRAPPER)
    node.sh("chmod 755 ~/bin/sbatch")
    installer = remote_laptop(tmp_path_factory.mktemp(f"installer-{node.cluster}"), node)
    deploy = ("milex", "agent", "deploy", "--machine", REMOTE, "--wheel", "--no-watchdog")
    deployed = installer.milex(*deploy)
    assert f"installed on {REMOTE}" in deployed.stdout, deployed.stdout
    node.install_wheel(example_wheel(tmp_path_factory.mktemp("example")), venv="~/venv")
    installer.milex("milex", "tunnel", "down", "--machine", REMOTE)
    return node


def example_wheel(into: Path) -> Path:
    """The example app's wheel: the jobs of the remote tests run it."""
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(into), str(REPO / "examples")]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    [wheel] = into.glob("milex_example-*.whl")
    return wheel


def remote_laptop(root: Path, node: LoginNode) -> MilexHome:
    """The client: root with its own HOME, whose `~/.ssh/config` names the login node (and its
    second and third sshd) by aliases, and whose known_hosts has the login node's real address."""
    ssh = root / "home" / ".ssh"
    ssh.mkdir(parents=True)
    (ssh / "config").write_text(node.ssh_config() + node.ssh_config(f"{node.alias}-fragile", FRAGILE_PORT)
                                + node.ssh_config(f"{node.alias}-relay", RELAY_PORT))  # fmt: skip
    (ssh / "known_hosts").write_text(node.known_hosts_lines(FRAGILE_PORT, RELAY_PORT))
    laptop = laptop_home(root)
    use_login_node(laptop, node.alias)
    return laptop


def laptop_home(root: Path) -> MilexHome:
    """A laptop user (root) in `root`: HOME `root/home` (its `.ssh` made by the caller), a private
    runtime directory, no ssh-agent, frequent agent polls; not configured yet."""
    runtime = root / "run"
    runtime.mkdir(mode=0o700)
    env = {key: value for key, value in os.environ.items() if key not in ("SSH_AUTH_SOCK", "MILEX_MACHINE")}
    env.update(HOME=str(root / "home"), XDG_RUNTIME_DIR=str(runtime), MILEX_CONFIG=str(root / "milexconfig"),
               PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", MILEX_AGENT_POLL_INTERVAL="0.5",
               MILEX_AGENT_MAX_INTERVAL="1")  # fmt: skip
    return MilexHome(root=root, config=root / "milexconfig", env=env)


def use_login_node(laptop: MilexHome, alias: str, venv: str = "~/venv", path: str = "~/milex") -> None:
    """The laptop's machines: `local`, and REMOTE, the login node reached by its ssh alias `alias`,
    its environment the login user's `venv` (and ~/bin first on PATH), Milex's files in `path`."""
    laptop.configure({
        "local": {"path": str(laptop.root / "milex"), "env_command": "", "slurm_account": "",
                  "scheduler": "local"},
        REMOTE: {"hostname": alias, "path": path, "slurm_account": "physics",
                 "env_command": f"source {venv}/bin/activate && export PATH=~/bin:$PATH"},
    })  # fmt: skip


@pytest.fixture
def laptop(tmp_path: Path, login_node: LoginNode) -> Iterator[MilexHome]:
    """A fresh laptop, and a login node with no Milex directory of an earlier test."""
    login_node.sh("rm -rf ~/milex && echo 0 > ~/sbatch-delay")
    user = remote_laptop(tmp_path, login_node)
    yield user
    user.milex("milex", "agent", "stop", "--machine", REMOTE, check=False)
    user.milex("milex", "tunnel", "down", "--machine", REMOTE, check=False)
    login_node.sh("scancel --user=$USER", check=False)
