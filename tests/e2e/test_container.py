"""The agent in its container image, as a login-node user runs it: the image built by
deploy/container/build-image.sh, started with rootless podman by an unprivileged user, and a bundle
submitted by that user's client on the host run to COMPLETED through it on the real cluster; then
`milex agent deploy --container` from a laptop over SSH, onto the loopback login node (its podman,
no Milex installed there), whose container's agent serves the laptop's next commands."""

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

from milex_agent.daemon import read_info
from milex_common.agent_layout import agent_dir
from tests.e2e.clusters import LoginNode
from tests.e2e.conftest import REMOTE, MilexHome, example_wheel, laptop_home, remote_laptop, wait_until
from tests.e2e.other_user import OtherUser, ensure_user
from tests.e2e.sshd import LOGIN, Keys, Sshd
from tests.e2e.sshd import LoginUser as SshLogin

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

    started = user.run("python", "-m", "milex.machine.container", "start", "--path", str(path),
                       "--poll-interval", "0.5", "--max-interval", "1")  # fmt: skip
    assert "running in container" in started.stdout, started.stdout
    again = user.run("python", "-m", "milex.machine.container", "start", "--path", str(path))
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

    assert "stopped and removed" in user.run("python", "-m", "milex.machine.container", "stop").stdout
    wait_until(lambda: read_info(directory) is None, what="the container's agent to release its lock")


# ---- `milex agent deploy --container` over SSH ------------------------------------------------------

JOBS_VENV = "~/container-jobs"  # what the jobs run in: the example app alone, no Milex
DEPLOYED_PATH = "~/milex-container-deploy"
CONTAINER_OF_LOGIN = f"milex-agent-{LOGIN}"


@dataclass
class PodmanLogin:
    """The loopback login node's user, whose podman has no agent image yet, and the image's archive
    on the laptop (`podman save`, as a user makes one where the image was built)."""

    account: OtherUser
    archive: Path

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.account.run(*argv, check=check)

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("bash", "-c", f"cd && {script}", check=check)

    def container_pid(self) -> int | None:
        found = self.run("podman", "inspect", "--format", "{{.State.Pid}}", CONTAINER_OF_LOGIN, check=False)
        return int(found.stdout) if found.returncode == 0 else None


@pytest.fixture(scope="session")
def podman_login(login: SshLogin, agent_image: str) -> Iterator[PodmanLogin]:
    """The login user with podman set up as this machine needs (the site's containers.conf, in the
    user's own config here), a venv with the example app for the jobs, and no agent image: the
    first deploy uploads it. The archive is made once per session."""
    account = OtherUser(name=login.name, home=login.home)
    config = login.home / ".config" / "containers"
    config.mkdir(parents=True, exist_ok=True)
    shutil.copy(podman_env()["CONTAINERS_CONF"], config / "containers.conf")
    for path in (config.parent, config, config / "containers.conf"):
        os.chown(path, login.uid, login.gid)
    shared = Path(tempfile.mkdtemp(prefix="milex-container-deploy-"))  # where the user can read
    shared.chmod(0o755)
    wheel = example_wheel(shared)
    user = PodmanLogin(account, shared / "image.tar")
    user.sh(f"rm -rf {JOBS_VENV} && /usr/bin/python3 -m venv {JOBS_VENV} && "
            f"{JOBS_VENV}/bin/pip install -q --no-index --no-deps {wheel}")  # fmt: skip
    user.run("podman", "rm", "--force", CONTAINER_OF_LOGIN, check=False)
    user.run("podman", "rmi", "--force", IMAGE, check=False)
    subprocess.run(["podman", "save", "--quiet", "-o", str(user.archive), agent_image],
                   env=podman_env(), check=True, timeout=300)  # fmt: skip
    yield user
    user.run("podman", "rm", "--force", CONTAINER_OF_LOGIN, check=False)
    shutil.rmtree(shared, ignore_errors=True)


@pytest.fixture
def container_laptop(
    tmp_path: Path, podman_login: PodmanLogin, sshd: Sshd, keys: Keys, known_hosts: str
) -> Iterator[MilexHome]:
    """A laptop whose machine REMOTE is the loopback login node, its Milex path a fresh one, its
    environment the jobs' venv (where no `milex-agent` is)."""
    podman_login.sh(f"rm -rf {DEPLOYED_PATH}")
    ssh = tmp_path / "home" / ".ssh"
    ssh.mkdir(parents=True)
    (ssh / "known_hosts").write_text(known_hosts)
    laptop = laptop_home(tmp_path)
    laptop.configure({
        "local": {"path": str(tmp_path / "milex"), "env_command": "", "slurm_account": "",
                  "scheduler": "local"},
        REMOTE: {"hostname": "127.0.0.1", "port": sshd.port, "username": podman_login.account.name,
                 "key_path": str(keys.plain), "path": DEPLOYED_PATH, "slurm_account": "physics",
                 "env_command": f"source {JOBS_VENV}/bin/activate"},
    })  # fmt: skip
    yield laptop
    laptop.milex("milex", "agent", "stop", "--machine", REMOTE, check=False)
    laptop.milex("milex", "tunnel", "down", "--machine", REMOTE, check=False)
    podman_login.run("scancel", f"--user={podman_login.account.name}", check=False)


def agent_pid(laptop: MilexHome) -> int:
    """The pid the machine's agent gives of itself, through the tunnel."""
    status = laptop.milex("milex", "agent", "status", "--machine", REMOTE).stdout
    assert f"running as {LOGIN}" in status, status
    return int(status.split(", pid ")[1].split(";")[0])


@pytest.mark.timeout(600)
def test_deploy_over_ssh_starts_the_container_agent_that_serves_the_next_commands(
    container_laptop: MilexHome, podman_login: PodmanLogin
) -> None:
    laptop, user = container_laptop, podman_login
    login_shell = f"source {JOBS_VENV}/bin/activate && command -v milex-agent"  # as the tunnel runs it
    no_milex = user.run("bash", "-lc", login_shell, check=False)
    assert no_milex.returncode != 0, no_milex.stdout  # the login node has no Milex, only podman
    deploy = ("milex", "agent", "deploy", "--machine", REMOTE, "--container")

    missing = laptop.milex(*deploy, check=False)  # the image is not there yet
    assert missing.returncode == 1, missing
    assert "podman on " in missing.stderr and "has no image milex-agent:latest" in missing.stderr, missing
    assert "--image-archive FILE` uploads and loads one" in missing.stderr
    assert user.sh(f"test -e {DEPLOYED_PATH}/agent/container.py", check=False).returncode != 0

    deployed = laptop.milex(*deploy, "--image-archive", str(user.archive))
    assert f"running in container {CONTAINER_OF_LOGIN} (milex-agent:latest)" in deployed.stdout, deployed

    # The next commands: a bundle runs through the agent, which is the container's.
    laptop.milex(
        "milex-schedule", "milex-example", "--name", "boxed", "--message", "deployed from the laptop"
    )
    laptop.milex("milex-schedule", "milex-example", "--name", "boxed", "--append", "--job_name", "then",
                 "--dependencies", "milex-example")  # fmt: skip
    ran = laptop.milex("milex-run", "boxed", "--machine", REMOTE, "--wait", "--timeout", "90")
    assert ran.stdout.count("COMPLETED") == 2, ran.stdout
    pid = agent_pid(laptop)
    assert pid == user.container_pid()
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")  # the image's files
    jobs = json.loads(laptop.milex("milex", "status", "boxed", "--machine", REMOTE, "--json").stdout)
    logs = laptop.milex("milex", "logs", jobs[0]["job_id"], "--machine", REMOTE).stdout
    assert json.loads(logs)["arguments"]["message"] == "deployed from the laptop"
    assert json.loads(logs)["user"] == LOGIN

    again = laptop.milex(*deploy, "--image-archive", str(user.archive))  # idempotent: the same agent
    assert f"the agent container {CONTAINER_OF_LOGIN} already runs: agent" in again.stdout, again
    assert agent_pid(laptop) == pid == user.container_pid()

    stopped = laptop.milex("milex", "agent", "stop", "--machine", REMOTE)
    assert f"stopped and removed {CONTAINER_OF_LOGIN}" in stopped.stdout, stopped
    assert user.run("podman", "container", "exists", CONTAINER_OF_LOGIN, check=False).returncode == 1

    # The next command starts the container again (its journal kept every job).
    jobs = json.loads(laptop.milex("milex", "status", "boxed", "--machine", REMOTE, "--json").stdout)
    assert {job["state"] for job in jobs} == {"COMPLETED"}, jobs
    assert agent_pid(laptop) == user.container_pid() != pid


def test_a_server_forbidding_socket_forwarding_reaches_the_container_agent_through_its_relay(
    container_laptop: MilexHome, podman_login: PodmanLogin, sshd: Sshd
) -> None:
    laptop = container_laptop
    laptop.milex("milex", "config", "set", REMOTE, "port", str(sshd.no_streamlocal_port))
    laptop.milex("milex", "agent", "deploy", "--machine", REMOTE, "--container",
                 "--image-archive", str(podman_login.archive))  # fmt: skip

    assert (
        agent_pid(laptop) == podman_login.container_pid()
    )  # relayed by `milex-agent bridge` in the container
    tunnel = laptop.milex("milex", "tunnel", "status", "--machine", REMOTE).stdout
    assert f":{sshd.no_streamlocal_port} (login node " in tunnel and "relay" in tunnel, tunnel


def test_deploy_onto_a_login_node_without_podman_or_docker_says_what_to_do(tmp_path: Path) -> None:
    """A cluster's login node without a container engine (the namespaced cluster1)."""
    node = LoginNode.of("cluster1")
    node.sh("rm -rf ~/milex-no-engine")
    laptop = remote_laptop(tmp_path, node)
    laptop.milex("milex", "config", "set", REMOTE, "path", "~/milex-no-engine")
    laptop.milex("milex", "config", "set", REMOTE, "env_command", "")  # ~/venv may not be made yet

    result = laptop.milex("milex", "agent", "deploy", "--machine", REMOTE, "--container", check=False)

    assert result.returncode == 1, result
    assert "neither podman nor docker is on PATH on login1" in result.stderr, result.stderr
    assert "env_command" in result.stderr and "`milex agent deploy --machine" not in result.stderr
    assert not node.exists(f"{node.home}/milex-no-engine/agent/container.py")  # its agent stays as it was
