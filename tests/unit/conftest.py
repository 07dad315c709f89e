"""Shared fixtures of the unit tests: a home directory and a Milex configuration inside `tmp_path`;
an agent on a real journal with an in-memory scheduler (`fake`, which a module may redefine); an
agent server in a thread with one (`served`, `running`: tests/unit/served.py)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from milex_agent.journal import Journal
from milex_agent.state import Agent
from milex_common.model import MachineSettings
from tests.unit.agent_fakes import FakeScheduler, make_agent
from tests.unit.served import running, served  # noqa: F401  (fixtures offered to every module)

ACCOUNT = "def-alice"
ENV_COMMAND = "source /opt/alice/venvs/ml/bin/activate"


@dataclass
class MilexSetup:
    """Where the `milex_config` fixture put things."""

    home: Path
    config_path: Path
    milex_path: Path
    account: str = ACCOUNT
    env_command: str = ENV_COMMAND

    @property
    def jobs_dir(self) -> Path:
        return self.milex_path / "jobs"

    def write_config(self, document: dict) -> None:
        self.config_path.write_text(json.dumps(document, indent=4))


@pytest.fixture(autouse=True)
def no_shared_connection_left() -> Iterator[None]:
    """Close the connections a test left in the process's cache (milex.machine.endpoint): dropped
    unclosed, their sockets warn whenever the garbage collector meets them, in some later test."""
    from milex.machine import endpoint

    yield
    for machine in list(endpoint._opening):  # opened ahead and never used: waited for, then closed
        with contextlib.suppress(Exception):
            endpoint._shared.setdefault(machine, endpoint._opening[machine].result())
    endpoint._opening.clear()
    for connection in endpoint._shared.values():
        connection.close()
    endpoint._shared.clear()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty home directory; `Path.home()` and `~` point to it, and Milex's own variables are unset."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for variable in ("MILEX_CONFIG", "MILEX_MACHINE", "MILEX"):
        monkeypatch.delenv(variable, raising=False)
    return home


@pytest.fixture
def milex_config(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> MilexSetup:
    """A configuration with a local SLURM machine (account and env command) and a remote one."""
    setup = MilexSetup(
        home=home,
        config_path=tmp_path / "milexconfig.json",
        milex_path=tmp_path / "milex",
    )
    setup.write_config(
        {
            "local": {
                "path": str(setup.milex_path),
                "env_command": ENV_COMMAND,
                "slurm_account": ACCOUNT,
                "scheduler": "slurm",
            },
            "cluster": {
                "hostname": "cluster.example.org",
                "username": "alice",
                "key_path": "~/.ssh/id_ed25519",
                "path": "/scratch/alice/milex",
                "env_command": "module load python",
                "slurm_account": "rrg-cluster",
            },
        }
    )
    monkeypatch.setenv("MILEX_CONFIG", str(setup.config_path))
    return setup


@pytest.fixture
def fake() -> FakeScheduler:
    return FakeScheduler()


@pytest.fixture
def settings(tmp_path: Path) -> MachineSettings:
    return MachineSettings(name="cluster", path=str(tmp_path / "milex"), slurm_account=ACCOUNT)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal(tmp_path / "agent" / "journal.sqlite")
    yield journal
    journal.close()


@pytest.fixture
def agent(journal: Journal, fake: FakeScheduler) -> Agent:
    return make_agent(journal, fake)
