"""The agent in its container image, as a login-node user runs it: the image built by
deploy/container/build-image.sh, started with rootless podman by an unprivileged user, and a bundle
submitted by that user's client on the host run to COMPLETED through it on the real cluster."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from milex.agent.daemon import agent_dir, read_info
from tests.e2e.conftest import wait_until
from tests.e2e.other_user import OtherUser, ensure_user

REPO = Path(__file__).resolve().parents[2]
IMAGE = "milex-agent:latest"
USER = "milex-container"
CONTAINER = f"milex-agent-{USER}"


def podman_env() -> dict[str, str]:
    """This machine's podman settings (runc, cgroupfs, rlimits it may set) unless the caller has some."""
    return {"CONTAINERS_CONF": str(REPO / "deploy/container/containers.conf"), **os.environ}


@pytest.fixture(scope="session")
def agent_image(slurm_cluster: None) -> str:
    """The image, built (or found up to date in podman's layer cache) by the documented script."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed; `apt-get install podman buildah runc`.", pytrace=False)
    build = subprocess.run(
        [str(REPO / "deploy/container/build-image.sh")],
        env={**podman_env(), "MILEX_VENV": sys.prefix},
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert build.returncode == 0, f"build-image.sh failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    return IMAGE


@dataclass
class LoginUser:
    """An unprivileged user of a login node: Milex's client on the host, podman of their own."""

    account: OtherUser
    containers_conf: Path

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`argv` as the user, with this machine's podman settings."""
        return self.account.run("env", f"CONTAINERS_CONF={self.containers_conf}", *argv, check=check)


@pytest.fixture(scope="session")
def login_user(agent_image: str) -> Iterator[LoginUser]:
    """The user, with the image in their own podman storage as after `podman load` on a login
    node; their agent container is removed afterwards."""
    shared = Path(tempfile.mkdtemp(prefix="milex-container-"))
    shared.chmod(0o755)
    shutil.copy(podman_env()["CONTAINERS_CONF"], shared / "containers.conf")  # where they can read it
    user = LoginUser(ensure_user(USER), shared / "containers.conf")
    archive = shared / "image.tar"
    subprocess.run(["podman", "save", "--quiet", "-o", str(archive), agent_image],
                   env=podman_env(), check=True, timeout=300)  # fmt: skip
    archive.chmod(0o644)
    user.run("podman", "load", "--quiet", "--input", str(archive))
    user.run("podman", "image", "prune", "--force")  # the images earlier runs loaded
    archive.unlink()
    yield user
    user.run("podman", "rm", "--force", CONTAINER, check=False)
    shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.timeout(900)
def test_a_bundle_runs_to_completion_through_the_containerized_agent(login_user: LoginUser) -> None:
    user, uid = login_user, login_user.account.ids[0]
    user.run("podman", "rm", "--force", CONTAINER, check=False)  # before its mounted path is replaced
    path = user.account.configure(account="boxed")

    started = user.run("python", "-m", "milex.container", "start", "--path", str(path),
                       "--poll-interval", "0.5", "--max-interval", "1")  # fmt: skip
    assert "running in container" in started.stdout, started.stdout
    again = user.run("python", "-m", "milex.container", "start", "--path", str(path))
    assert "already runs: agent" in again.stdout, again.stdout

    # The host sees the container's agent: its lock (flock'd across the bind mount), its info, and
    # its process, which is the user's.
    directory = agent_dir(path)
    info = read_info(directory)
    assert info is not None
    assert info.pid == int(user.run("podman", "inspect", "--format", "{{.State.Pid}}", CONTAINER).stdout)
    assert Path(f"/proc/{info.pid}").stat().st_uid == uid
    socket_dir = Path(info.socket).parent
    assert (socket_dir.stat().st_uid, socket_dir.stat().st_mode & 0o777) == (uid, 0o700)

    health = user.run("podman", "healthcheck", "run", CONTAINER, check=False)
    assert health.returncode == 0, health.stdout + health.stderr
    assert user.run("podman", "exec", CONTAINER, "milex-agent", "ping").stdout.strip() == info.version

    user.run("milex-schedule", "milex-example", "--name", "boxed", "--sleep", "2",
             "--message", "through the container")  # fmt: skip
    user.run("milex-schedule", "milex-example", "--name", "boxed", "--append",
             "--job_name", "then", "--dependencies", "milex-example")  # fmt: skip
    user.run("milex-run", "boxed")
    watched = user.run("milex", "status", "boxed", "--watch")
    assert watched.stdout.count("COMPLETED") >= 2, watched.stdout

    jobs = json.loads(user.run("milex", "status", "boxed", "--json").stdout)
    assert {(job["state"], job["exit_code"]) for job in jobs} == {("COMPLETED", 0)}, jobs
    output = next((path / "slurm").glob("boxed_*_milex-example-*.out"))
    assert output.stat().st_uid == uid  # the job ran as the user
    assert json.loads(output.read_text())["arguments"]["message"] == "through the container"
    after = read_info(directory)
    assert after is not None and after.pid == info.pid  # no agent was started beside the container

    assert "stopped and removed" in user.run("python", "-m", "milex.container", "stop").stdout
    wait_until(lambda: read_info(directory) is None, what="the container's agent to release its lock")
