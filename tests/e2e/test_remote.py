"""A remote machine end to end: the laptop client (root, its own HOME) reaches a login-node user's
agent through the real sshd, and the agent submits to the real cluster as that user."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from milex.agent.daemon import read_info
from milex.common.protocol import Event
from milex.tunnel_control import TunnelFiles, tunnel_status
from tests.e2e.conftest import BIN, MilexHome, wait_until
from tests.e2e.other_user import OtherUser, run
from tests.e2e.sshd import (
    LOGIN,
    PORT,
    Keys,
    Sshd,
    kill_sshd,
    known_hosts_line,
    session_processes,
    sshd_script,
)

MACHINE = "cluster"
OWN_SSHD_PORT = PORT + 10  # the fault tests' own server, which they kill
# The first test also builds the login user's venv from wheels (PyPI for dependencies).
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="session")
def login_node(login_venv: OtherUser) -> OtherUser:
    """The login user with Milex in a venv of its own, and an `sbatch` that can be slowed down."""
    user = login_venv
    wrappers = user.home / "bin"
    wrappers.mkdir(exist_ok=True)
    # MILEX_SBATCH_DELAY: seconds the wrapper lingers after SLURM accepted a job (crash tests).
    (wrappers / "sbatch").write_text(
        '#!/bin/bash\nout=$(/usr/bin/sbatch "$@") || exit $?\necho "$out"\n'
        'delay=$(cat ~/sbatch-delay 2>/dev/null); sleep "${delay:-0}"\n'
    )
    (wrappers / "sbatch").chmod(0o755)
    os.chown(wrappers, *user.ids)
    return user


@pytest.fixture
def laptop(
    tmp_path: Path, login_node: OtherUser, sshd: Sshd, keys: Keys, known_hosts: str
) -> Iterator[MilexHome]:
    """The client: root with its own HOME, known_hosts, and a `cluster` machine behind the sshd."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text(known_hosts)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    run(["rm", "-rf", str(login_node.home / "milex")])
    (login_node.home / "sbatch-delay").write_text("0")
    env = {key: value for key, value in os.environ.items() if key != "SSH_AUTH_SOCK"}
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(runtime), MILEX_CONFIG=str(tmp_path / "milexconfig"),
               PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", MILEX_AGENT_POLL_INTERVAL="0.5",
               MILEX_AGENT_MAX_INTERVAL="1")  # fmt: skip
    user = MilexHome(root=tmp_path, config=tmp_path / "milexconfig", env=env)
    configure_cluster(user, login_node, sshd.port, keys)
    yield user
    user.milex("milex", "agent", "stop", "--machine", MACHINE, check=False)
    user.milex("milex", "tunnel", "down", "--machine", MACHINE, check=False)


def configure_cluster(laptop: MilexHome, login_node: OtherUser, port: int, keys: Keys) -> None:
    """The laptop's machines: `local`, and MACHINE, the login user behind the sshd on `port`."""
    env_command = f"source {login_node.venv}/bin/activate && export PATH={login_node.home}/bin:$PATH"
    laptop.configure({
        "local": {"path": str(laptop.root / "milex"), "env_command": "", "slurm_account": "",
                  "scheduler": "local"},
        MACHINE: {"hostname": "127.0.0.1", "port": port, "username": LOGIN, "key_path": str(keys.plain),
                  "path": str(login_node.home / "milex"), "env_command": env_command,
                  "slurm_account": "physics"},
    })  # fmt: skip


@pytest.fixture
def own_sshd(sshd: Sshd) -> Iterator[int]:
    """An sshd of the test's own, on a port of its own: killing it disturbs no other test or helper."""
    sshd_script("sshd-up.sh", OWN_SSHD_PORT)
    yield OWN_SSHD_PORT
    sshd_script("sshd-down.sh", OWN_SSHD_PORT)


@pytest.fixture
def watching_laptop(laptop: MilexHome, monkeypatch: pytest.MonkeyPatch) -> MilexHome:
    """The laptop, with this process in its environment: for the client library's calls in the test."""
    for key, value in laptop.env.items():
        monkeypatch.setenv(key, value)
    return laptop


@pytest.fixture
def fragile_laptop(own_sshd: int, watching_laptop: MilexHome, login_node: OtherUser, keys: Keys) -> MilexHome:
    """The watching laptop, reaching MACHINE through the test's own sshd."""
    laptop = watching_laptop
    with (Path(laptop.env["HOME"]) / ".ssh" / "known_hosts").open("a") as known_hosts:
        known_hosts.write(known_hosts_line(own_sshd))
    configure_cluster(laptop, login_node, own_sshd, keys)
    return laptop


class BundleWatch:
    """`milex status --watch`'s loop (follow_events) over one bundle's events, in a thread."""

    def __init__(self, bundle: str) -> None:
        self.bundle = bundle
        self.seen: list[Event] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        from milex.config import load_config
        from milex.watch import follow_events

        try:
            for event in follow_events(load_config().machine(MACHINE), 0, heartbeat=0.3):
                if event is not None and event.bundle.startswith(self.bundle):
                    self.seen.append(event)
                    if event.state.finished:
                        return
        except BaseException as error:  # reported by finish(), in the test's thread
            self.error = error

    def states(self) -> list[str]:
        return [event.state.value for event in self.seen]

    def reached(self, state: str) -> Event:
        wait_until(lambda: state in self.states(), what=f"{self.bundle} {state}")
        return next(event for event in self.seen if event.state.value == state)

    def finish(self, timeout: float) -> list[str]:
        """The states seen once the job ended; each event came once, none missing (contiguous numbers)."""
        self.thread.join(timeout)
        assert self.error is None, f"the watch failed: {self.error!r}"
        assert not self.thread.is_alive(), f"the watch never saw the end: {self.seen}"
        seqs = [event.seq for event in self.seen]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
        return self.states()


def slurm_state(job_id: str) -> str:
    squeue = ["squeue", "--noheader", "--states=all", "--jobs", job_id, "--Format=State"]
    return subprocess.run(squeue, capture_output=True, text=True, check=False).stdout.strip() or "GONE"


def agent_info(login_node: OtherUser) -> dict:
    [info] = (login_node.home / "milex" / "agent").glob("*/agent.json")
    return json.loads(info.read_text())


def status(laptop: MilexHome, bundle: str) -> dict[str, dict]:
    jobs = json.loads(laptop.milex("milex", "status", bundle, "--machine", MACHINE, "--json").stdout)
    return {job["name"]: job for job in jobs}


def test_bundle_with_dependency_and_array_runs_on_the_remote_machine(
    laptop: MilexHome, login_node: OtherUser
) -> None:
    laptop.milex("milex-schedule", "milex-example", "--name", "remote", "--message", "from the laptop $HOME")
    laptop.milex("milex-schedule", "milex-example", "--name", "remote", "--append", "--job_name", "fan",
                 "--dependencies", "milex-example", "--array", "1-3")  # fmt: skip

    result = laptop.milex("milex-run", "remote", "--machine", MACHINE, "--wait", "--timeout", "90")

    assert result.stdout.count("COMPLETED") == 2, result.stdout
    jobs = status(laptop, "remote")
    logs = laptop.milex("milex", "logs", jobs["milex-example"]["job_id"], "--machine", MACHINE).stdout
    report = json.loads(logs)
    assert report["arguments"]["message"] == "from the laptop $HOME"
    assert report["user"] == LOGIN  # the jobs are the login user's
    task = laptop.milex("milex", "logs", jobs["fan"]["job_id"], "--task", "2", "--machine", MACHINE).stdout
    assert json.loads(task)["array_task_id"] == "2"
    tunnel = laptop.milex("milex", "tunnel", "status", "--machine", MACHINE).stdout
    assert "up since" in tunnel and "streamlocal" in tunnel, tunnel
    [submission] = laptop.submissions()
    assert {job["state"] for job in submission["jobs"].values()} == {"COMPLETED"}


def test_agent_stop_sticks_until_the_next_command_needs_the_agent(
    laptop: MilexHome, login_node: OtherUser
) -> None:
    laptop.milex("milex-schedule", "milex-example", "--name", "stopped", "--run-now", "--machine", MACHINE)
    first = agent_info(login_node)["pid"]

    stopped = laptop.milex("milex", "agent", "stop", "--machine", MACHINE).stdout
    assert "tunnel is down too" in stopped, stopped
    time.sleep(3)  # a tunnel left up would have reconnected and started the agent by now
    [directory] = (login_node.home / "milex" / "agent").glob("*")
    assert read_info(directory) is None
    assert "is down" in laptop.milex("milex", "tunnel", "status", "--machine", MACHINE).stdout

    laptop.milex("milex-run", "stopped", "--machine", MACHINE)
    assert agent_info(login_node)["pid"] != first


@pytest.mark.parametrize("mode", ["streamlocal", "relay"])
def test_an_idle_agent_leaves_and_the_tunnel_starts_it_again_on_the_next_command(
    laptop: MilexHome, login_node: OtherUser, sshd: Sshd, mode: str
) -> None:
    if mode == "relay":  # a server that forbids stream-local forwarding: `milex-agent bridge` relays
        machines = json.loads((laptop.root / "machines.json").read_text())
        machines[MACHINE]["port"] = sshd.no_streamlocal_port
        laptop.configure(machines)
    laptop.env["MILEX_AGENT_IDLE_EXIT"] = "3"
    laptop.milex("milex-schedule", "milex-example", "--name", "idle", "--sleep", "2", "--run-now",
                 "--machine", MACHINE)  # fmt: skip
    first = agent_info(login_node)["pid"]
    [directory] = (login_node.home / "milex" / "agent").glob("*")

    wait_until(lambda: read_info(directory) is None, timeout=60, what="the idle remote agent to exit")
    assert "stopping: idle for" in (directory / "agent.log").read_text()
    tunnel = laptop.milex("milex", "tunnel", "status", "--machine", MACHINE).stdout
    assert "up since" in tunnel and mode in tunnel, tunnel

    jobs = status(laptop, "idle")  # through the tunnel that stayed up: it starts the agent again
    assert jobs["milex-example"]["state"] == "COMPLETED"
    assert agent_info(login_node)["pid"] != first


def test_watch_shows_a_failure_and_cancel_stops_a_bundle(laptop: MilexHome) -> None:
    laptop.milex("milex-schedule", "milex-example", "--name", "bad", "--exit_code", "4")
    laptop.milex("milex-schedule", "milex-example", "--name", "bad", "--append", "--job_name", "never",
                 "--dependencies", "milex-example")  # fmt: skip
    laptop.milex("milex-run", "bad", "--machine", MACHINE)
    watched = laptop.milex("milex", "status", "bad", "--machine", MACHINE, "--watch")
    assert "FAILED" in watched.stdout and "CANCELLED" in watched.stdout
    assert status(laptop, "bad")["milex-example"]["exit_code"] == 4

    laptop.milex("milex-schedule", "milex-example", "--name", "long", "--sleep", "300")
    laptop.milex("milex-run", "long", "--machine", MACHINE)
    assert laptop.milex("milex", "cancel", "long", "--machine", MACHINE).stdout.startswith("cancelled")
    wait_until(lambda: status(laptop, "long")["milex-example"]["state"] == "CANCELLED", what="CANCELLED")


def test_watch_survives_a_cut_ssh_connection_and_misses_no_event(
    watching_laptop: MilexHome, sshd: Sshd
) -> None:
    laptop = watching_laptop
    laptop.milex("milex-schedule", "milex-example", "--name", "steady", "--sleep", "4")
    laptop.milex("milex-run", "steady", "--machine", MACHINE)
    watch = BundleWatch("steady")
    watch.reached("RUNNING")
    for pid in session_processes(sshd.listener_pid(sshd.port), LOGIN):
        os.kill(pid, signal.SIGKILL)  # the SSH connection dies under the watch
    states = watch.finish(timeout=60)
    assert states[0] == "SUBMITTED" and states[-2:] == ["RUNNING", "COMPLETED"], states


def test_watch_resumes_after_the_sshd_is_killed_and_started_again(fragile_laptop: MilexHome) -> None:
    laptop = fragile_laptop
    laptop.milex("milex-schedule", "milex-example", "--name", "outage", "--sleep", "4")
    laptop.milex("milex-run", "outage", "--machine", MACHINE)
    watch = BundleWatch("outage")
    running = watch.reached("RUNNING")
    tunnel_log = TunnelFiles.of(MACHINE).path("log")
    logged = tunnel_log.stat().st_size
    try:
        kill_sshd(OWN_SSHD_PORT)  # the server and the connection under the watch die together
        # Down until the job has ended (its events happen meanwhile) and the tunnel found no server.
        wait_until(lambda: slurm_state(running.job_id) not in ("PENDING", "RUNNING"), what="the job's end")
        wait_until(lambda: "Connection refused" in tunnel_log.read_text()[logged:], what="no server")
    finally:
        sshd_script("sshd-up.sh", OWN_SSHD_PORT)
    states = watch.finish(timeout=90)
    assert states[0] == "SUBMITTED" and states[-2:] == ["RUNNING", "COMPLETED"], states


def test_tunnel_killed_under_a_watch_is_replaced_by_the_next_command(fragile_laptop: MilexHome) -> None:
    laptop = fragile_laptop
    laptop.milex("milex-schedule", "milex-example", "--name", "orphan", "--sleep", "4")
    laptop.milex("milex-run", "orphan", "--machine", MACHINE)
    watch = BundleWatch("orphan")
    watch.reached("RUNNING")
    killed = tunnel_status(MACHINE)
    assert killed.up and killed.pid is not None
    os.kill(killed.pid, signal.SIGKILL)
    wait_until(lambda: tunnel_status(MACHINE).pid != killed.pid, what="the tunnel's death noticed")

    assert status(laptop, "orphan")["milex-example"]["job_id"]  # the next command brings a new tunnel
    states = watch.finish(timeout=90)
    assert states[0] == "SUBMITTED" and states[-2:] == ["RUNNING", "COMPLETED"], states
    new = tunnel_status(MACHINE)
    assert new.up and new.pid not in (None, killed.pid) and new.local_socket == killed.local_socket
    assert TunnelFiles.of(MACHINE).path("pid").read_text().strip() == str(new.pid)


def test_a_link_down_longer_than_the_deadline_ends_the_watch_saying_how_to_check_it(
    fragile_laptop: MilexHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    laptop = fragile_laptop
    monkeypatch.setattr("milex.watch.RECONNECT_DEADLINE", 3.0)
    laptop.milex("milex-schedule", "milex-example", "--name", "cut", "--sleep", "60")
    laptop.milex("milex-run", "cut", "--machine", MACHINE)
    watch = BundleWatch("cut")
    watch.reached("RUNNING")
    try:
        kill_sshd(OWN_SSHD_PORT)
        cut = time.monotonic()
        watch.thread.join(30)
        ended = time.monotonic() - cut
        tunnel = laptop.milex("milex", "tunnel", "status", "--machine", MACHINE).stdout
    finally:
        sshd_script("sshd-up.sh", OWN_SSHD_PORT)
    assert not watch.thread.is_alive() and ended < 15, ended  # 3 s, plus the silence that tells of a loss
    message = str(watch.error)
    down = f"the link to {MACHINE} is down (cannot reach 127.0.0.1 port {OWN_SSHD_PORT}: Connection refused"
    assert down in message and f"`milex tunnel status --machine {MACHINE}`" in message, message
    assert "link down since" in tunnel and "Connection refused" in tunnel, tunnel
    laptop.milex("milex", "cancel", "cut", "--machine", MACHINE)


def test_remote_agent_killed_mid_bundle_loses_and_doubles_nothing(
    laptop: MilexHome, login_node: OtherUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in laptop.env.items():
        monkeypatch.setenv(key, value)
    from milex.common.model import Bundle, Job
    from milex.common.protocol import SubmitBundle, Submitted
    from milex.config import load_config
    from milex.connection import AgentConnection
    from milex.endpoints import endpoint

    machine = load_config().machine(MACHINE)
    jobs = {f"j{i}": Job(name=f"j{i}", script="milex-example") for i in range(8)}
    bundle = Bundle(name="crash", created=time.strftime("%Y%m%d%H%M%S"), jobs=jobs)
    keys = {name: f"{bundle.stem}/{name}/remote" for name in jobs}
    request = SubmitBundle(bundle=bundle, settings=machine.settings, keys=keys)
    with AgentConnection(endpoint(machine), timeout=60) as connection:  # agent up, sbatch normal
        connection.hello("test")
    # The wrapper reads the delay at each call: from now on, each sbatch lingers after SLURM accepted
    # the job, so the SIGKILL lands between acceptance and the journal.
    (login_node.home / "sbatch-delay").write_text("0.3")
    agent_pid = agent_info(login_node)["pid"]
    with AgentConnection(endpoint(machine), timeout=60) as connection:
        connection.send(request)
        time.sleep(1.0)
        os.kill(agent_pid, signal.SIGKILL)
    wait_until(lambda: not Path(f"/proc/{agent_pid}").exists() or _zombie(agent_pid), what="agent gone")
    (login_node.home / "sbatch-delay").write_text("0")

    with AgentConnection(endpoint(machine), timeout=60) as connection:  # the tunnel restarts it
        reply = connection.request(request, expect=Submitted)
    assert isinstance(reply, Submitted) and not reply.error
    assert sorted(job.name for job in reply.jobs) == sorted(jobs)
    squeue = ["squeue", "--noheader", "--states=all", f"--user={LOGIN}", "--Format=Comment:300"]
    comments = subprocess.run(squeue, capture_output=True, text=True, check=True).stdout.split()
    for key in keys.values():
        assert comments.count(f"milex:{key}") == 1, key


def _zombie(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def test_another_user_cannot_reach_the_agents_socket(laptop: MilexHome, login_node: OtherUser) -> None:
    laptop.milex("milex", "agent", "start", "--machine", MACHINE)
    agent_socket = agent_info(login_node)["socket"]
    try:
        run(["id", "milex-intruder"])
    except subprocess.CalledProcessError:
        run(["useradd", "--create-home", "milex-intruder"])
    probe = "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print('connected')"
    attempt = subprocess.run(["runuser", "-u", "milex-intruder", "--", "/usr/bin/python3", "-c", probe,
                              agent_socket], capture_output=True, text=True, check=False)  # fmt: skip
    assert attempt.returncode != 0 and "PermissionError" in attempt.stderr, attempt
    assert "connected" not in attempt.stdout


def test_agent_deploy_uploads_a_wheel_and_first_use_sets_the_machine_up(
    laptop: MilexHome, login_node: OtherUser
) -> None:
    result = laptop.milex("milex", "agent", "deploy", "--machine", MACHINE, "--wheel")
    assert f"installed on {MACHINE}" in result.stdout

    status = laptop.milex("milex", "agent", "status", "--machine", MACHINE).stdout
    assert f"running as {LOGIN}" in status
    for name in ("jobs", "slurm", "models", "results", "data"):
        assert (login_node.home / "milex" / name).is_dir()
