"""The agent's poll on SLURM 24.11 (the second test cluster, deploy/cluster/): it finds the version,
polls `squeue --only-job-state`, and still reports a job RUNNING then COMPLETED and a failed job's
exit code, which the states alone do not carry; on 22.05 (the host's cluster) it asks every field.

The agent runs on the cluster's login node, a host of its own reached only over ssh; Milex gets
there as wheels built here (the node has no internet). That set-up is local to this file until the
shared cluster fixtures (tests/e2e/clusters.py) and `milex agent deploy --wheel` take it over.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from milex.common.protocol import Event
from tests.e2e.conftest import BIN, REPO, MilexHome, wait_until

STATE = Path(os.environ.get("MILEX_CLUSTER2_STATE", "/var/run/milex-test-cluster2"))
SSH_CONFIG = STATE / "ssh_config"
HOST = "cluster2-login"
MACHINE = "cluster2"
PLACE = "jobstate-e2e"  # under the login user's home: this file's wheels, venv and Milex path
DEPENDENCIES = ("click", "msgspec", "paramiko", "pyzmq", "rich")
pytestmark = pytest.mark.timeout(600)


def on_login_node(command: str, timeout: float = 300) -> str:
    """`command` run by the login user's shell on the login node; its output."""
    argv = ["ssh", "-F", str(SSH_CONFIG), HOST, command]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise AssertionError(f"on the login node, {command!r} exited {done.returncode}: {done.stderr}")
    return done.stdout


def login_env() -> dict[str, str]:
    """login.env's settings by their short names: host, port, user, identity, accounts..."""
    if not (STATE / "login.env").is_file():
        pytest.fail(
            "the second test cluster is not running; start it with deploy/cluster/up.sh", pytrace=False
        )
    lines = (STATE / "login.env").read_text().splitlines()
    pairs = (line.partition("=") for line in lines)
    return {
        key.removeprefix("MILEX_CLUSTER2_").lower(): " ".join(shlex.split(value)) for key, _, value in pairs
    }


def build_wheels(directory: Path) -> None:
    """Milex, the example app, and their dependencies for the node's Python (3.13, manylinux)."""
    pip = [sys.executable, "-m", "pip"]
    for project in (REPO, REPO / "examples"):
        subprocess.run([*pip, "wheel", "--no-deps", "-q", "-w", str(directory), str(project)], check=True)
    platforms = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")
    target = ["--python-version", "3.13", "--implementation", "cp", "--only-binary=:all:"]
    target += [f"--platform={platform}" for platform in platforms]
    subprocess.run([*pip, "download", "-q", *target, "-d", str(directory), *DEPENDENCIES], check=True)


@pytest.fixture(scope="module")
def login_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The login node with Milex in a venv under ~/PLACE; its settings (login.env) and home."""
    settings = login_env()
    wheels = tmp_path_factory.mktemp("wheels")
    build_wheels(wheels)
    home = on_login_node("echo $HOME").strip()
    on_login_node(f"rm -rf {PLACE} && mkdir -p {PLACE}/wheels")
    scp = [
        "scp",
        "-q",
        "-F",
        str(SSH_CONFIG),
        *map(str, sorted(wheels.glob("*.whl"))),
        f"{HOST}:{PLACE}/wheels/",
    ]
    subprocess.run(scp, check=True, timeout=300)
    on_login_node(
        f"python3 -m venv {PLACE}/venv && {PLACE}/venv/bin/pip install -q --no-index "
        f"--find-links {PLACE}/wheels milex-scheduler milex-example"
    )
    yield {**settings, "home": home}
    on_login_node(f"rm -rf {PLACE}")


@pytest.fixture
def laptop(
    tmp_path: Path, login_node: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[MilexHome]:
    """The client, as root with its own HOME, and MACHINE: the login user behind the node's sshd."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text((STATE / "known_hosts").read_text())
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    on_login_node(f"rm -rf {PLACE}/milex")
    env = {key: value for key, value in os.environ.items() if key != "SSH_AUTH_SOCK"}
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(runtime), MILEX_CONFIG=str(tmp_path / "milexconfig"),
               PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", MILEX_AGENT_POLL_INTERVAL="0.5",
               MILEX_AGENT_MAX_INTERVAL="1")  # fmt: skip
    for key, value in env.items():  # the client library's calls in the test read them too
        monkeypatch.setenv(key, value)
    user = MilexHome(root=tmp_path, config=tmp_path / "milexconfig", env=env)
    node, place = login_node, f"{login_node['home']}/{PLACE}"
    machine = {"hostname": node["host"], "port": int(node["port"]), "username": node["user"]}
    machine.update(
        key_path=node["identity"], path=f"{place}/milex", slurm_account=node["accounts"].split()[0]
    )
    local = {"path": str(tmp_path / "milex"), "env_command": "", "slurm_account": "", "scheduler": "local"}
    user.configure({"local": local, MACHINE: {**machine, "env_command": f"source {place}/venv/bin/activate"}})
    yield user
    user.milex("milex", "agent", "stop", "--machine", MACHINE, check=False)
    user.milex("milex", "tunnel", "down", "--machine", MACHINE, check=False)


def events_until_finished(bundle: str, jobs: int, timeout: float) -> list[Event]:
    """The agent's events of `bundle` (from its first) until its `jobs` jobs have all finished."""
    from milex.config import load_config
    from milex.watch import follow_events

    deadline = time.monotonic() + timeout
    seen: list[Event] = []
    for event in follow_events(load_config().machine(MACHINE), 0, heartbeat=0.5):
        if event is not None and event.bundle.startswith(bundle):
            seen.append(event)
        if len({e.name for e in seen if e.state.finished}) == jobs:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"{bundle} did not finish within {timeout:.0f} s: {seen}")
    raise AssertionError(f"the watch ended early: {seen}")


def test_the_agent_on_24_11_polls_states_alone_and_still_reports_exit_codes(laptop: MilexHome) -> None:
    laptop.milex("milex-schedule", "milex-example", "--name", "polled", "--sleep", "4")
    laptop.milex("milex-schedule", "milex-example", "--name", "polled", "--append", "--job_name", "bad",
                 "--exit_code", "5", "--sleep", "2")  # fmt: skip
    laptop.milex("milex-run", "polled", "--machine", MACHINE)

    seen = events_until_finished("polled", jobs=2, timeout=120)

    states = {
        name: [(e.state.value, e.exit_code) for e in seen if e.name == name]
        for name in ("milex-example", "bad")
    }
    assert ("RUNNING", None) in states["milex-example"], states
    assert states["milex-example"][-1] == ("COMPLETED", 0), states
    assert states["bad"][-1] == ("FAILED", 5), states
    log = on_login_node(f"cat {PLACE}/milex/agent/*/agent.log")
    assert "polls: squeue --only-job-state, then every field for changed jobs (slurm-wlm 24.11" in log, log
    assert "polls: squeue with every field" not in log and "refused" not in log, log


def test_the_agent_on_22_05_polls_every_field(milex_home: MilexHome) -> None:
    milex_home.milex("milex-schedule", "milex-example", "--name", "older", "--run-now", "--machine", "local")
    [log] = (milex_home.root / "milex" / "agent").glob("*/agent.log")
    wait_until(lambda: "polls:" in log.read_text(), what="the agent's first poll")
    assert "polls: squeue with every field (slurm-wlm 22.05" in log.read_text(), log.read_text()
