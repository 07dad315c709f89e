"""Fixtures for end-to-end tests: the real SLURM cluster of deploy/, Milex run as its CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

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


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


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
