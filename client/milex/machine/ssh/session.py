"""One long-lived SSH session to a machine, and byte channels through it to a unix socket over there."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shlex
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import paramiko
from paramiko.common import (
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_FAILED_CONNECT_FAILED,
    OPEN_FAILED_UNKNOWN_CHANNEL_TYPE,
    cMSG_CHANNEL_OPEN,
    cMSG_GLOBAL_REQUEST,
)

from milex.config.file import Machine
from milex.machine.commands import DEFAULT_RELAY
from milex.machine.ssh.auth import (
    Credentials,
    Prompt,
    SshTarget,
    connect_socket,
    handshake,
    resolve_target,
    tty_prompt,
)
from milex.machine.ssh.errors import BackingOff, LinkDown, TunnelError
from milex_common.errors import ConfigError

log = logging.getLogger("milex.machine.ssh.session")

STREAMLOCAL = "direct-streamlocal@openssh.com"
Mode = Literal["streamlocal", "relay"]
# A server that is there answers a keepalive within this, even behind a busy channel; past it, the link
# is taken for down (a closed lid, a change of network: TCP itself would take ~15 minutes to say so).
PROBE_DEADLINE = 4.0
# The longest a new connection may take to reach the server and hear its SSH banner (prompts, key
# exchange and authentication come after, with their own time).
LINK_DEADLINE = 5.0
FRESH = 1.0  # a connection heard from this recently is not probed again (a check, then its channel)


@dataclass
class ChannelBackoff:
    """After each failure, refuse new attempts for a delay that doubles up to `cap`; a success resets it."""

    base: float = 0.25
    cap: float = 15.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    not_before: float = field(default=0.0, repr=False)

    def failed(self) -> float:
        delay: float = min(self.cap, self.base * 2.0**self.failures)
        self.failures += 1
        self.not_before = self.clock() + delay
        return delay

    def succeeded(self) -> None:
        self.failures, self.not_before = 0, 0.0

    def wait_left(self) -> float:
        return max(0.0, self.not_before - self.clock())


def streamlocal_open_message(
    chanid: int, window_size: int, max_packet_size: int, path: str
) -> paramiko.Message:
    """SSH_MSG_CHANNEL_OPEN for OpenSSH's direct-streamlocal (PROTOCOL, section 2.4)."""
    message = paramiko.Message()
    message.add_byte(cMSG_CHANNEL_OPEN)
    message.add_string(STREAMLOCAL)
    message.add_int(chanid)
    message.add_int(window_size)
    message.add_int(max_packet_size)
    message.add_string(path)
    message.add_string("")  # reserved
    message.add_int(0)  # reserved
    return message


def open_direct_streamlocal(transport: paramiko.Transport, path: str, timeout: float) -> paramiko.Channel:
    """A channel to unix socket `path` on the server.

    Paramiko has no API for this channel kind, so this is `Transport.open_channel` (paramiko 3 to 5)
    with our own payload: the same lock, channel registration and wait; tests/unit checks that
    the private members it relies on still exist. A refusal raises paramiko.ChannelException.
    """
    if not transport.is_active():
        raise paramiko.SSHException("SSH session not active")
    window, packet = transport.default_window_size, transport.default_max_packet_size
    with transport.lock:
        chanid = transport._next_channel()
        channel = paramiko.Channel(chanid)
        transport._channels.put(chanid, channel)
        transport.channel_events[chanid] = event = threading.Event()
        transport.channels_seen[chanid] = True
        channel._set_transport(transport)
        channel._set_window(window, packet)
    transport._send_user_message(streamlocal_open_message(chanid, window, packet, path))
    deadline = time.monotonic() + timeout
    while not event.wait(0.1):
        if not transport.is_active():
            raise transport.get_exception() or paramiko.SSHException("Unable to open channel.")
        if time.monotonic() > deadline:
            raise paramiko.SSHException("Timeout opening channel.")
    # On failure paramiko drops the channel from its table and keeps a ChannelException for us.
    if transport._channels.get(chanid) is None:
        raise transport.get_exception() or paramiko.SSHException("Unable to open channel.")
    return channel


def keepalive_answered(transport: paramiko.Transport, deadline: float) -> bool:
    """Whether the server answers a keepalive within `deadline` seconds: the global request OpenSSH's
    ServerAliveInterval sends (`keepalive@openssh.com`, want-reply), which servers refuse; any answer
    proves the link. Paramiko's `global_request` waits without a deadline, hence this: the same message
    and event (tests/unit/test_link_check.py runs it against a paramiko server). One at a time."""
    if not transport.is_active():
        return False
    answered = threading.Event()
    transport.completion_event = answered  # set by paramiko on REQUEST_SUCCESS and REQUEST_FAILURE
    message = paramiko.Message()
    message.add_byte(cMSG_GLOBAL_REQUEST)
    message.add_string("keepalive@openssh.com")
    message.add_boolean(True)
    until = time.monotonic() + deadline
    try:
        transport._send_user_message(message)
    except (paramiko.SSHException, EOFError, OSError):
        return False
    while not answered.wait(0.1):
        if not transport.is_active() or time.monotonic() > until:
            return False
    return True


def relay_command(path: str, template: str = DEFAULT_RELAY, env_command: str = "") -> str:
    """The remote command that pipes its stdin/stdout to socket `path` (`{socket}` in `template`)."""
    quoted = shlex.quote(path)
    relay = template.replace("{socket}", quoted) if "{socket}" in template else f"{template} {quoted}"
    script = f"{env_command} && exec {relay}" if env_command else f"exec {relay}"
    return f"bash -lc {shlex.quote(script)}"


class SshSession:
    """A paramiko connection to one machine, reconnected on next use after it drops.

    `prompt` asks for passphrases and keyboard-interactive answers; passphrases and passwords are
    kept for reconnections (one-time codes never are: see auth.reusable_answer).
    `relay` and `env_command` build the fallback command when the server forbids stream-local
    forwarding. `on_connect` runs after each (re)connection, e.g. to start the remote agent.
    `jump_of` names the destination this session is a jump host of (for messages).
    """

    def __init__(
        self,
        hostname: str,
        username: str | None = None,
        key_path: str | None = None,
        port: int | None = None,
        *,
        prompt: Prompt = tty_prompt,
        relay: str = DEFAULT_RELAY,
        env_command: str = "",
        ssh_config: Path | None = None,
        timeout: float = 15.0,
        jump: str | None = None,
        credentials: Credentials | None = None,
        on_connect: Callable[[SshSession], None] | None = None,
        jump_of: str = "",
    ) -> None:
        target = resolve_target(hostname, username, key_path, port, ssh_config)
        self._jump_spec = target.proxy_jump if jump is None else (jump or None)
        self.target: SshTarget = dataclasses.replace(target, jump_of=jump_of, through=self._jump_spec or "")
        self.credentials = credentials or Credentials(prompt)
        self.relay, self.env_command, self.timeout = relay, env_command, timeout
        self.on_connect = on_connect
        self.mode: Mode | None = None
        self.connected_at: float | None = None
        self.backoff = ChannelBackoff()
        self.last_failure = ""  # why the last channel could not be opened; "" once one is
        self.alive_at = 0.0  # when the server last proved the connection alive (time.monotonic())
        self._ssh_config = ssh_config
        self._jump: SshSession | None = None
        self._transport: paramiko.Transport | None = None
        self._lock = threading.RLock()

    @classmethod
    def for_machine(
        cls,
        machine: Machine,
        *,
        relay: str = DEFAULT_RELAY,
        on_connect: Callable[[SshSession], None] | None = None,
    ) -> SshSession:
        if not machine.hostname:
            raise ConfigError(
                f"machine {machine.name!r} has no hostname: it is local, there is nothing to tunnel."
            )
        return cls(
            machine.hostname, machine.username, machine.key_path, machine.port,
            env_command=machine.env_command, relay=relay, on_connect=on_connect,
        )  # fmt: skip

    @property
    def is_connected(self) -> bool:
        transport = self._transport
        return transport is not None and transport.is_active() and transport.is_authenticated()

    def connect(self) -> paramiko.Transport:
        """The live transport: the current one, or a new connection (host key checked, authenticated)."""
        with self._lock:
            if self.is_connected and self._transport is not None:
                return self._transport
            self._close_transport()
            transport = None
            try:
                transport = paramiko.Transport(self._socket())
                transport.banner_timeout = LINK_DEADLINE
                handshake(transport, self.target, self.credentials, self.timeout)
                self._server_nodelay(transport)
            except BaseException as error:
                if transport is not None:
                    transport.close()
                if transport is not None and not transport.remote_version and isinstance(error, TunnelError):
                    raise LinkDown(f"{self.target} sent no SSH banner within {LINK_DEADLINE:.0f} s") from None
                if isinstance(error, (paramiko.SSHException, EOFError, OSError)):
                    raise TunnelError(f"SSH connection to {self.target} failed: {error}") from None
                raise
            self._transport, self.connected_at = transport, time.time()
            self.alive_at = time.monotonic()
            log.info("connected to %s", self.target)
            if self.on_connect:
                self.on_connect(self)
            return transport

    def _server_nodelay(self, transport: paramiko.Transport) -> None:
        """Make sshd set TCP_NODELAY on its side too: it does so only when the connection's first command
        runs on a terminal. Measured without it: replies written in pieces (the ZeroMQ greeting, large
        messages) stall about 45 ms on Nagle and delayed ACKs."""
        try:
            with transport.open_session(timeout=self.timeout) as channel:
                channel.get_pty()
                channel.exec_command("true")
        except paramiko.SSHException as refusal:  # e.g. PermitTTY no: slower, still correct
            log.warning("%s gives no terminal (%s): some replies may lag by ~45 ms", self.target, refusal)

    def _socket(self) -> socket.socket | paramiko.Channel | paramiko.ProxyCommand:
        if not self._jump_spec:
            return connect_socket(
                self.target, min(self.timeout, LINK_DEADLINE), reached_before=self.connected_at is not None
            )
        hops, _, last = self._jump_spec.rpartition(",")  # `a,b`: reach b through a, then us through b
        user, _, host = last.rpartition("@")
        host, _, port = host.partition(":")
        self._jump = self._jump or SshSession(
            host, user or None, None, int(port) if port else None, ssh_config=self._ssh_config,
            timeout=self.timeout, jump=hops, credentials=self.credentials,
            jump_of=self.target.jump_of or self.target.alias,
        )  # fmt: skip
        destination = (self.target.hostname, self.target.port)
        transport = self._jump.connect()
        try:
            return transport.open_channel("direct-tcpip", destination, ("127.0.0.1", 0), timeout=self.timeout)
        except paramiko.SSHException as error:  # refused (ChannelException) or no answer in time
            reason = error.text if isinstance(error, paramiko.ChannelException) else str(error)
            where = f"the {self.target.label}" if self.target.jump_of else str(self.target)
            raise TunnelError(
                f"the {self._jump.target.label} cannot reach {where}: {reason}. Check that "
                f"{self.target.hostname} port {self.target.port} is right (Host {self.target.alias} in "
                f"~/.ssh/config, or the Milex configuration) and up, as seen from {self._jump.target.alias}."
            ) from None

    def ensure_live(self, fresh: float = 0.0) -> None:
        """Make sure the connection answers: the current one if the server answers a keepalive within
        PROBE_DEADLINE (or proved alive in the last `fresh` seconds), else a new one (on_connect runs).
        LinkDown, within PROBE_DEADLINE + LINK_DEADLINE, when the machine cannot be reached. A caller
        that waited for another's check takes its success, not its failure: the link may have come
        back meanwhile, and the next command must then reconnect."""
        asked = time.monotonic()
        with self._lock:
            if self.is_connected and self.alive_at >= asked - fresh:
                return
            try:
                self._ensure_live()
            except LinkDown as error:
                self.last_failure = str(error)
                raise

    def _ensure_live(self) -> None:
        transport = self._transport
        if transport is not None and self.is_connected:
            if keepalive_answered(transport, PROBE_DEADLINE):
                self.alive_at = time.monotonic()
                return
            log.warning("%s did not answer within %.0f s: reconnecting", self.target, PROBE_DEADLINE)
        self.close()  # the connection and its jump hosts' (the silence may be theirs): all replaced
        self.connect()
        self.backoff.succeeded()  # a new connection, the agent started again: no reason left to wait
        self.last_failure = ""

    def open_streamlocal(self, remote_path: str) -> paramiko.Channel:
        """A byte channel to unix socket `remote_path`: stream-local forwarding, else the relay command.

        After a failure, attempts are refused for a while (see ChannelBackoff) rather than hammer the server.
        """
        with self._lock:
            wait = self.backoff.wait_left()
            if wait:
                raise BackingOff(
                    f"{self.target}: the last channel to {remote_path} failed; retrying in {wait:.1f} s."
                )
            try:
                self.ensure_live(fresh=FRESH)
                channel = self._open_retrying(remote_path)
            except TunnelError as error:
                self.backoff.failed()
                self.last_failure = str(error)
                raise
            self.backoff.succeeded()
            self.last_failure = ""
            return channel

    def _open_retrying(self, remote_path: str) -> paramiko.Channel:
        for attempt in (1, 2):
            transport = self.connect()
            try:
                return self._open(transport, remote_path)
            except (paramiko.SSHException, EOFError, OSError) as error:
                # A connection that died (a server restart) or went silent since its last check (a
                # laptop asleep: an open unanswered within PROBE_DEADLINE, which sshd answers at once)
                # is replaced once.
                if isinstance(error, paramiko.ChannelException) or attempt == 2:
                    raise TunnelError(
                        f"{self.target}: cannot open a channel to {remote_path}: {error}"
                    ) from None
                log.info("connection to %s lost (%s); reconnecting", self.target, error)
                self.close()
        raise AssertionError("unreachable")

    def _open(self, transport: paramiko.Transport, path: str) -> paramiko.Channel:
        if self.mode != "relay":
            try:
                channel = open_direct_streamlocal(transport, path, PROBE_DEADLINE)
            except paramiko.ChannelException as refusal:
                self._refused(refusal, path)
                log.info("%s forbids stream-local forwarding; relaying through a command", self.target)
                self.mode = "relay"
            else:
                self.mode = "streamlocal"
                return channel
        channel = transport.open_session(timeout=PROBE_DEADLINE)
        channel.exec_command(relay_command(path, self.relay, self.env_command))
        return channel

    def _refused(self, refusal: paramiko.ChannelException, path: str) -> None:
        """Raise unless `refusal` means the server forbids stream-local forwarding."""
        if refusal.code in (OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED, OPEN_FAILED_UNKNOWN_CHANNEL_TYPE):
            return
        # OpenSSH (9.2 at least) refuses a forbidden forwarding with the code of a failed connect, so
        # look: a socket that exists, yet was never reachable this way, means forwarding is off.
        exists = self.exec(f"test -S {shlex.quote(path)}")[0] == 0
        if refusal.code != OPEN_FAILED_CONNECT_FAILED or self.mode == "streamlocal" or not exists:
            problem = "refuses connections" if exists else "does not exist"
            raise TunnelError(f"{self.target}: the socket {path} {problem}: is the agent running there?")

    def upload(self, local: Path, remote: str) -> None:
        """Copy the file `local` to `remote` over SFTP on this session."""
        sftp = paramiko.SFTPClient.from_transport(self.connect())
        if sftp is None:
            raise TunnelError(f"{self.target} refused an SFTP session")
        with sftp:
            sftp.put(str(local), remote)

    def exec(self, command: str, timeout: float = 120.0) -> tuple[int, str, str]:
        """Run `command` on the machine: its exit status, stdout and stderr."""
        transport = self.connect()
        try:
            channel = transport.open_session(timeout=self.timeout)
        except (paramiko.SSHException, EOFError, OSError) as error:  # not a thread's unhandled exception
            raise TunnelError(f"{self.target}: cannot run {command!r}: {error}") from None
        with channel:
            channel.settimeout(timeout)
            channel.exec_command(command)
            channel.shutdown_write()
            errors: list[bytes] = []

            def read_stderr() -> None:  # beside stdout: a full stderr window would stall the command
                with contextlib.suppress(OSError):
                    errors.append(channel.makefile_stderr("rb").read())

            reader = threading.Thread(target=read_stderr)
            reader.start()
            try:
                out = channel.makefile("rb").read()
                reader.join(timeout)
            except TimeoutError:
                raise TunnelError(f"{self.target}: {command!r} did not finish within {timeout} s.") from None
            status = channel.recv_exit_status()
        return status, out.decode(errors="replace"), b"".join(errors).decode(errors="replace")

    def _close_transport(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def close(self) -> None:
        with self._lock:
            self._close_transport()
            if self._jump is not None:
                self._jump.close()
                self._jump = None

    def __enter__(self) -> SshSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
