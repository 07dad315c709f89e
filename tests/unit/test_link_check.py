"""A dead link found in seconds: the keepalive probe over a link that goes silent, the tunnel's check
socket and what a command makes of its answer."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec
import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from milex.config.file import Machine
from milex.machine.shell import machine_shell
from milex.machine.ssh.errors import LinkDown, PromptUnavailable, TunnelError, TunnelStopping
from milex.machine.ssh.session import SshSession, keepalive_answered
from milex.machine.tunnel.control import (
    TunnelFiles,
    TunnelStatus,
    check_link,
    exec_in_tunnel,
    parse_check,
    upload_in_tunnel,
)
from milex.machine.tunnel.service import RemoteAgent, TunnelService, _listen
from milex_common.files import take_lock


class Link:
    """Bytes between two sockets, both ways, until `cut` is set: from then on they are dropped without
    a word, as a closed lid does (no FIN, no RST)."""

    def __init__(self) -> None:
        self.client, client_side = socket.socketpair()
        server_side, self.server = socket.socketpair()
        self.sockets = (self.client, client_side, server_side, self.server)
        self.cut = threading.Event()
        for source, target in ((client_side, server_side), (server_side, client_side)):
            threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def close(self) -> None:
        for each in self.sockets:
            each.close()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                if not self.cut.is_set():
                    target.sendall(data)
        except OSError:
            pass


class Server(paramiko.ServerInterface):
    """Lets anyone in and run commands (which do nothing); refuses every global request, as OpenSSH
    does `keepalive@openssh.com`."""

    def get_allowed_auths(self, username: str) -> str:
        return "none"

    def check_auth_none(self, username: str) -> int:
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED

    def check_channel_pty_request(self, *request: object) -> bool:
        return True

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        return True


def server_key() -> paramiko.PKey:
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem.decode()))


@pytest.fixture
def session() -> Iterator[tuple[paramiko.Transport, Link]]:
    """An authenticated paramiko client transport to an in-process paramiko server, through a Link."""
    link = Link()
    server = paramiko.Transport(link.server)
    server.add_server_key(server_key())
    started = threading.Thread(target=server.start_server, kwargs={"server": Server()}, daemon=True)
    started.start()  # it waits for the client's side of the key exchange
    client = paramiko.Transport(link.client)
    client.start_client(timeout=10)
    started.join(10)
    client.auth_none("someone")
    try:
        yield client, link
    finally:
        client.close()
        server.close()
        link.close()


def test_a_live_server_answers_the_keepalive(session: tuple[paramiko.Transport, Link]) -> None:
    client, _ = session
    assert keepalive_answered(client, 5.0)
    assert keepalive_answered(client, 5.0)  # again: each probe waits for its own answer


def test_a_silent_link_is_found_within_the_deadline_though_tcp_would_not_notice(
    session: tuple[paramiko.Transport, Link],
) -> None:
    client, link = session
    link.cut.set()
    started = time.monotonic()
    assert not keepalive_answered(client, 0.5)
    assert 0.5 <= time.monotonic() - started < 2
    assert client.is_active()  # paramiko itself still takes the connection for alive


def test_a_closed_connection_answers_no_keepalive(session: tuple[paramiko.Transport, Link]) -> None:
    client, _ = session
    client.close()
    started = time.monotonic()
    assert not keepalive_answered(client, 5.0)
    assert time.monotonic() - started < 1


def test_a_check_answer_is_nothing_when_up_and_the_named_error_when_not() -> None:
    assert parse_check(b'{"up": true}\n') is None
    down = parse_check(json.dumps({"up": False, "kind": "LinkDown", "message": "no banner"}).encode())
    assert isinstance(down, LinkDown) and str(down) == "no banner"
    assert isinstance(parse_check(b'{"up": false, "kind": "PromptUnavailable", "message": "m"}'),
                      PromptUnavailable)  # fmt: skip
    assert type(parse_check(b'{"up": false, "kind": "Strange", "message": "m"}')) is TunnelError
    assert "no answer we understand" in str(parse_check(b""))


class Session:
    """What TunnelService asks of an SshSession for a check: ensure_live, and what it shows."""

    def __init__(self, failure: TunnelError | None) -> None:
        self.failure = failure
        self.mode, self.connected_at, self.last_failure = None, None, ""

    def ensure_live(self) -> None:
        if self.failure is not None:
            self.last_failure = str(self.failure)
            raise self.failure


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "run").mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    return tmp_path / "run"


@contextmanager
def serving(session: object, name: str) -> Iterator[TunnelService]:
    """A tunnel service of `session` answering on its socket `name` ("check" or "exec")."""
    files = TunnelFiles.of("m")
    service = TunnelService(session, RemoteAgent(None), TunnelStatus(machine="m", state="up"), files, 60)  # type: ignore[arg-type]
    listener = _listen(files.path(name))
    serve = service.serve_checks if name == "check" else service.serve_commands
    thread = threading.Thread(target=serve, args=(listener,))
    thread.start()
    try:
        yield service
    finally:
        service.stop.set()
        thread.join()
        listener.close()


def serving_checks(failure: TunnelError | None) -> contextlib.AbstractContextManager[TunnelService]:
    """A tunnel service answering checks on its socket, its session failing with `failure` (if any)."""
    return serving(Session(failure), "check")


def test_a_command_learns_at_once_that_the_link_is_down_and_what_to_do(runtime: Path) -> None:
    with serving_checks(LinkDown("u@h:22 sent no SSH banner within 5 s")), pytest.raises(LinkDown) as raised:
        check_link("m")
    message = str(raised.value)
    assert message.startswith("the link to m is down: u@h:22 sent no SSH banner within 5 s. Nothing was sent")
    assert "reconnects by itself" in message and "`milex tunnel status --machine m`" in message
    shown = json.loads(TunnelFiles.of("m").path("json").read_text())  # `milex tunnel status` tells it too
    assert shown["link_error"] == "u@h:22 sent no SSH banner within 5 s" and shown["link_error_at"]


def test_a_link_that_answers_lets_the_command_go_on(runtime: Path) -> None:
    with serving_checks(None) as service:
        check_link("m")
        assert not service.stop.is_set()
    assert not TunnelFiles.of("m").path("json").exists()  # nothing changed: no status written


def test_a_check_that_needs_an_answer_stops_the_tunnel_so_the_command_asks_it(runtime: Path) -> None:
    with serving_checks(PromptUnavailable("the server asks 'Verification code:'")) as service:
        with pytest.raises(PromptUnavailable):
            check_link("m")
        assert service.stop.is_set()


def test_a_tunnel_without_a_check_socket_lets_the_command_go_on_while_it_is_up(runtime: Path) -> None:
    files = TunnelFiles.of("m")
    files.directory.mkdir(mode=0o700)
    lock = take_lock(files.path("lock"))  # a tunnel of an older Milex, up: the command finds out by itself
    files.path("json").write_bytes(msgspec.json.encode(TunnelStatus(machine="m", state="up")))
    try:
        check_link("m")
    finally:
        os.close(lock)
    with pytest.raises(TunnelStopping, match="the tunnel to m stopped before a check of its link"):
        check_link("m")  # gone since: a new one replaces it


def test_a_tunnel_that_closes_a_check_unanswered_is_stopping(runtime: Path) -> None:
    """A command that finds the tunnel as it stops (an earlier command was told that the link needs a
    code) is told so, and starts a new one: not an error that the check was closed."""
    listener = _listen(TunnelFiles.of("m").path("check"))
    closing = threading.Thread(target=lambda: listener.accept()[0].close())
    closing.start()
    try:
        with pytest.raises(TunnelStopping, match="did not answer a check of its link: it closed the check"):
            check_link("m")
    finally:
        closing.join()
        listener.close()


class Site:
    """A login node in this process: each connection reaches its own paramiko server through a Link.
    Once `cut`, the links fall silent, and new connections reach a peer that never speaks (what a
    gateway that accepts any TCP connection does), until `restored`."""

    def __init__(self) -> None:
        self.key = server_key()
        self.links: list[Link] = []
        self.servers: list[paramiko.Transport] = []
        self.down = False

    def connect(self) -> socket.socket:
        link = Link()
        self.links.append(link)
        if self.down:
            link.cut.set()
            return link.client
        server = paramiko.Transport(link.server)
        server.add_server_key(self.key)
        threading.Thread(target=server.start_server, kwargs={"server": Server()}, daemon=True).start()
        self.servers.append(server)
        return link.client

    def cut(self) -> None:
        self.down = True
        for link in self.links:
            link.cut.set()

    def close(self) -> None:
        for server in self.servers:
            server.close()
        for link in self.links:
            link.close()


@pytest.fixture
def site(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[SshSession, Site]]:
    """An SshSession to a Site, its host key known; deadlines of a fraction of a second."""
    monkeypatch.setattr("milex.machine.ssh.session.PROBE_DEADLINE", 0.4)
    monkeypatch.setattr("milex.machine.ssh.session.LINK_DEADLINE", 0.4)
    where = Site()
    (home / "known_hosts").write_text(f"10.9.9.9 {where.key.get_name()} {where.key.get_base64()}\n")
    (home / "config").write_text(f"Host node\n  HostName 10.9.9.9\n  UserKnownHostsFile {home}/known_hosts\n")
    session = SshSession("node", "someone", ssh_config=home / "config", timeout=10)
    monkeypatch.setattr(session, "_socket", where.connect)
    try:
        yield session, where
    finally:
        session.close()
        where.close()


def test_a_silent_connection_is_replaced_and_a_dead_link_reported_within_the_deadlines(
    site: tuple[SshSession, Site],
) -> None:
    session, where = site
    session.ensure_live()  # the first connection
    first = session.connected_at
    session.ensure_live()  # a keepalive answered: the same connection
    assert session.connected_at == first and len(where.links) == 1
    where.cut()
    started = time.monotonic()
    with pytest.raises(LinkDown, match="sent no SSH banner within"):
        session.ensure_live()  # no keepalive answer: replaced; the new one hears no banner
    assert time.monotonic() - started < 0.4 + 0.4 + 0.5 and len(where.links) == 2
    assert "sent no SSH banner" in session.last_failure and not session.is_connected
    where.down = False  # the lid opens
    session.ensure_live()
    assert session.is_connected and session.last_failure == "" and session.connected_at != first


def test_a_check_that_waited_on_a_failing_one_tries_again_and_finds_the_link_back(
    site: tuple[SshSession, Site],
) -> None:
    """The lid opens while a check is reconnecting in vain: a command that came meanwhile does not
    take that failure for its own, it reconnects."""
    session, where = site
    session.ensure_live()
    where.cut()
    failed: list[BaseException] = []

    def first() -> None:
        try:
            session.ensure_live()
        except LinkDown as error:
            failed.append(error)

    checking = threading.Thread(target=first)
    checking.start()
    deadline = time.monotonic() + 10
    while len(where.links) < 2:  # the first check is reconnecting, to a silent peer
        assert time.monotonic() < deadline
        time.sleep(0.01)
    where.down = False
    session.ensure_live()  # waits for the first check, then reconnects
    checking.join(10)
    assert len(failed) == 1 and session.is_connected and len(where.links) == 3


# ---- commands over the tunnel's session (exec_in_tunnel): no second login, no second factor again


class ExecSession:
    """What TunnelService asks of an SshSession to run a command or upload a file, and what it shows."""

    def __init__(self, failure: TunnelError | None = None) -> None:
        self.failure = failure
        self.ran: list[tuple[str, float]] = []
        self.uploaded: dict[str, bytes] = {}
        self.mode, self.connected_at, self.last_failure = None, None, ""

    def exec(self, command: str, timeout: float) -> tuple[int, str, str]:
        if self.failure is not None:
            raise self.failure
        self.ran.append((command, timeout))
        return 3, f"ran {command}\n", "a warning\n"

    def upload(self, local: Path, remote: str) -> None:
        if remote.startswith("/readonly/"):
            raise PermissionError(13, "Permission denied")  # what paramiko's SFTP raises
        self.uploaded[remote] = local.read_bytes()


def test_a_command_runs_on_the_tunnels_session_with_its_status_and_output(runtime: Path) -> None:
    session = ExecSession()
    with serving(session, "exec"):
        assert exec_in_tunnel("m", "milex-agent stop --path ~/milex", 30.0) == (
            3, "ran milex-agent stop --path ~/milex\n", "a warning\n",
        )  # fmt: skip
    assert session.ran == [("milex-agent stop --path ~/milex", 30.0)]


def test_without_a_tunnel_the_caller_opens_its_own_session(runtime: Path) -> None:
    assert exec_in_tunnel("m", "true", 30.0) is None


def test_a_tunnel_that_would_need_a_code_says_so_and_stops(runtime: Path) -> None:
    failure = PromptUnavailable("the server asks 'Verification code:': restart the tunnel from a terminal")
    with (
        serving(ExecSession(failure), "exec") as service,
        pytest.raises(PromptUnavailable, match="Verification"),
    ):
        exec_in_tunnel("m", "true", 30.0)
    assert service.stop.is_set()  # the next command starts the tunnel in the foreground, where it can ask


def test_a_file_is_uploaded_over_the_tunnels_session_and_a_refusal_says_where(
    runtime: Path, tmp_path: Path
) -> None:
    wheel = tmp_path / "milex.whl"
    wheel.write_bytes(b"wheel")
    session = ExecSession()
    with serving(session, "exec"):
        assert upload_in_tunnel("m", wheel, "/tmp/w/milex.whl")
        with pytest.raises(TunnelError, match=r"on m: cannot upload .*milex.whl to /readonly/x: .*denied"):
            upload_in_tunnel("m", wheel, "/readonly/x")
    assert session.uploaded == {"/tmp/w/milex.whl": b"wheel"}
    assert not upload_in_tunnel("m", wheel, "/tmp/w/milex.whl")  # no tunnel: the caller's session


def test_a_machine_shell_uses_the_tunnel_while_it_answers_then_a_session_of_its_own(
    runtime: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = ExecSession()
    opened: list[str] = []

    @contextlib.contextmanager
    def for_machine(machine: Machine) -> Iterator[ExecSession]:
        opened.append(machine.name)
        yield own

    monkeypatch.setattr("milex.machine.ssh.session.SshSession.for_machine", for_machine)
    machine = Machine(name="m", hostname="login", path="~/milex", env_command="", slurm_account="")
    tunnel = ExecSession()
    with machine_shell(machine) as shell:
        with serving(tunnel, "exec"):
            assert shell.exec("hostname", 5.0)[0] == 3
        shell.exec("uptime", 5.0)  # the tunnel is gone: a session of the command's own
        shell.exec("date", 5.0)  # the same one
    assert tunnel.ran == [("hostname", 5.0)]
    assert own.ran == [("uptime", 5.0), ("date", 5.0)] and opened == ["m"]
