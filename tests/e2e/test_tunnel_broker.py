"""The tunnel's broker (client/milex/machine/tunnel/broker.py) against a namespaced login node's real
sshd: commands share its one connection to the agent (one SSH channel, or one relay), a killed SSH
connection under a watch is survived, a stopped agent comes back behind it, relay mode works through
it, and the tunnel still exits when idle though the broker's own connection stays open.

The oracle for "one channel" is the login node's kernel: each SSH channel to the agent (sshd's
stream-local forwarding, or a `milex-agent bridge` relay) is one accepted connection on the agent's
socket, read with `ss` inside the node (the laptop's side cannot tell a brokered request from a
channel of its own)."""

from __future__ import annotations

import re
import stat
import time
from pathlib import Path

import pytest

from milex.cli.status_view import OFFLINE
from milex.config.file import load_config
from milex.machine.commands import remote_agent_command, remote_relay
from milex.machine.tunnel.control import TunnelFiles, start_tunnel, tunnel_status
from tests.e2e.clusters import LoginNode
from tests.e2e.conftest import FRAGILE_PORT, RELAY_PORT, REMOTE, MilexHome, use_login_node, wait_until
from tests.e2e.test_laptop_sleep import ADVICE, DOWN, FAST, attempt, printed_until
from tests.e2e.test_remote import fragile_laptop, fragile_sshd, status, watching_laptop

__all__ = ["fragile_laptop", "fragile_sshd", "watching_laptop"]  # fixtures of test_remote, used here

# The tunnel is SLURM's version-blind: one cluster is enough (the other's login node is the same sshd).
pytestmark = [pytest.mark.timeout(600), pytest.mark.parametrize("login_node", ["cluster1"], indirect=True)]

IDLE = 5.0  # the tunnel's idle exit in the idle test: long enough for one milex-run to come first
WATCHING = "(watching; Ctrl-C to stop)"


def agent_connections(node: LoginNode) -> set[int]:
    """The inodes of the connections the login user's agent accepted on its socket (one per SSH
    channel or relay), read from the node's kernel; empty when no agent runs."""
    info = node.agent_info()
    if info is None:
        return set()
    table = node.exec("ss", "-xH", "state", "established").stdout
    # Columns: Netid? State? Recv-Q Send-Q Local-Address Inode Peer-Address Peer-Inode; an accepted
    # socket's local address is the listener's path.
    found: set[int] = set()
    for line in table.splitlines():
        fields = line.split()
        if info["socket"] in fields:
            found.add(int(fields[fields.index(info["socket"]) + 1]))
    return found


def settled_connections(node: LoginNode, timeout: float = 20.0) -> set[int]:
    """`agent_connections` once two reads a second apart agree (a command's passing probe gone)."""
    deadline = time.monotonic() + timeout
    last = agent_connections(node)
    while True:
        time.sleep(1.0)
        now = agent_connections(node)
        if now == last or time.monotonic() > deadline:
            return now
        last = now


def broker_socket() -> Path:
    return TunnelFiles.of(REMOTE).path("zmq")


def use_relay(laptop: MilexHome, node: LoginNode) -> None:
    """The laptop reaches the login node through its sshd that forbids stream-local forwarding."""
    node.sshd_up(RELAY_PORT, "AllowStreamLocalForwarding=no")
    use_login_node(laptop, f"{node.alias}-relay")


@pytest.mark.parametrize("mode", ["streamlocal", "relay"])
def test_commands_and_a_watch_share_the_brokers_one_channel_to_the_agent(
    watching_laptop: MilexHome, login_node: LoginNode, mode: str
) -> None:
    laptop, node = watching_laptop, login_node
    if mode == "relay":
        use_relay(laptop, node)
    for name in ("one", "two", "three"):  # one's job outlives the runs: the watch of it stays open
        laptop.milex("milex-schedule", "milex-example", "--name", name, "--sleep", "60")
    laptop.milex("milex-run", "one", "--machine", REMOTE)
    # The run has exited; the broker keeps its connection (a channel of a run's own would be closed).
    first = settled_connections(node)
    assert len(first) == 1, first
    with laptop.background("milex", "status", "one", "--machine", REMOTE, "--watch") as watch:
        printed_until(watch, WATCHING)  # a stream held open through the broker meanwhile
        laptop.milex("milex-run", "two", "--machine", REMOTE)
        laptop.milex("milex-run", "three", "--machine", REMOTE)
        during = settled_connections(node)
        assert watch.poll() is None, watch.communicate()
    assert during == first, (first, during)  # the same connection: no channel of the watch's or a run's
    for name in ("one", "two", "three"):
        assert status(laptop, name)["milex-example"]["job_id"], name
    assert settled_connections(node) == first

    described = laptop.milex("milex", "tunnel", "status", "--machine", REMOTE).stdout
    assert f"commands connect to {broker_socket()}" in described and mode in described, described
    assert tunnel_status(REMOTE).broker_socket == str(broker_socket())
    mode_bits = broker_socket().stat().st_mode
    assert stat.S_ISSOCK(mode_bits) and mode_bits & 0o077 == 0  # nobody else may connect
    laptop.milex("milex", "cancel", "one", "--machine", REMOTE)


def test_a_watch_through_the_broker_resumes_after_its_ssh_connection_is_killed(
    fragile_laptop: MilexHome, fragile_sshd: LoginNode
) -> None:
    laptop, node = fragile_laptop, fragile_sshd
    laptop.milex("milex-schedule", "milex-example", "--name", "severed", "--sleep", "8")
    laptop.milex("milex-run", "severed", "--machine", REMOTE)
    log = TunnelFiles.of(REMOTE).path("log")
    with laptop.background("milex", "status", "severed", "--machine", REMOTE, "--watch") as watch:
        printed_until(watch, WATCHING)
        wait_until(lambda: status(laptop, "severed")["milex-example"]["state"] == "RUNNING", what="RUNNING")
        before = settled_connections(node)
        logged = log.stat().st_size
        node.sshd_kill(FRAGILE_PORT, sessions_only=True)  # the connection dies, the server lives
        killed = time.monotonic()
        out, err = watch.communicate(timeout=120)  # never hangs: it ends with the job (8 s)
        ended = time.monotonic() - killed
    assert watch.returncode == 0 and "COMPLETED" in out, (watch.returncode, out, err)
    assert ended < 60, ended
    # The broker lost its connection with the watch's stream in it, and answered it at once.
    tail = log.read_text()[logged:]
    assert re.search(r"connection to the agent lost: \d+ request\(s\) in flight", tail), tail
    after = settled_connections(node)
    assert len(after) == 1 and after != before, (before, after)  # a new connection, a new channel


def test_commands_through_the_broker_say_the_link_is_down_then_a_watch_resumes(
    fragile_laptop: MilexHome, fragile_sshd: LoginNode
) -> None:
    laptop, node = fragile_laptop, fragile_sshd
    laptop.milex("milex-schedule", "milex-example", "--name", "outage", "--sleep", "20")
    laptop.milex("milex-run", "outage", "--machine", REMOTE)
    with laptop.background("milex", "status", "outage", "--machine", REMOTE, "--watch") as watch:
        printed_until(watch, WATCHING)
        try:
            node.sshd_kill(FRAGILE_PORT)  # the server too: no new connection until it is back
            tried = [attempt(laptop, "milex", "status", "outage", "--machine", REMOTE) for _ in range(2)]
            tried.append(attempt(laptop, "milex-run", "outage", "--machine", REMOTE))
            assert watch.poll() is None, watch.communicate()  # it waits for the link, it does not end
        finally:
            node.sshd_up(FRAGILE_PORT)
        out, err = watch.communicate(timeout=120)
    for each in tried:
        assert each.seconds < FAST and DOWN in each.stderr and ADVICE in each.stderr, each
        assert each.code == (OFFLINE if each.argv[0] == "milex" else 1), each
    assert watch.returncode == 0 and "COMPLETED" in out, (watch.returncode, out, err)


def test_after_agent_stop_the_next_run_goes_through_a_new_broker(
    watching_laptop: MilexHome, login_node: LoginNode
) -> None:
    laptop, node = watching_laptop, login_node
    laptop.milex("milex-schedule", "milex-example", "--name", "before")
    laptop.milex("milex-schedule", "milex-example", "--name", "after")
    laptop.milex("milex-run", "before", "--machine", REMOTE)
    first, old = node.agent_info(), tunnel_status(REMOTE)
    assert first is not None and old.up and old.broker_socket

    stopped = laptop.milex("milex", "agent", "stop", "--machine", REMOTE).stdout
    assert "tunnel is down too" in stopped, stopped
    assert not broker_socket().exists()  # no client may connect to a broker that is gone
    wait_until(lambda: node.agent_info() is None, what="the agent's exit")

    started = time.monotonic()
    laptop.milex("milex-run", "after", "--machine", REMOTE)
    took = time.monotonic() - started
    again, new = node.agent_info(), tunnel_status(REMOTE)
    assert again is not None and again["pid"] != first["pid"], (first, again)
    assert new.up and new.pid != old.pid and new.broker_socket == old.broker_socket, (old, new)
    assert status(laptop, "after")["milex-example"]["job_id"]
    assert len(settled_connections(node)) == 1  # the new broker's
    assert took < 60, took


def test_the_tunnel_exits_when_idle_though_its_broker_holds_a_connection(
    watching_laptop: MilexHome, login_node: LoginNode
) -> None:
    laptop, node = watching_laptop, login_node
    laptop.milex("milex-schedule", "milex-example", "--name", "idle")
    machine = load_config().machine(REMOTE)
    # As remote_endpoint starts it, but with a short idle exit (the CLI's is 30 minutes).
    tunnel = start_tunnel(REMOTE, "", relay=remote_relay(machine),
                          on_connect=remote_agent_command(machine, "start"), idle=IDLE)  # fmt: skip
    laptop.milex("milex-run", "idle", "--machine", REMOTE)
    assert tunnel_status(REMOTE).pid == tunnel.pid, "the tunnel went before the run: raise IDLE"
    held = agent_connections(node)
    assert len(held) == 1, held  # the broker's, open after the run exited

    wait_until(
        lambda: tunnel_status(REMOTE).state == "down", timeout=IDLE + 20, what="the idle tunnel's exit"
    )
    assert f"no connection for {IDLE:.0f} s: stopping" in TunnelFiles.of(REMOTE).path("log").read_text()
    assert not broker_socket().exists()
    assert settled_connections(node) == set()  # the broker's connection went with the tunnel
    assert node.agent_info() is not None  # the agent stays

    laptop.milex("milex-run", "idle", "--machine", REMOTE)  # the next command brings a tunnel back
    assert tunnel_status(REMOTE).up
