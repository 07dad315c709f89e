"""The agent's container image and services, without running them: the run line, the idempotent
start (against a fake engine), `milex-agent ping`, the systemd unit, and what the image installs."""

from __future__ import annotations

import ast
import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from importlib.metadata import requires
from pathlib import Path

import pytest
from click.testing import CliRunner

from milex.config.file import Machine
from milex.machine import commands, container
from milex_agent import daemon
from milex_agent.cli import main as agent_cli
from milex_common import agent_layout
from milex_common.errors import MilexError

REPO = Path(__file__).resolve().parents[2]


def run_line(**overrides: object) -> list[str]:
    options: dict = {"user": "alice", "home": "/home/alice", "rootless": True}
    return container.container_run_command(
        "podman", "milex-agent:latest", "/home/alice/milex", 1000, 1000, **(options | overrides)
    )


def test_the_run_line_serves_the_users_path_as_the_user_in_the_hosts_namespaces() -> None:
    argv = run_line()

    assert argv[:5] == ["podman", "run", "--detach", "--name", "milex-agent-alice"]
    for option in ("--userns=keep-id", "--user=1000:1000", "--network=host", "--uts=host", "--pid=host",
                   "--volume=/etc/slurm:/etc/slurm:ro", "--volume=/run/munge:/run/munge",
                   "--volume=/home/alice/milex:/home/alice/milex", "--workdir=/home/alice/milex",
                   "--env=MILEX=/home/alice/milex", "--env=HOME=/home/alice"):  # fmt: skip
        assert option in argv
    image = argv.index("milex-agent:latest")
    assert argv[image + 1 :] == ["run", "--path", "/home/alice/milex",
                                 "--poll-interval", "2.0", "--max-interval", "10.0",
                                 "--idle-exit", "0"]  # fmt: skip


def test_root_podman_and_docker_set_the_uid_with_user_alone() -> None:
    argv = run_line(rootless=False)
    assert "--userns=keep-id" not in argv and "--user=1000:1000" in argv


def test_docker_gets_passwd_and_group_files_that_name_the_user(tmp_path: Path) -> None:
    identity = container.write_identity(str(tmp_path / "identity"), 1000, 1000, "alice", "/home/alice")
    argv = run_line(rootless=False, identity_dir=identity)

    assert f"--volume={identity}/passwd:/etc/passwd:ro" in argv
    assert f"--volume={identity}/group:/etc/group:ro" in argv
    assert "alice:x:1000:1000::/home/alice:/bin/sh" in (tmp_path / "identity/passwd").read_text()
    assert ":x:1000:" in (tmp_path / "identity/group").read_text()


def test_a_relative_path_is_refused() -> None:
    with pytest.raises(MilexError, match="absolute"):
        container.container_run_command("podman", "i", "milex", 1, 1, user="a", home="/h")


@pytest.mark.parametrize("length", [10, 60, 90])
def test_the_socket_fallback_is_mounted_whatever_the_agent_decides(length: int) -> None:
    path = "/p" + "x" * length
    argv = container.container_run_command("podman", "i", path, 1000, 1000, user="a", home="/")
    assert "--volume=/tmp/milex-agent-1000:/tmp/milex-agent-1000" in argv
    assert agent_layout.socket_path(agent_layout.agent_dir(path, "cluster1")).parent in (
        Path(path, "agent/cluster1/run"), Path(f"/tmp/milex-agent-{os.getuid()}"),
    )  # fmt: skip


def test_find_engine_prefers_podman_then_docker_and_says_what_to_install() -> None:
    assert container.find_engine(lambda name: f"/usr/bin/{name}") == "podman"
    assert container.find_engine(lambda name: "/usr/bin/docker" if name == "docker" else None) == "docker"
    with pytest.raises(MilexError, match="neither podman nor docker"):
        container.find_engine(lambda name: None)


class FakeEngine:
    """Answers the engine commands `start_container_agent` runs, and records them. `image`: the ID
    of the image its name leads to (None: no such image); the container runs `running`'s."""

    def __init__(self, state: str | None, *, image: str | None = "cafe", serves: bool = True,
                 running: str = "cafe", loads: str | None = None) -> None:  # fmt: skip
        self.state, self.image, self.serves, self.running, self.loads = state, image, serves, running, loads
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)
        verb = argv[1]
        if verb == "container":  # inspect: the state, or the image the container runs
            answer = f"sha256:{self.running}" if "{{.Image}}" in argv else self.state
            return subprocess.CompletedProcess(argv, int(self.state is None), f"{answer}\n", "")
        if verb == "run":
            self.state = "running" if self.serves else "exited"
            self.running = self.image or "pulled"
        if verb == "rm":
            self.state = None
        if verb == "load":
            self.image = self.loads
            return subprocess.CompletedProcess(argv, 0, "Loaded image: localhost/milex-agent:latest\n", "")
        if verb == "image":
            return subprocess.CompletedProcess(argv, int(self.image is None), f"sha256:{self.image}\n", "")
        if verb == "exec" and "status" in argv:
            return subprocess.CompletedProcess(argv, 0, '{"pid": 7, "socket": "/s"}\n', "")
        if verb == "exec":
            return subprocess.CompletedProcess(argv, 0 if self.serves else 1, "0.1.0\n", "")
        if verb == "logs":
            return subprocess.CompletedProcess(argv, 0, "error: an agent is already running\n", "")
        return subprocess.CompletedProcess(argv, 0, "", "")

    def verbs(self) -> list[str]:
        return [argv[1] for argv in self.calls]


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A login node's SLURM and munge directories, and the user's Milex path to be, in tmp_path."""
    for name, directory in (("SLURM_DIR", "slurm"), ("MUNGE_DIR", "munge")):
        (tmp_path / directory).mkdir()
        monkeypatch.setattr(container, name, str(tmp_path / directory))
    monkeypatch.setattr(container.getpass, "getuser", lambda: "alice")
    return tmp_path / "milex"


def start(host: Path, engine: FakeEngine, **options: object) -> str:
    return container.start_container_agent(str(host), engine="podman", run=engine, **options)  # type: ignore[arg-type]


def test_start_runs_the_container_and_waits_for_the_agent(host: Path) -> None:
    engine = FakeEngine(state=None)
    said = start(host, engine)
    assert said.startswith("agent 0.1.0 running in container milex-agent-alice")
    assert engine.verbs() == ["container", "image", "run", "exec"]
    assert host.is_dir()


def test_start_with_docker_writes_the_identity_files_it_mounts(host: Path) -> None:
    engine = FakeEngine(state=None)
    container.start_container_agent(str(host), engine="docker", run=engine)
    [run] = [argv for argv in engine.calls if argv[1] == "run"]
    [mount] = [option for option in run if option.endswith(":/etc/passwd:ro")]
    assert Path(mount.removeprefix("--volume=").split(":")[0]).is_file()


def test_start_keeps_a_container_running_the_image_and_replaces_a_stopped_one(host: Path) -> None:
    running = FakeEngine(state="running")
    assert "already runs: agent 0.1.0" in start(host, running)
    assert "run" not in running.verbs() and "rm" not in running.verbs()

    stopped = FakeEngine(state="exited")
    start(host, stopped)
    assert stopped.verbs()[:4] == ["container", "rm", "image", "run"]


def test_start_replaces_a_container_running_an_older_build_of_the_image(host: Path) -> None:
    engine = FakeEngine(state="running", image="beef", running="cafe")
    assert "running in container" in start(host, engine)
    assert "rm" in engine.verbs() and engine.running == "beef"
    assert "already runs" in start(host, engine)  # the second start finds it current


def test_start_without_an_image_uses_the_last_ones_and_records_what_it_started(host: Path) -> None:
    engine = FakeEngine(state=None)
    start(host, engine, image="reg.example.org/milex:1")
    assert container.recorded_image(str(host)) == "reg.example.org/milex:1"
    engine.state = None
    start(host, engine)
    [_, run] = [argv for argv in engine.calls if argv[1] == "run"]
    assert "reg.example.org/milex:1" in run


def test_start_loads_an_archive_first(host: Path) -> None:
    engine = FakeEngine(state=None, image=None, loads="beef")
    assert "running in container" in start(host, engine, archive="/tmp/image.tar")
    assert engine.calls[0] == ["podman", "load", "--input", "/tmp/image.tar"]
    with pytest.raises(MilexError, match=r"holds another image than other:1 \(Loaded image: localhost/milex"):
        start(host, FakeEngine(state=None, image=None, loads=None), archive="/a.tar", image="other:1")


def test_stop_stops_then_removes_the_container_and_knows_when_there_is_none(host: Path) -> None:
    engine = FakeEngine(state="running")
    assert container.stop_container_agent("docker", run=engine) == "stopped and removed milex-agent-alice"
    assert engine.verbs() == ["container", "stop", "rm"]
    assert container.stop_container_agent("docker", run=engine) == "no agent container milex-agent-alice"


def test_start_without_the_image_says_how_to_get_it(host: Path) -> None:
    with pytest.raises(
        MilexError, match=r"--image-archive FILE. uploads.*build-image\.sh.*REGISTRY/NAME:TAG"
    ):
        start(host, FakeEngine(None, image=None))


def test_a_container_that_stops_shows_its_log(host: Path) -> None:
    with pytest.raises(MilexError, match="an agent is already running"):
        start(host, FakeEngine(None, serves=False))


def test_the_info_is_what_milex_agent_status_prints_in_the_container() -> None:
    engine = FakeEngine(state="running")
    assert (
        container.agent_info("podman", "milex-agent-alice", "/m", run=engine) == '{"pid": 7, "socket": "/s"}'
    )
    assert engine.calls == [["podman", "exec", "milex-agent-alice", "milex-agent", "status", "--path", "/m"]]


def image_archive(directory: Path) -> Path:
    """An image archive as `podman save` writes one, but for its layers: its image ID is 0123abcd."""
    manifest = directory / "manifest.json"
    manifest.write_text('[{"Config": "0123abcd.json", "RepoTags": ["localhost/milex-agent:latest"]}]')
    with tarfile.open(directory / "image.tar", "w") as tar:
        tar.add(manifest, "manifest.json")
    return directory / "image.tar"


def test_an_archives_image_id_is_its_configs_digest(tmp_path: Path) -> None:
    assert container.archive_image_id(str(image_archive(tmp_path))) == "0123abcd"
    (tmp_path / "not.tar").write_text("not an archive")
    assert container.archive_image_id(str(tmp_path / "not.tar")) is None


def test_the_remote_commands_run_the_container_script_where_deploy_put_it() -> None:
    machine = Machine(name="c", path="~/milex", env_command="module load podman", slurm_account="",
                      hostname="login1")  # fmt: skip
    script = '"$HOME"/milex/agent/container.py'
    start = shlex.split(commands.remote_agent_command(machine, "start"))[2]  # bash -lc SCRIPT
    assert f'if [ -f {script} ]; then python3 {script} start --path "$HOME"/milex --poll-interval' in start
    assert "--info; else milex-agent start --path" in start
    assert start.startswith("module load podman && mkdir -p ")
    stop = shlex.split(commands.remote_agent_command(machine, "stop"))[2]
    assert f"then python3 {script} stop; else milex-agent stop" in stop
    relay = commands.remote_relay(machine)
    assert relay.startswith('sh -c \'if [ -f "$1" ]; then exec python3 "$1" bridge --socket "$2"; else exec ')
    assert relay.endswith(f'milex-agent bridge --socket "$2"; fi\' relay {script} {{socket}}')
    quoted = commands.container_command(machine, "image-id", "--image", "my image")
    assert quoted == f"python3 {script} image-id --path \"$HOME\"/milex --image 'my image'"


def test_ping_answers_with_the_running_agents_version_and_fails_without_one(tmp_path: Path) -> None:
    directory = tmp_path / "agent"
    runner = CliRunner()
    absent = runner.invoke(agent_cli, ["ping", "--dir", str(directory)])
    assert absent.exit_code == 1 and "no agent is running" in absent.output

    info = daemon.start(directory, poll_interval=1.0, max_interval=1.0)
    try:
        result = runner.invoke(agent_cli, ["ping", "--dir", str(directory)])
    finally:
        daemon.stop(directory)
    assert (result.exit_code, result.output.strip()) == (0, info.version)


def test_the_systemd_unit_restarts_the_agent_on_failure() -> None:
    unit_file = REPO / "deploy/systemd/milex-agent.service"
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read(unit_file)
    assert "milex-agent run --path" in unit["Service"]["ExecStart"]
    # A service kept up by systemd does not leave when idle; a clean exit (a stop, a removed
    # directory) is not restarted.
    assert "--idle-exit 0" in unit["Service"]["ExecStart"]
    assert unit["Service"]["Restart"] == "on-failure"
    assert unit["Install"]["WantedBy"] == "default.target"
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(["systemd-analyze", "verify", str(unit_file)], capture_output=True, text=True)
        assert (verify.returncode, verify.stderr) == (0, ""), verify.stderr


def test_the_image_installs_every_library_the_agent_imports() -> None:
    """The image installs only the agent's dependencies (AGENT_DEPENDENCIES in the Dockerfile)."""
    dockerfile = (REPO / "Dockerfile").read_text()
    installed = set(re.search(r'ARG AGENT_DEPENDENCIES="([^"]*)"', dockerfile)[1].split())  # type: ignore[index]
    declared = [r for r in requires("milex-scheduler") or [] if "extra ==" not in r]
    assert installed <= {re.match(r"[\w.-]+", d)[0] for d in declared}  # type: ignore[index]
    module_of = {"pyzmq": "zmq"}
    imported = set()
    for source in [*REPO.glob("agent/**/*.py"), *REPO.glob("common/**/*.py")]:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"milex_agent", "milex_common", "__future__"}
    assert third_party <= {module_of.get(name, name) for name in installed}


class FakeSession:
    """The SSH session of a deploy: `image-id` answers `there`; uploads are recorded."""

    def __init__(self, there: str) -> None:
        self.there, self.uploads, self.commands = there, [], []  # type: ignore[var-annotated]

    def exec(self, command: str, timeout: float = 120.0) -> tuple[int, str, str]:
        self.commands.append(command)
        if "image-id" in command:
            return 0, f"{self.there}\n", ""
        return 0, "/tmp/milex-image.abc123\n", ""

    def upload(self, local: Path, remote: str) -> None:
        self.uploads.append(remote)


@pytest.mark.parametrize(("there", "uploaded"), [("0123abcd", False), ("", True), ("beef", True)])
def test_the_archive_is_uploaded_unless_the_machine_has_its_image(
    tmp_path: Path, there: str, uploaded: bool
) -> None:
    from milex.machine.deploy import _uploaded_archive

    machine = Machine(name="c", path="~/milex", env_command="", slurm_account="", hostname="login1")
    session = FakeSession(there)

    with _uploaded_archive(session, machine, "milex-agent:latest", image_archive(tmp_path)) as remote:  # type: ignore[arg-type]
        assert remote == ("/tmp/milex-image.abc123" if uploaded else "")
    assert session.uploads == (["/tmp/milex-image.abc123"] if uploaded else [])
    assert ("rm -f /tmp/milex-image.abc123" in session.commands) == uploaded  # removed after the start
