"""The tunnel's pure logic: message bytes, backoff, ssh config, host keys, credentials, local plumbing."""

from __future__ import annotations

import base64
import os
import shlex
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from milex.machine.ssh.auth import (
    Credentials,
    SshTarget,
    check_host_key,
    key_family,
    resolve_target,
    reusable_answer,
)
from milex.machine.ssh.errors import HostKeyChangedError, PromptUnavailable, TunnelError, UnknownHostError
from milex.machine.ssh.session import ChannelBackoff, relay_command, streamlocal_open_message
from milex.machine.tunnel.control import TunnelFiles, tunnel_gone, tunnel_status
from milex.machine.tunnel.service import RemoteAgent, TunnelService, splice
from milex_common.connection import AgentConnection, AgentUnavailable
from milex_common.errors import MilexError
from milex_common.files import private_directory, take_lock
from tests.unit.ssh_fakes import SocketChannel


def ssh_string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def test_streamlocal_open_message_is_openssh_direct_streamlocal() -> None:
    message = streamlocal_open_message(7, 2097152, 32768, "/home/u/milex/agent.sock")
    assert message.asbytes() == (
        bytes([90])  # SSH_MSG_CHANNEL_OPEN
        + ssh_string(b"direct-streamlocal@openssh.com")
        + struct.pack(">III", 7, 2097152, 32768)
        + ssh_string(b"/home/u/milex/agent.sock")
        + ssh_string(b"")  # reserved string
        + struct.pack(">I", 0)  # reserved uint32
    )


def test_paramiko_still_has_the_internals_open_direct_streamlocal_borrows() -> None:
    borrowed = ("lock", "_next_channel", "_channels", "channel_events", "channels_seen", "_send_user_message",
                "get_exception", "default_window_size", "default_max_packet_size")  # fmt: skip
    with socket.socket() as sock:
        transport = paramiko.Transport(sock)
        for name in borrowed:
            assert hasattr(transport, name), f"paramiko.Transport lost {name}: review open_direct_streamlocal"
        assert hasattr(transport._channels, "put") and hasattr(transport._channels, "get")
        assert hasattr(paramiko.Channel, "_set_transport") and hasattr(paramiko.Channel, "_set_window")
        transport.close()


def test_backoff_doubles_up_to_its_cap_and_a_success_resets_it() -> None:
    now = [100.0]
    backoff = ChannelBackoff(base=0.5, cap=3.0, clock=lambda: now[0])
    assert backoff.wait_left() == 0
    assert [backoff.failed() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.wait_left() == 3.0
    now[0] += 1.0
    assert backoff.wait_left() == 2.0
    backoff.succeeded()
    assert backoff.wait_left() == 0 and backoff.failed() == 0.5


def test_relay_command_quotes_the_socket_and_runs_in_a_login_shell() -> None:
    command = relay_command(
        "/home/a b/agent.sock", "milex-agent bridge --socket {socket}", "source ~/venv/bin/activate"
    )
    assert shlex.split(command) == [
        "bash", "-lc", "source ~/venv/bin/activate && exec milex-agent bridge --socket '/home/a b/agent.sock'"
    ]  # fmt: skip
    assert relay_command("/s", "socat STDIO UNIX-CONNECT:") == "bash -lc 'exec socat STDIO UNIX-CONNECT: /s'"


def test_ssh_config_supplies_what_the_machine_does_not(home: Path) -> None:
    (home / ".ssh").mkdir()
    (home / ".ssh" / "config").write_text(
        "Host cluster\n  HostName login.cluster.org\n  Port 2200\n  User alice\n"
        "  IdentityFile ~/.ssh/cluster_key\n  UserKnownHostsFile ~/.ssh/cluster_hosts\n"
        "  ProxyJump bastion.org\n"
    )
    target = resolve_target("cluster")
    assert (target.hostname, target.port, target.username) == ("login.cluster.org", 2200, "alice")
    assert target.key_files == (str(home / ".ssh" / "cluster_key"),)
    assert target.known_hosts[0] == str(home / ".ssh" / "cluster_hosts")
    assert target.proxy_jump == "bastion.org"
    assert target.host_key_name == "[login.cluster.org]:2200"
    explicit = resolve_target("cluster", username="bob", key_path="~/.ssh/mine", port=22)
    assert (explicit.username, explicit.port, explicit.host_key_name) == ("bob", 22, "login.cluster.org")
    assert explicit.key_files[0] == str(home / ".ssh" / "mine")
    plain = resolve_target("other.org", "carol")
    assert plain.hostname == "other.org" and plain.port == 22 and plain.proxy_jump is None
    assert plain.key_files == tuple(
        str(home / ".ssh" / name) for name in ("id_ed25519", "id_ecdsa", "id_rsa")
    )
    assert plain.known_hosts[0] == str(home / ".ssh" / "known_hosts")


def test_key_family_maps_algorithms_to_known_hosts_types() -> None:
    assert key_family("rsa-sha2-512") == "ssh-rsa"
    assert key_family("ssh-ed25519-cert-v01@openssh.com") == "ssh-ed25519"
    assert key_family("ecdsa-sha2-nistp256") == "ecdsa-sha2-nistp256"


def host_key() -> paramiko.PKey:
    private = ed25519.Ed25519PrivateKey.generate()
    blob = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return paramiko.Ed25519Key(data=base64.b64decode(blob.split()[1]))


def test_unknown_host_error_gives_the_keyscan_command() -> None:
    target = SshTarget(alias="c", hostname="cluster.example.org", port=2222, username="alice")
    key = host_key()
    with pytest.raises(UnknownHostError) as caught:
        check_host_key(target, paramiko.HostKeys(), key)
    assert "ssh-keyscan -p 2222 cluster.example.org >> ~/.ssh/known_hosts" in str(caught.value)
    assert "[cluster.example.org]:2222 is not a known host" in str(caught.value)
    assert key.fingerprint in str(caught.value)


def test_a_changed_host_key_is_refused_and_the_known_one_accepted() -> None:
    target = SshTarget(alias="c", hostname="cluster.example.org", port=22, username="alice")
    known, other = host_key(), host_key()
    keys = paramiko.HostKeys()
    keys.add("cluster.example.org", known.get_name(), known)
    check_host_key(target, keys, known)
    with pytest.raises(HostKeyChangedError, match=r"ssh-keygen -R 'cluster\.example\.org'"):
        check_host_key(target, keys, other)


def test_any_of_several_keys_known_for_one_name_is_accepted(tmp_path: Path) -> None:
    # Two login nodes behind one round-robin name, each with its own key: known_hosts lists both.
    target = SshTarget(alias="c", hostname="cluster.example.org", port=22, username="alice")
    first, second, stranger = host_key(), host_key(), host_key()
    lines = [f"cluster.example.org {key.get_name()} {key.get_base64()}\n" for key in (first, second)]
    (tmp_path / "known_hosts").write_text("".join(lines))
    keys = paramiko.HostKeys(str(tmp_path / "known_hosts"))
    check_host_key(target, keys, first)
    check_host_key(target, keys, second)
    with pytest.raises(HostKeyChangedError, match="CHANGED"):
        check_host_key(target, keys, stranger)
    check_host_key(target, keys, second)  # the check leaves the loaded keys as they were


def test_passwords_are_kept_for_reconnections_and_one_time_codes_never() -> None:
    asked: list[tuple[str, bool]] = []
    credentials = Credentials(lambda text, echo: asked.append((text, echo)) or f"answer{len(asked)}")
    server = SshTarget(alias="c", hostname="cluster.example.org", port=22, username="alice")
    other = SshTarget(alias="d", hostname="other.example.org", port=22, username="alice")
    prompts = [("Password:", False), ("Verification code:", False)]
    first = credentials._handler(server, use_saved=True)("PAM", "", prompts)
    again = credentials._handler(server, use_saved=True)("PAM", "", prompts)
    assert first == ["answer1", "answer2"] and again == ["answer1", "answer3"]
    code = ("PAM\nVerification code:", False)
    assert asked == [("PAM\nPassword:", False), code, code]
    # Another server's password is its own; an answer is never reused where saved ones were refused.
    assert credentials._handler(other, use_saved=True)("", "", [("Password:", False)]) == ["answer4"]
    assert credentials._handler(server, use_saved=False)("", "", [("Password:", False)]) == ["answer5"]


@pytest.mark.parametrize(
    ("prompt", "kept"),
    [("Password: ", True), ("alice@host's password: ", True), ("Verification code: ", False),
     ("Passcode or option (1-3): ", False), ("Enter PASSCODE:", False), ("Password + OTP: ", False),
     ("One-time password: ", False), ("Token: ", False), ("User:", False)],
)  # fmt: skip
def test_only_password_answers_are_reusable(prompt: str, kept: bool) -> None:
    assert reusable_answer(prompt) is kept


def test_a_jump_host_is_named_with_its_destination_and_asks_under_its_own_name() -> None:
    hop = SshTarget(
        alias="gate", hostname="10.0.0.6", port=22, username="alice", jump_of="hpc", through="outer"
    )
    assert hop.label == "jump host gate (alice@10.0.0.6:22) of hpc"
    assert hop.asker == "(alice@gate) "
    assert SshTarget(alias="hpc", hostname="h", port=22, username="alice").asker == ""


def test_a_host_behind_jump_hosts_is_trusted_through_them_not_with_a_direct_keyscan() -> None:
    hop = SshTarget(alias="gate", hostname="10.0.0.6", port=2200, username="alice", jump_of="hpc",
                 through="outer,alice@inner:23")  # fmt: skip
    with pytest.raises(UnknownHostError) as caught:
        check_host_key(hop, paramiko.HostKeys(), host_key())
    message = str(caught.value)
    assert message.startswith("[10.0.0.6]:2200 (the jump host gate (alice@10.0.0.6:2200) of hpc) is not")
    assert "ssh -J outer,alice@inner:23 gate\n" in message
    assert "ssh -J outer alice@inner:23 ssh-keyscan -p 2200 10.0.0.6 >> ~/.ssh/known_hosts" in message
    assert "if inner lets you run commands" in message


def write_encrypted_key(path: Path, passphrase: bytes) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    encryption = serialization.BestAvailableEncryption(passphrase)
    path.write_bytes(
        private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, encryption)
    )


def test_a_passphrase_is_asked_until_right_then_kept(tmp_path: Path) -> None:
    write_encrypted_key(tmp_path / "id", b"right")
    answers = iter(["wrong", "right"])
    asked: list[str] = []
    credentials = Credentials(lambda text, echo: asked.append(text) or next(answers))
    key = credentials._load_key(str(tmp_path / "id"))
    assert key is not None and credentials._load_key(str(tmp_path / "id")) is key
    assert [text.split(";")[0].split(" for")[0] for text in asked] == ["Enter passphrase", "Wrong passphrase"]


def test_no_terminal_means_a_clear_error(tmp_path: Path) -> None:
    write_encrypted_key(tmp_path / "id", b"secret")

    def no_terminal(text: str, echo: bool) -> str:
        raise PromptUnavailable(f"the server asks {text!r}")

    with pytest.raises(PromptUnavailable, match="Enter passphrase"):
        Credentials(no_terminal)._load_key(str(tmp_path / "id"))


def test_runtime_directory_must_be_private(tmp_path: Path) -> None:
    private_directory(tmp_path / "new" / "milex")
    assert (tmp_path / "new" / "milex").stat().st_mode & 0o777 == 0o700
    (tmp_path / "open").mkdir(mode=0o755)
    (tmp_path / "open").chmod(0o755)
    private_directory(tmp_path / "open")  # ours: closed, not refused
    assert (tmp_path / "open").stat().st_mode & 0o777 == 0o700
    (tmp_path / "link").symlink_to(tmp_path / "open")
    with pytest.raises(MilexError, match="must be a directory of yours"):
        private_directory(tmp_path / "link")


def test_tunnel_files_live_in_the_runtime_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert TunnelFiles.of("cluster").path("sock") == tmp_path / "milex" / "cluster.sock"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "absent"))
    assert TunnelFiles.of("cluster").directory.name.startswith("milex-")
    assert tunnel_status("cluster").state == "down"


def test_a_tunnel_that_stopped_for_want_of_a_terminal_says_how_to_open_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    files = TunnelFiles.of("hpc")
    private_directory(files.directory)
    assert tunnel_gone("hpc") == ""  # no word left: nothing to say
    files.path("stopped").write_text(
        "the server asks 'Verification code:': restart the tunnel from a terminal"
    )
    lock = take_lock(files.path("lock"))
    assert lock is not None
    assert tunnel_gone("hpc") == ""  # a service still runs: it has not gone
    os.close(lock)
    gone = tunnel_gone("hpc")
    assert gone.startswith("the tunnel to hpc stopped: the server asks 'Verification code:'"), gone
    assert "`milex tunnel up --machine hpc`" in gone


def test_a_wait_for_a_reply_ends_as_soon_as_the_endpoint_is_gone(tmp_path: Path) -> None:
    reasons = iter(["", "", "the tunnel to hpc stopped"])
    connection = AgentConnection(f"ipc://{tmp_path}/nobody.sock", timeout=30, gone=lambda: next(reasons))
    started = time.monotonic()
    with connection, pytest.raises(AgentUnavailable, match="the tunnel to hpc stopped"):
        connection.hello("0")
    assert time.monotonic() - started < 5


def test_splice_pipes_both_ways_passes_half_closes_on_and_closes_both_ends() -> None:
    client, local = socket.socketpair()
    channel_end, remote = socket.socketpair()
    done = threading.Event()
    splice(local, SocketChannel(channel_end), done.set)  # type: ignore[arg-type]
    payload = bytes(range(256)) * 8192  # 2 MiB: more than any socket buffer
    sender = threading.Thread(target=lambda: (client.sendall(payload), client.shutdown(socket.SHUT_WR)))
    sender.start()
    received = bytearray()
    while data := remote.recv(1 << 16):
        received += data
    sender.join()
    assert received == payload  # and the client's half-close reached the remote end
    remote.sendall(b"reply after the request ended")
    remote.close()
    assert client.recv(100) == b"reply after the request ended"
    assert client.recv(100) == b""
    assert done.wait(5)
    client.close()


def test_splice_tells_of_the_remote_end_before_the_local_side_sees_it() -> None:
    client, local = socket.socketpair()
    channel_end, remote = socket.socketpair()
    client_saw_the_end: list[bool] = []

    def remote_ended() -> None:
        client.setblocking(False)
        try:
            client_saw_the_end.append(client.recv(1) == b"")
        except BlockingIOError:  # nothing to read yet: the half-close has not been passed on
            client_saw_the_end.append(False)
        client.setblocking(True)

    done = threading.Event()
    splice(local, SocketChannel(channel_end), done.set, remote_ended=remote_ended)  # type: ignore[arg-type]
    remote.close()
    assert client.recv(1) == b""
    assert client_saw_the_end == [False]
    client.close()
    assert done.wait(5)


class LateExitChannel:
    """A relay's channel whose exit status comes a moment after its output ended, as OpenSSH may send it."""

    def __init__(self, status: int) -> None:
        self.exit_status = -1
        self.status_event = threading.Event()
        threading.Timer(0.2, self._exited, args=(status,)).start()

    def _exited(self, status: int) -> None:
        self.exit_status = status
        self.status_event.set()

    def recv_stderr_ready(self) -> bool:
        return False


class BackoffOnly:
    """A session that can only back off."""

    def __init__(self) -> None:
        self.backoff = ChannelBackoff()
        self.is_connected = True


class StartOnly:
    """The remote agent's on-connect command, which only says it ran (None: there is none)."""

    def __init__(self, on_connect: Callable[[object], None] | None = None) -> None:
        self.command = "milex-agent start" if on_connect else None
        self.on_connect = on_connect


@pytest.mark.parametrize(("status", "failures"), [(1, 1), (0, 0)])
def test_a_relay_backs_off_by_its_exit_status_even_when_it_comes_late(status: int, failures: int) -> None:
    service = TunnelService(BackoffOnly(), StartOnly(), None, None, 0)  # type: ignore[arg-type]
    service._relay_ended(LateExitChannel(status))  # type: ignore[arg-type]
    assert service.session.backoff.failures == failures


def test_a_failed_relay_starts_the_agent_again_rather_than_backing_off() -> None:
    """A relay fails when the agent's socket is gone (an idle agent left): the on-connect command
    starts the agent, so the client's reconnection finds it."""
    started: list[object] = []
    service = TunnelService(BackoffOnly(), StartOnly(started.append), None, None, 0)  # type: ignore[arg-type]
    service._relay_ended(LateExitChannel(1))  # type: ignore[arg-type]
    assert started == [service.session]
    assert service.session.backoff.failures == 0


class Answers:
    """A session whose commands print what is given, in turn."""

    target = "milex-login@cluster:22"

    def __init__(self, *outputs: str) -> None:
        self.outputs = list(outputs)

    def exec(self, command: str) -> tuple[int, str, str]:
        return 0, self.outputs.pop(0), ""


def test_each_connection_learns_the_agents_socket_and_node_anew() -> None:
    # Behind a round-robin name, the second connection lands on another login node.
    agent = RemoteAgent("milex-agent start")
    agent.on_connect(Answers('{"socket": "/tmp/a.sock", "host": "login1"}\n'))  # type: ignore[arg-type]
    assert (agent.socket, agent.node) == ("/tmp/a.sock", "login1")
    agent.on_connect(Answers('starting\n{"socket": "/tmp/b.sock", "host": "login2"}\n'))  # type: ignore[arg-type]
    assert (agent.socket, agent.node) == ("/tmp/b.sock", "login2")
    with pytest.raises(TunnelError, match="printed no agent info"):
        agent.on_connect(Answers("bash: milex-agent: command not found\n"))  # type: ignore[arg-type]


def test_a_socket_given_stays_and_the_node_is_asked() -> None:
    agent = RemoteAgent(None, "/run/agent.sock")
    agent.on_connect(Answers("login2\n"))  # type: ignore[arg-type]
    assert (agent.socket, agent.node) == ("/run/agent.sock", "login2")
