"""The SSH tunnel against a real OpenSSH server: channels, fallbacks, errors, and the background service."""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest
import zmq

from milex.machine.ssh.errors import HostKeyChangedError, TunnelError, UnknownHostError
from milex.machine.ssh.session import SshSession
from milex.machine.tunnel.control import start_tunnel, stop_tunnel, tunnel_status
from tests.e2e.other_user import OtherUser
from tests.e2e.sshd import (
    ECHO_SERVER,
    LOGIN,
    PASSPHRASE,
    PASSWORD,
    RELAY,
    REMOTE_PYTHON,
    TERMINAL_DRIVER,
    ZMQ_SERVER,
    Keys,
    LoginUser,
    Sshd,
    Terminal,
    run,
    session_processes,
    wait_for,
)

# The first test also builds the login user's venv (for pyzmq) from wheels.
pytestmark = pytest.mark.timeout(600)


@dataclass(frozen=True)
class Remote:
    """Unix sockets served by the login user on the remote side."""

    echo: str
    zmq: str


@dataclass(frozen=True)
class Client:
    home: Path
    keys: Keys

    def session(self, port: int, key: Path | None = None, **options: object) -> SshSession:
        return SshSession("127.0.0.1", LOGIN, str(key or self.keys.plain), port, **options)


@pytest.fixture(scope="session")
def remote(login: LoginUser, login_venv: OtherUser) -> Iterator[Remote]:
    echo, zmq_socket = login.work / "echo.sock", login.work / "zmq.sock"
    for stale in (echo, zmq_socket):  # left by an earlier run: waiting for it would not wait at all
        stale.unlink(missing_ok=True)
    servers = [login.spawn(REMOTE_PYTHON, "-c", ECHO_SERVER, str(echo))]
    servers.append(login.spawn(str(login_venv.venv / "bin" / "python"), "-c", ZMQ_SERVER, str(zmq_socket)))
    try:
        wait_for(echo, servers[0])
        wait_for(zmq_socket, servers[1])
        yield Remote(echo=str(echo), zmq=str(zmq_socket))
    finally:
        for server in servers:
            server.terminate()
            server.wait(10)
            if server.stderr:
                server.stderr.close()


@pytest.fixture
def client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, known_hosts: str, sshd: Sshd, keys: Keys, remote: Remote
) -> Iterator[Client]:
    """A laptop user: known_hosts for the test servers, no ssh-agent, machines `cluster` and `relayed`."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text(known_hosts)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("MILEX_CONFIG", str(tmp_path / "milexconfig"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    machine = {"hostname": "127.0.0.1", "username": LOGIN, "key_path": str(keys.plain),
               "path": f"/home/{LOGIN}/milex", "env_command": "true", "slurm_account": "physics"}  # fmt: skip
    machines = {
        "cluster": {**machine, "port": sshd.port},
        "relayed": {**machine, "port": sshd.no_streamlocal_port},
        "twofactor": {**machine, "port": sshd.kbdint_port, "key_path": str(keys.encrypted)},
    }
    (tmp_path / "milexconfig").write_text(json.dumps(machines))
    yield Client(home, keys)
    for name in machines:
        stop_tunnel(name)


def round_trip(channel: socket.socket | paramiko.Channel, data: bytes) -> bytes:
    channel.sendall(data)
    return channel.recv(len(data))


def kill_ssh_connections(sshd: Sshd, port: int | None = None) -> None:
    """Drop every connection of the login user, as a network failure or a server restart would."""
    processes = session_processes(sshd.listener_pid(port or sshd.port), LOGIN)
    assert processes, "no SSH connection of the login user to kill"
    for pid in processes:
        os.kill(pid, signal.SIGKILL)


def test_streamlocal_channel_reaches_the_remote_socket(client: Client, sshd: Sshd, remote: Remote) -> None:
    with client.session(sshd.port) as session, session.open_streamlocal(remote.echo) as channel:
        assert round_trip(channel, b"hello") == b"HELLO"
        assert session.mode == "streamlocal"
        assert session.exec("id -un; echo oops >&2; exit 3") == (3, f"{LOGIN}\n", "oops\n")


def test_relay_command_replaces_forbidden_streamlocal(client: Client, sshd: Sshd, remote: Remote) -> None:
    with client.session(sshd.no_streamlocal_port, relay=RELAY) as session:
        for _ in range(2):  # the second channel goes straight to the relay
            with session.open_streamlocal(remote.echo) as channel:
                assert round_trip(channel, b"relayed") == b"RELAYED"
                channel.shutdown_write()
                assert channel.recv(10) == b""
                assert channel.recv_exit_status() == 0
        assert session.mode == "relay"


def test_missing_remote_socket_is_explained_then_backed_off(
    client: Client, sshd: Sshd, login: LoginUser
) -> None:
    with client.session(sshd.port) as session:
        with pytest.raises(TunnelError, match="does not exist: is the agent running"):
            session.open_streamlocal(str(login.work / "absent.sock"))
        with pytest.raises(TunnelError, match=r"retrying in 0\.\d s"):
            session.open_streamlocal(str(login.work / "absent.sock"))


def test_unknown_host_error_gives_the_command_that_fixes_it(client: Client, sshd: Sshd) -> None:
    (client.home / ".ssh" / "known_hosts").unlink()
    with pytest.raises(UnknownHostError) as caught, client.session(sshd.port) as session:
        session.connect()
    command = f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> ~/.ssh/known_hosts"
    assert command in str(caught.value)
    run(["bash", "-c", command])
    with client.session(sshd.port) as session:
        assert session.exec("true")[0] == 0


def test_changed_host_key_is_refused(client: Client, sshd: Sshd, keys: Keys) -> None:
    fake = Path(f"{keys.plain}.pub").read_text().split()[:2]  # a valid key, but not the server's
    (client.home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{sshd.port} {' '.join(fake)}\n")
    with pytest.raises(HostKeyChangedError, match="CHANGED"), client.session(sshd.port) as session:
        session.connect()


def test_ssh_config_alias_and_proxy_jump(client: Client, sshd: Sshd, keys: Keys) -> None:
    (client.home / ".ssh" / "config").write_text(
        f"Host cluster-alias\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {LOGIN}\n"
        f"  IdentityFile {keys.plain}\n\n"
        f"Host behind-jump\n  HostName 127.0.0.1\n  Port {sshd.no_streamlocal_port}\n  User {LOGIN}\n"
        f"  IdentityFile {keys.plain}\n  ProxyJump cluster-alias\n"
    )
    with SshSession("cluster-alias") as session:
        assert session.exec("id -un")[1] == f"{LOGIN}\n"
    with SshSession("behind-jump") as session:
        assert session.exec("id -un")[1] == f"{LOGIN}\n"
        assert session._jump is not None and session._jump.is_connected


def test_ssh_agent_keys_are_used(
    client: Client, sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent_socket = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(agent_socket)], stdout=subprocess.DEVNULL)
    try:
        wait_for(agent_socket, agent)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(agent_socket))
        run(["ssh-add", str(client.keys.plain)], env=os.environ)
        with SshSession("127.0.0.1", LOGIN, None, sshd.port) as session:  # no key file: the agent's only
            assert session.exec("id -un")[1] == f"{LOGIN}\n"
    finally:
        agent.terminate()
        agent.wait(10)


def test_passphrase_and_second_factor_are_asked_once(client: Client, sshd: Sshd) -> None:
    asked: list[str] = []

    def prompt(text: str, echo: bool) -> str:
        asked.append(text)
        return PASSPHRASE if "passphrase" in text else PASSWORD

    with client.session(sshd.kbdint_port, client.keys.encrypted, prompt=prompt) as session:
        assert session.exec("true")[0] == 0
        first = session.connected_at
        session._transport.close()  # type: ignore[union-attr]  # the connection drops
        assert session.exec("true")[0] == 0
        assert session.connected_at != first
    assert [text.split()[0] for text in asked] == ["Enter", "Password:"]


def test_dropped_connection_is_reestablished_on_next_use(client: Client, sshd: Sshd, remote: Remote) -> None:
    with client.session(sshd.port) as session:
        with session.open_streamlocal(remote.echo) as channel:
            assert round_trip(channel, b"before") == b"BEFORE"
        first = session.connected_at
        kill_ssh_connections(sshd)
        with session.open_streamlocal(remote.echo) as channel:
            assert round_trip(channel, b"after") == b"AFTER"
        assert session.connected_at != first


CLIENT = """
import socket, sys, threading
size = int(sys.argv[2])
payload = bytes(range(97, 123)) * (size // 26 + 1)
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
def send():
    sock.sendall(payload[:size])
    sock.shutdown(socket.SHUT_WR)
threading.Thread(target=send).start()
received = bytearray()
while data := sock.recv(1 << 20):
    received += data
assert received == payload[:size].upper(), (len(received), size)
print(len(received))
"""


def test_tunnel_service_pipes_concurrent_clients_and_large_payloads(
    client: Client, sshd: Sshd, remote: Remote
) -> None:
    status = start_tunnel("cluster", remote.echo)
    assert status.up and status.pid and Path(status.local_socket).exists()
    assert Path(status.local_socket).stat().st_mode & 0o077 == 0  # nobody else may connect
    sizes = [8 * 1024 * 1024, 3 * 1024 * 1024, 5]
    clients = [subprocess.Popen([sys.executable, "-c", CLIENT, status.local_socket, str(size)],
                                stdout=subprocess.PIPE, text=True) for size in sizes]  # fmt: skip
    for process, size in zip(clients, sizes, strict=True):
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0 and int(out) == size
    status = tunnel_status("cluster")
    assert (status.state, status.mode, status.host) == ("up", "streamlocal", f"{LOGIN}@127.0.0.1:{sshd.port}")
    assert start_tunnel("cluster", remote.echo).pid == status.pid  # a second start finds it running
    assert stop_tunnel("cluster")
    assert tunnel_status("cluster").state == "down"
    assert not Path(status.local_socket).exists()


def test_zeromq_talks_through_the_tunnel(client: Client, remote: Remote) -> None:
    status = start_tunnel("cluster", remote.zmq)
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        dealer.connect("ipc://" + status.local_socket)
        for payload in (b"ping", os.urandom(4 * 1024 * 1024)):
            dealer.send_multipart([b"", payload])
            assert dealer.poll(10_000), "no reply through the tunnel"
            assert dealer.recv_multipart() == [b"", b"pong:" + payload]
    finally:
        dealer.close()
        context.term()


def test_tunnel_service_reconnects_after_the_ssh_connection_dies(
    client: Client, sshd: Sshd, remote: Remote
) -> None:
    status = start_tunnel("cluster", remote.echo)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(status.local_socket)
        assert round_trip(sock, b"one") == b"ONE"
    kill_ssh_connections(sshd)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(status.local_socket)
        assert round_trip(sock, b"two") == b"TWO"
    after = tunnel_status("cluster")
    assert after.pid == status.pid and after.connected_at != status.connected_at


def test_tunnel_prompts_on_the_terminal_then_stops_when_detached_it_would_need_to(
    client: Client, sshd: Sshd, remote: Remote
) -> None:
    terminal = Terminal(TERMINAL_DRIVER, "twofactor", remote.echo)
    terminal.expect("Enter passphrase for key")
    terminal.type(PASSPHRASE)
    terminal.expect("Password:")
    terminal.type(PASSWORD)
    local = terminal.expect(" END").split("RESULT ")[1].split()[0]
    terminal.close()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(local)
        assert round_trip(sock, b"authenticated") == b"AUTHENTICATED"
    # A dropped connection comes back with the passphrase and answer kept in memory: no terminal needed.
    kill_ssh_connections(sshd, sshd.kbdint_port)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(local)
        assert round_trip(sock, b"again") == b"AGAIN"
    # Once the server wants a new answer, the detached tunnel cannot ask: it refuses and stops.
    try:
        run(["chpasswd"], input=f"{LOGIN}:a-new-password\n")
        kill_ssh_connections(sshd, sshd.kbdint_port)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(local)
            assert sock.recv(10) == b""
        deadline = time.monotonic() + 10
        while tunnel_status("twofactor").state != "down" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert tunnel_status("twofactor").state == "down"
        assert "restart the tunnel from a terminal" in Path(local).with_suffix(".log").read_text()
    finally:
        run(["chpasswd"], input=f"{LOGIN}:{PASSWORD}\n")


def test_tunnel_service_relays_when_streamlocal_is_forbidden(
    client: Client, remote: Remote, login: LoginUser
) -> None:
    status = start_tunnel("relayed", remote.echo, relay=RELAY)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(status.local_socket)
        assert round_trip(sock, b"via relay") == b"VIA RELAY"
    assert tunnel_status("relayed").mode == "relay"
    stop_tunnel("relayed")
    # A relay that cannot reach its socket (here one left by a dead agent) is not started again at
    # each of ZeroMQ's reconnections.
    stale = login.work / "stale.sock"
    stale.unlink(missing_ok=True)
    login.spawn(REMOTE_PYTHON, "-c", "import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])",
                str(stale)).communicate(timeout=10)  # fmt: skip
    status = start_tunnel("relayed", str(stale), relay=RELAY)
    for _ in range(3):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(status.local_socket)
            assert sock.recv(10) == b""
    log = Path(status.local_socket).with_suffix(".log").read_text()
    assert log.count("ConnectionRefusedError") == 1 and "retrying in" in log, log


def test_tunnel_service_reports_errors_and_stops_when_idle(client: Client, remote: Remote) -> None:
    known_hosts = client.home / ".ssh" / "known_hosts"
    saved = known_hosts.read_text()
    known_hosts.unlink()
    with pytest.raises(UnknownHostError, match="ssh-keyscan -p"):
        start_tunnel("cluster", remote.echo)
    assert tunnel_status("cluster").state == "down"
    known_hosts.write_text(saved)
    status = start_tunnel("cluster", remote.echo, idle=0.5)
    deadline = time.monotonic() + 10
    while tunnel_status("cluster").state != "down" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tunnel_status("cluster").state == "down"
    assert not Path(status.local_socket).exists()


def test_round_trip_latency_warm_tunnel_versus_fresh_ssh(client: Client, sshd: Sshd, remote: Remote) -> None:
    status = start_tunnel("cluster", remote.echo)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(status.local_socket)
        round_trip(sock, b"warm-up")
        tunnel = []
        for _ in range(200):
            start = time.perf_counter()
            assert round_trip(sock, b"x") == b"X"
            tunnel.append(time.perf_counter() - start)
    known = client.home / ".ssh" / "known_hosts"
    ssh = ["ssh", "-p", str(sshd.port), "-i", str(client.keys.plain), "-o", f"UserKnownHostsFile={known}",
           "-o", "BatchMode=yes", f"{LOGIN}@127.0.0.1", "true"]  # fmt: skip
    fresh = []
    for _ in range(5):
        start = time.perf_counter()
        run(ssh)
        fresh.append(time.perf_counter() - start)
    warm_ms, fresh_ms = statistics.median(tunnel) * 1000, statistics.median(fresh) * 1000
    print(f"round trip: warm tunnel {warm_ms:.2f} ms, fresh ssh command {fresh_ms:.0f} ms")
    assert warm_ms < 10 < fresh_ms


def test_commands_started_together_share_one_new_tunnel(client: Client, remote: Remote) -> None:
    with ThreadPoolExecutor(6) as pool:  # as six commands would, each with its own lock descriptor
        statuses = list(pool.map(lambda _: start_tunnel("cluster", remote.echo), range(6)))
    assert len({status.pid for status in statuses}) == 1 and all(status.up for status in statuses)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(statuses[0].local_socket)
        assert round_trip(sock, b"shared") == b"SHARED"
