"""A remote machine end to end, on each namespaced test cluster (SLURM 22.05 and 24.11, both with
accounting): the laptop (root, its own HOME) reaches the login node, a host of its own, by an alias
of its `~/.ssh/config`; the agent runs there as the login user and submits to that cluster."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from milex.machine.tunnel.control import TunnelFiles, tunnel_status
from milex_common.protocol import Event
from tests.e2e.clusters import LoginNode
from tests.e2e.conftest import FRAGILE_PORT, RELAY_PORT, REMOTE, MilexHome, use_login_node, wait_until

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def fragile_sshd(login_node: LoginNode) -> LoginNode:
    """The login node's second sshd, which the test may kill (and leaves running)."""
    login_node.sshd_up(FRAGILE_PORT)
    return login_node


@pytest.fixture
def watching_laptop(laptop: MilexHome, monkeypatch: pytest.MonkeyPatch) -> MilexHome:
    """The laptop, with this process in its environment: for the client library's calls in the test."""
    for key, value in laptop.env.items():
        monkeypatch.setenv(key, value)
    return laptop


@pytest.fixture
def fragile_laptop(fragile_sshd: LoginNode, watching_laptop: MilexHome) -> MilexHome:
    """The watching laptop, reaching the login node through its second sshd."""
    use_login_node(watching_laptop, f"{fragile_sshd.alias}-fragile")
    return watching_laptop


class BundleWatch:
    """`milex status --watch`'s loop (follow_events) over the events of the bundles whose name starts
    with `bundle` ("": every bundle), in a thread, until `ends` jobs have ended."""

    def __init__(self, bundle: str, ends: int = 1) -> None:
        self.bundle, self.ends = bundle, ends
        self.seen: list[Event] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        from milex.config.file import load_config
        from milex.watch import follow_events

        try:
            for event in follow_events(load_config().machine(REMOTE), 0, heartbeat=0.3):
                if event is not None and event.bundle.startswith(self.bundle):
                    self.seen.append(event)
                    if sum(seen.state.finished for seen in self.seen) == self.ends:
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


def status(laptop: MilexHome, bundle: str) -> dict[str, dict]:
    jobs = json.loads(laptop.milex("milex", "status", bundle, "--machine", REMOTE, "--json").stdout)
    return {job["name"]: job for job in jobs}


def test_bundle_with_dependency_and_array_runs_on_the_login_node(
    laptop: MilexHome, login_node: LoginNode
) -> None:
    laptop.milex("milex-schedule", "milex-example", "--name", "remote", "--message", "from the laptop $HOME")
    laptop.milex("milex-schedule", "milex-example", "--name", "remote", "--append", "--job_name", "fan",
                 "--dependencies", "milex-example", "--array", "1-3")  # fmt: skip

    result = laptop.milex("milex-run", "remote", "--machine", REMOTE, "--wait", "--timeout", "90")

    assert result.stdout.count("COMPLETED") == 2, result.stdout
    jobs = status(laptop, "remote")
    logs = laptop.milex("milex", "logs", jobs["milex-example"]["job_id"], "--machine", REMOTE).stdout
    report = json.loads(logs)
    assert report["arguments"]["message"] == "from the laptop $HOME"
    assert report["user"] == login_node.user  # the jobs are the login user's, on the cluster's node
    assert logs and login_node.exists(f"{login_node.home}/milex/slurm")  # `~/milex` is the remote home's
    assert "~" not in login_node.sh("ls -A").split()
    task = laptop.milex("milex", "logs", jobs["fan"]["job_id"], "--task", "2", "--machine", REMOTE).stdout
    assert json.loads(task)["array_task_id"] == "2"
    tunnel = laptop.milex("milex", "tunnel", "status", "--machine", REMOTE).stdout
    assert "up since" in tunnel and "streamlocal" in tunnel, tunnel
    assert f"(login node {login_node.sh('hostname').strip()}) up since" in tunnel, tunnel
    [submission] = laptop.submissions()
    assert {job["state"] for job in submission["jobs"].values()} == {"COMPLETED"}
    accounts = login_node.exec("sacct", "--noheader", "--parsable2", "--allocations", "--format=Account",
                               f"--jobs={jobs['milex-example']['job_id']}").stdout.split()  # fmt: skip
    assert accounts == ["physics"]  # accounting recorded the machine's account


def test_agent_stop_sticks_until_the_next_command_needs_the_agent(
    laptop: MilexHome, login_node: LoginNode
) -> None:
    laptop.milex("milex-schedule", "milex-example", "--name", "stopped", "--run-now", "--machine", REMOTE)
    first = login_node.agent_info()
    assert first is not None

    stopped = laptop.milex("milex", "agent", "stop", "--machine", REMOTE).stdout
    assert "tunnel is down too" in stopped, stopped
    time.sleep(3)  # a tunnel left up would have reconnected and started the agent by now
    assert login_node.agent_info() is None
    assert "is down" in laptop.milex("milex", "tunnel", "status", "--machine", REMOTE).stdout

    laptop.milex("milex-run", "stopped", "--machine", REMOTE)
    again = login_node.agent_info()
    assert again is not None and again["pid"] != first["pid"]


@pytest.mark.parametrize("mode", ["streamlocal", "relay"])
def test_an_idle_agent_leaves_and_the_tunnel_starts_it_again_on_the_next_command(
    laptop: MilexHome, login_node: LoginNode, mode: str
) -> None:
    if mode == "relay":  # a server that forbids stream-local forwarding: `milex-agent bridge` relays
        login_node.sshd_up(RELAY_PORT, "AllowStreamLocalForwarding=no")
        use_login_node(laptop, f"{login_node.alias}-relay")
    laptop.env["MILEX_AGENT_IDLE_EXIT"] = "3"
    laptop.milex("milex-schedule", "milex-example", "--name", "idle", "--sleep", "2", "--run-now",
                 "--machine", REMOTE)  # fmt: skip
    first = login_node.agent_info()
    assert first is not None

    wait_until(lambda: login_node.agent_info() is None, timeout=60, what="the idle remote agent to exit")
    assert "stopping: idle for" in login_node.sh("cat ~/milex/agent/*/agent.log")
    tunnel = laptop.milex("milex", "tunnel", "status", "--machine", REMOTE).stdout
    assert "up since" in tunnel and mode in tunnel, tunnel

    jobs = status(laptop, "idle")  # through the tunnel that stayed up: it starts the agent again
    assert jobs["milex-example"]["state"] == "COMPLETED"
    again = login_node.agent_info()
    assert again is not None and again["pid"] != first["pid"]


def test_watch_shows_a_failure_and_cancel_stops_a_bundle(laptop: MilexHome) -> None:
    laptop.milex("milex-schedule", "milex-example", "--name", "bad", "--exit_code", "4")
    laptop.milex("milex-schedule", "milex-example", "--name", "bad", "--append", "--job_name", "never",
                 "--dependencies", "milex-example")  # fmt: skip
    laptop.milex("milex-run", "bad", "--machine", REMOTE)
    watched = laptop.milex("milex", "status", "bad", "--machine", REMOTE, "--watch")
    assert "FAILED" in watched.stdout and "CANCELLED" in watched.stdout
    assert status(laptop, "bad")["milex-example"]["exit_code"] == 4

    laptop.milex("milex-schedule", "milex-example", "--name", "long", "--sleep", "300")
    laptop.milex("milex-run", "long", "--machine", REMOTE)
    assert laptop.milex("milex", "cancel", "long", "--machine", REMOTE).stdout.startswith("cancelled")
    wait_until(lambda: status(laptop, "long")["milex-example"]["state"] == "CANCELLED", what="CANCELLED")


def test_logs_follow_streams_a_job_of_the_login_node_until_it_ends(laptop: MilexHome) -> None:
    laptop.milex("milex-schedule", "milex-example", "--name", "slow", "--sleep", "3", "--then", "slept",
                 "--run-now", "--machine", REMOTE)  # fmt: skip
    job = status(laptop, "slow")["milex-example"]

    followed = laptop.milex("milex", "logs", job["job_id"], "--follow", "--machine", REMOTE).stdout

    report, then = followed.strip().rsplit("\n", 1)
    assert json.loads(report)["job_id"] == job["job_id"] and then == "slept", followed
    assert status(laptop, "slow")["milex-example"]["state"] == "COMPLETED"


def test_watch_survives_a_cut_ssh_connection_and_misses_no_event(
    fragile_laptop: MilexHome, fragile_sshd: LoginNode
) -> None:
    laptop = fragile_laptop
    laptop.milex("milex-schedule", "milex-example", "--name", "steady", "--sleep", "4")
    laptop.milex("milex-run", "steady", "--machine", REMOTE)
    watch = BundleWatch("steady")
    watch.reached("RUNNING")
    fragile_sshd.sshd_kill(FRAGILE_PORT, sessions_only=True)  # the connection dies, the server lives
    states = watch.finish(timeout=60)
    assert states[0] == "SUBMITTED" and states[-2:] == ["RUNNING", "COMPLETED"], states


def test_watch_resumes_after_the_sshd_is_killed_and_started_again(
    fragile_laptop: MilexHome, fragile_sshd: LoginNode
) -> None:
    laptop, node = fragile_laptop, fragile_sshd
    laptop.milex("milex-schedule", "milex-example", "--name", "outage", "--sleep", "4")
    laptop.milex("milex-run", "outage", "--machine", REMOTE)
    watch = BundleWatch("outage")
    running = watch.reached("RUNNING")
    tunnel_log = TunnelFiles.of(REMOTE).path("log")
    logged = tunnel_log.stat().st_size
    try:
        node.sshd_kill(FRAGILE_PORT)  # the server and the connection under the watch die together
        # Down until the job has ended (its events happen meanwhile) and the tunnel found no server.
        wait_until(
            lambda: node.slurm_state(running.job_id) not in ("PENDING", "RUNNING"), what="the job's end"
        )
        wait_until(lambda: "Connection refused" in tunnel_log.read_text()[logged:], what="no server")
    finally:
        node.sshd_up(FRAGILE_PORT)
    states = watch.finish(timeout=90)
    assert states[0] == "SUBMITTED" and states[-2:] == ["RUNNING", "COMPLETED"], states


def test_tunnel_killed_under_a_watch_is_replaced_by_the_next_command(fragile_laptop: MilexHome) -> None:
    laptop = fragile_laptop
    laptop.milex("milex-schedule", "milex-example", "--name", "orphan", "--sleep", "4")
    laptop.milex("milex-run", "orphan", "--machine", REMOTE)
    watch = BundleWatch("orphan")
    watch.reached("RUNNING")
    killed = tunnel_status(REMOTE)
    assert killed.up and killed.pid is not None
    os.kill(killed.pid, signal.SIGKILL)  # the laptop's tunnel service
    wait_until(lambda: tunnel_status(REMOTE).pid != killed.pid, what="the tunnel's death noticed")

    assert status(laptop, "orphan")["milex-example"]["job_id"]  # the next command brings a new tunnel
    states = watch.finish(timeout=90)
    assert states[0] == "SUBMITTED" and states[-2:] == ["RUNNING", "COMPLETED"], states
    new = tunnel_status(REMOTE)
    assert new.up and new.pid not in (None, killed.pid) and new.local_socket == killed.local_socket
    assert TunnelFiles.of(REMOTE).path("pid").read_text().strip() == str(new.pid)


def test_a_link_down_longer_than_the_deadline_ends_the_watch_saying_how_to_check_it(
    fragile_laptop: MilexHome, fragile_sshd: LoginNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    laptop, node = fragile_laptop, fragile_sshd
    monkeypatch.setattr("milex.watch.RECONNECT_DEADLINE", 3.0)
    laptop.milex("milex-schedule", "milex-example", "--name", "cut", "--sleep", "60")
    laptop.milex("milex-run", "cut", "--machine", REMOTE)
    watch = BundleWatch("cut")
    watch.reached("RUNNING")
    try:
        node.sshd_kill(FRAGILE_PORT)
        cut = time.monotonic()
        watch.thread.join(30)
        ended = time.monotonic() - cut
        tunnel = laptop.milex("milex", "tunnel", "status", "--machine", REMOTE).stdout
    finally:
        node.sshd_up(FRAGILE_PORT)
    assert not watch.thread.is_alive() and ended < 15, ended  # 3 s, plus the silence that tells of a loss
    message = str(watch.error)
    down = f"the link to {REMOTE} is down (cannot reach {node.host} port {FRAGILE_PORT}: Connection refused"
    assert down in message and f"`milex tunnel status --machine {REMOTE}`" in message, message
    assert "link down since" in tunnel and "Connection refused" in tunnel, tunnel
    laptop.milex("milex", "cancel", "cut", "--machine", REMOTE)


def test_another_user_of_the_login_node_cannot_reach_the_agents_socket(
    laptop: MilexHome, login_node: LoginNode
) -> None:
    laptop.milex("milex", "agent", "start", "--machine", REMOTE)
    info = login_node.agent_info()
    assert info is not None
    probe = "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print('connected')"
    attempt = login_node.exec("python3", "-c", probe, info["socket"], user="milex-other", check=False)
    assert attempt.returncode != 0 and "PermissionError" in attempt.stderr, attempt
    assert "connected" not in attempt.stdout


def test_first_use_sets_the_machine_up(laptop: MilexHome, login_node: LoginNode) -> None:
    state = laptop.milex("milex", "agent", "status", "--machine", REMOTE).stdout
    assert f"running as {login_node.user} on {login_node.sh('hostname').strip()}," in state, state
    for name in ("jobs", "slurm", "models", "results", "data"):
        assert login_node.exists(f"{login_node.home}/milex/{name}"), name
