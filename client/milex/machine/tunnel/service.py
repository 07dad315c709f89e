"""The per-machine background process that keeps one SSH session up and serves a local socket through it."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import msgspec
import paramiko
import zmq

from milex.config.file import load_config
from milex.machine.commands import DEFAULT_RELAY
from milex.machine.settings import client_version
from milex.machine.ssh.errors import BackingOff, PromptUnavailable, TunnelError
from milex.machine.ssh.session import FRESH, SshSession
from milex.machine.tunnel.broker import Broker
from milex.machine.tunnel.control import DEFAULT_IDLE, TunnelFiles, TunnelStatus, stopped_for_prompt
from milex_common.files import private_directory, take_lock

log = logging.getLogger("milex.machine.ssh.session")

CHUNK = 256 * 1024
ACCEPT_POLL = 0.5
RELAY_EXIT_WAIT = 5.0  # after a relay's output ends, the longest wait for its exit status
REQUEST_WAIT = 10.0  # a client of the exec socket sends its request as it connects


class TunnelService:
    """Accept local connections and pipe each through its own channel of `session`, until idle or stopped."""

    def __init__(
        self, session: SshSession, agent: RemoteAgent, status: TunnelStatus, files: TunnelFiles, idle: float
    ) -> None:
        self.session, self.agent, self.status, self.files, self.idle = session, agent, status, files, idle
        self.stop = threading.Event()
        self.active = 0
        self.last_activity = time.monotonic()
        self._lock = threading.Lock()
        self.broker: Broker | None = None  # set by `run`: its connection is one of `active`
        self.stopped_for = ""  # the prompt that stopped it (see `_stop_for`)
        self._checking = False

    def save_status(self) -> None:
        with self._lock:
            self.status.mode, self.status.connected_at = self.session.mode, self.session.connected_at
            self.status.node, self.status.remote_socket = self.agent.node, self.agent.socket
            if not self.session.last_failure:
                self.status.link_error_at = None
            elif not self.status.link_error:
                self.status.link_error_at = time.time()  # since when the link fails, whatever the errors
            self.status.link_error = self.session.last_failure
            scratch = self.files.path("json.tmp")
            scratch.write_bytes(msgspec.json.encode(self.status))
            scratch.replace(self.files.path("json"))  # readers never see half a file

    def serve(self, listener: socket.socket) -> None:
        listener.settimeout(ACCEPT_POLL)
        while not self.stop.is_set():
            if self._idle():
                log.info("no connection for %.0f s: stopping", self.idle)
                return
            try:
                local, _ = listener.accept()
            except TimeoutError:
                continue
            local.settimeout(None)
            with self._lock:
                self.active += 1
            # Opening the channel may mean reconnecting: done in the connection's thread, so that
            # accepting, idling and stopping never wait for the network.
            threading.Thread(target=self._connect, args=(local,), daemon=True).start()

    def _idle(self) -> bool:
        """Whether no client has used the tunnel for `idle` seconds: none connected but the broker's
        own connection, none of its clients waiting for a reply or heard from (a watch's heartbeats
        count) within that time."""
        broker = self.broker
        held, last = (int(broker.connected), broker.last_activity) if broker else (0, 0.0)
        if self.active > held or (broker is not None and broker.busy):
            return False
        return time.monotonic() - max(self.last_activity, last) > self.idle

    def check_meanwhile(self) -> None:
        """A request went through the broker, which asked the link nothing: make sure of it meanwhile
        (a keepalive, unless it answered within FRESH; one check at a time), so that a link that died
        ends the request in seconds (the lost connection fails it), not after the client's timeout."""
        with self._lock:
            if self._checking:
                return
            self._checking = True
        threading.Thread(target=self._check_quietly, daemon=True).start()

    def checked(self) -> bool:
        """Whether no check of the link is under way (the broker waits for it to say why it lost its
        connection)."""
        return not self._checking

    def why_lost(self) -> str:
        """Why the broker's connection went, when the link is what failed or the tunnel stopped for a
        prompt: for its requests in flight."""
        if self.stopped_for:
            return stopped_for_prompt(self.status.machine, self.stopped_for)
        failure = self.session.last_failure
        if not failure:
            return ""
        return (
            f"the link to {self.status.machine} is down ({failure.rstrip('.')}); the request got no "
            "answer. Once the network is back, the next command reconnects by itself "
            f"(`milex tunnel status --machine {self.status.machine}` shows the link)."
        )

    def _check_quietly(self) -> None:
        try:
            self.session.ensure_live(fresh=FRESH)
        except PromptUnavailable as error:
            self._stop_for(error)
        except TunnelError as error:  # the broker's connection went with the link: its clients know
            log.warning("link check: %s", error)
        finally:  # the status first: a command told of the failure must find it there
            self._save_if_changed()
            self._checking = False

    def serve_checks(self, listener: socket.socket) -> None:
        """Answer each connection to the check socket with one JSON line: whether the link answers
        (`SshSession.ensure_live`: a keepalive, or a new connection), else the error's kind and message.
        Commands ask before they rely on the tunnel, so that a dead link fails them in seconds."""
        self._serve_requests(listener, self._check)

    def serve_commands(self, listener: socket.socket) -> None:
        """Run the command each connection to the exec socket sends (one JSON line, `command` and
        `timeout`; or `upload` and `to`, a file to copy) on this session, and answer its status and
        output (or the error) as one JSON line:
        `milex agent stop` and the like run on the connection the user authenticated once, where a
        new one would ask every hop's second factor again."""
        self._serve_requests(listener, self._exec)

    def _serve_requests(self, listener: socket.socket, handle: Callable[[socket.socket], None]) -> None:
        listener.settimeout(ACCEPT_POLL)
        while not self.stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            with self._lock:
                self.active += 1
            threading.Thread(target=handle, args=(client,), daemon=True).start()

    def _exec(self, client: socket.socket) -> None:
        answer: dict[str, object] = {
            "kind": "TunnelError",
            "message": "the command failed: see the tunnel's log",
        }
        try:
            client.settimeout(REQUEST_WAIT)
            answer = self._run(json.loads(client.makefile("rb").readline()))
        except TunnelError as error:
            answer = {"kind": type(error).__name__, "message": str(error)}
            if isinstance(error, PromptUnavailable):
                self._stop_for(error)
        except (OSError, ValueError, KeyError, TypeError) as error:
            answer = {"kind": "TunnelError", "message": f"a request the tunnel does not understand: {error}"}
        finally:
            self._save_if_changed()
            with contextlib.suppress(OSError):
                client.settimeout(None)
                client.sendall(json.dumps(answer).encode() + b"\n")
            self._finished(client)

    def _run(self, request: dict[str, Any]) -> dict[str, object]:
        """Do what an exec request asks on this session, a command run or a file of this laptop
        uploaded; its exit status and output."""
        if "upload" not in request:
            code, out, err = self.session.exec(str(request["command"]), timeout=float(request["timeout"]))
            return {"code": code, "out": out, "err": err}
        local, remote = Path(request["upload"]), str(request["to"])
        try:
            self.session.upload(local, remote)
        except OSError as error:  # SFTP's refusals too (IOError)
            return {"code": 1, "out": "", "err": f"cannot upload {local} to {remote}: {error}"}
        return {"code": 0, "out": "", "err": ""}

    def _check(self, client: socket.socket) -> None:
        answer: dict[str, object] = {
            "up": False,
            "kind": "TunnelError",
            "message": "the check failed: see its log",
        }
        try:
            self.session.ensure_live()
            answer = {"up": True}
        except TunnelError as error:
            answer = {"up": False, "kind": type(error).__name__, "message": str(error)}
            if isinstance(error, PromptUnavailable):
                self._stop_for(error)
        finally:
            self._save_if_changed()
            with contextlib.suppress(OSError):
                client.sendall(json.dumps(answer).encode() + b"\n")
            self._finished(client)

    def _save_if_changed(self) -> None:
        shown = (self.status.mode, self.status.connected_at, self.status.link_error, self.status.node)
        if (
            self.session.mode,
            self.session.connected_at,
            self.session.last_failure,
            self.agent.node,
        ) != shown:
            self.save_status()

    def _stop_for(self, error: PromptUnavailable) -> None:
        """Detached, we cannot ask: stop, so that the CLI's next start_tunnel asks in the foreground;
        the record tells the command waiting on this tunnel why it went (control.tunnel_gone)."""
        log.error("%s; stopping", error)
        self.files.path("stopped").write_text(str(error))
        self.stopped_for = str(error)
        self.stop.set()

    def _connect(self, local: socket.socket) -> None:
        try:
            channel = self._open_channel()
        finally:  # the status shows how the link went before any byte passes
            self._save_if_changed()
        if channel is None:
            return self._finished(local)
        relay_ended = functools.partial(self._relay_ended, channel) if self.session.mode == "relay" else None
        splice(local, channel, self._finished, remote_ended=relay_ended)

    def _open_channel(self) -> paramiko.Channel | None:
        """A channel to the remote socket; None, logged, when there is none to be had."""
        try:
            return self.session.open_streamlocal(self.agent.socket)
        except PromptUnavailable as error:
            self._stop_for(error)
            return None
        except TunnelError as error:
            return self._restart_remote_and_retry(error)

    def _relay_ended(self, channel: paramiko.Channel) -> None:
        """The relay command ended its output: log its complaints and, if it failed (it could not reach
        the socket: the agent is gone), start the remote side again, or back off when that fails too.
        Done before the local client sees the end, so that the reconnection it makes at once already
        finds the agent (or the back-off) in place; and only once the exit status has come, which
        OpenSSH may send just after the end of the output."""
        if not channel.status_event.wait(RELAY_EXIT_WAIT):
            log.warning("relay: no exit status %.0f s after its output ended", RELAY_EXIT_WAIT)
        if channel.recv_stderr_ready():
            log.warning("relay: %s", channel.recv_stderr(CHUNK).decode(errors="replace").strip())
        if channel.exit_status in (-1, 0):
            return
        failure = TunnelError(f"the relay exited {channel.exit_status}: the agent's socket is gone")
        if not self._restart_remote(failure):
            self.session.backoff.failed()  # no respawn of the relay at once

    def _restart_remote_and_retry(self, error: TunnelError) -> paramiko.Channel | None:
        """The socket is gone (the agent died?): start the remote side again and try once more; None,
        logged, when that does not help either."""
        if not self._restart_remote(error):
            return None
        try:
            return self.session.open_streamlocal(self.agent.socket)
        except TunnelError as again:
            log.warning("connection refused: %s (after restarting the remote side: %s)", error, again)
            return None

    def _restart_remote(self, error: TunnelError) -> bool:
        """Run the on-connect command (which starts the agent) after `error`; whether it ran. Not when
        the SSH connection is what failed, or while backing off after a failure: that would reconnect
        at each attempt."""
        if self.agent.command is None or not self.session.is_connected or isinstance(error, BackingOff):
            log.warning("connection refused: %s", error)
            return False
        try:
            self.agent.on_connect(self.session)
        except TunnelError as again:
            log.warning("connection refused: %s (restarting the remote side failed: %s)", error, again)
            return False
        self.session.backoff.succeeded()  # the remote side is new: no reason to wait
        return True

    def _finished(self, local: socket.socket | None = None) -> None:
        if local is not None:
            local.close()
        with self._lock:
            self.active -= 1
            self.last_activity = time.monotonic()


def splice(
    local: socket.socket,
    channel: paramiko.Channel,
    done: Callable[[], None],
    *,
    remote_ended: Callable[[], None] | None = None,
) -> None:
    """Pipe bytes both ways in two threads; EOF passes on as a half-close; both ends close when both end.

    `remote_ended` runs when the channel's output ends, before the half-close reaches the local side.
    """
    remaining = [2]
    lock = threading.Lock()

    def pump(read: Callable[[int], bytes], write: Callable[[bytes], object], eof: Callable[[], None]) -> None:
        try:
            while data := read(CHUNK):
                write(data)
            eof()
        except OSError:  # one side is gone: wake the other thread's blocked read
            channel.close()
            with contextlib.suppress(OSError):
                local.shutdown(socket.SHUT_RDWR)
        with lock:
            remaining[0] -= 1
            if remaining[0]:
                return
        channel.close()
        local.close()
        done()

    def downstream_eof() -> None:
        if remote_ended is not None:
            remote_ended()
        local.shutdown(socket.SHUT_WR)

    for args in (
        (local.recv, channel.sendall, channel.shutdown_write),
        (channel.recv, local.sendall, downstream_eof),
    ):
        threading.Thread(target=pump, args=args, daemon=True).start()


def _listen(path: Path) -> socket.socket:
    private_directory(path.parent)
    path.unlink(missing_ok=True)  # a dead service's socket: we hold the lock, it is not a live one
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)  # the socket is born closed to others: no window where they could connect
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    listener.listen(128)
    return listener


def _take_lock(files: TunnelFiles) -> int:
    """Hold the machine's lock for our whole life: one tunnel per machine."""
    private_directory(files.directory)
    lock = take_lock(files.path("lock"))
    if lock is None:
        raise TunnelError(
            f"another tunnel to {files.machine} is starting; see `milex tunnel status`."
        ) from None
    files.path("pid").write_text(f"{os.getpid()}\n")
    return lock


def _detach(log_path: Path) -> None:
    """Leave the terminal's session, so that closing the terminal does not stop us; output goes to the log."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    for fd, source in ((0, null), (1, out), (2, out)):
        os.dup2(source, fd)


def _no_prompt(text: str, echo: bool) -> str:
    raise PromptUnavailable(f"the server asks {text.strip()!r}: restart the tunnel from a terminal")


class RemoteAgent:
    """Where the agent listens and on which login node, as the on-connect command (`milex-agent start`)
    said at the last (re)connection: behind a round-robin name, each connection may land on another
    node. A socket given on the command line stays; the node is then the one `hostname` names."""

    def __init__(self, command: str | None, socket: str = "") -> None:
        self.command, self.fixed_socket = command, socket
        self.socket, self.node = socket, ""

    def on_connect(self, session: SshSession) -> None:
        if self.command is None:
            code, out, _ = session.exec("hostname")
            self.node = out.strip() if code == 0 else ""
            return
        code, out, err = session.exec(self.command)
        if code != 0:
            raise TunnelError(
                f"{self.command!r} failed on {session.target} (exit {code}): {(err or out).strip()}"
            )
        lines = [line for line in out.splitlines() if line.strip()]
        try:
            info = json.loads(lines[-1])
            self.socket, self.node = self.fixed_socket or str(info["socket"]), str(info.get("host", ""))
        except (IndexError, ValueError, KeyError, TypeError, AttributeError):
            if self.fixed_socket:
                return
            raise TunnelError(
                "no remote socket given, and the on-connect command printed no agent info "
                f"(JSON with a 'socket'); it printed: {out[-500:]!r}"
            ) from None


def run(
    machine: str, remote_socket: str, local_socket: Path, idle: float, relay: str, on_connect: str | None
) -> int:
    """The service's life: lock, authenticate, listen, say READY, detach, serve, clean up."""
    files = TunnelFiles.of(machine)
    lock: int | None = None
    try:
        lock = _take_lock(files)
        files.path("stopped").unlink(missing_ok=True)  # an earlier service's
        logging.basicConfig(filename=files.path("log"), level=logging.INFO, format="%(asctime)s %(message)s")
        logging.getLogger("paramiko").setLevel(logging.WARNING)
        # Without a socket path, the agent's own start command says where it listens.
        agent = RemoteAgent(on_connect, remote_socket)
        session = SshSession.for_machine(
            load_config().machine(machine), relay=relay, on_connect=agent.on_connect
        )
        session.connect()
        listener = _listen(local_socket)
        checks = _listen(files.path("check"))
        commands = _listen(files.path("exec"))
        # Its connection to the agent goes through `listener`, a channel like any client's.
        broker = Broker(files.path("zmq"), f"ipc://{local_socket}", client_version=client_version())
    except Exception as error:  # every failure must reach the waiting CLI, as one line
        if lock is not None:
            files.path("pid").unlink(missing_ok=True)
            os.close(lock)  # released before answering: the CLI then sees the tunnel down, not starting
        print("ERROR " + json.dumps({"kind": type(error).__name__, "message": str(error)}), flush=True)
        return 1
    status = TunnelStatus(machine=machine, state="up", pid=os.getpid(), since=time.time(),
                          host=str(session.target), local_socket=str(local_socket),
                          broker_socket=str(broker.local))  # fmt: skip
    service = TunnelService(session, agent, status, files, idle)
    service.broker, broker.on_request = broker, service.check_meanwhile
    broker.settled, broker.why_lost = service.checked, service.why_lost
    service.save_status()
    print(f"READY {os.getpid()}", flush=True)
    _detach(files.path("log"))
    session.credentials.prompt = _no_prompt
    signal.signal(signal.SIGTERM, lambda *_: service.stop.set())
    threading.Thread(target=service.serve_checks, args=(checks,), daemon=True).start()
    threading.Thread(target=service.serve_commands, args=(commands,), daemon=True).start()
    brokering = threading.Thread(target=broker.serve, daemon=True)
    brokering.start()
    try:
        service.serve(listener)
    finally:
        broker.stop.set()
        brokering.join(5.0)
        if not brokering.is_alive():  # its last answers (a stop's reason) sent before the process ends
            zmq.Context.instance().term()
        for served in (listener, checks, commands):
            served.close()
        for path in (
            local_socket,
            files.path("check"),
            files.path("exec"),
            files.path("zmq"),
            files.path("json"),
            files.path("pid"),
        ):
            path.unlink(missing_ok=True)
        os.close(lock)  # down from here on, even while the SSH session is still closing
        session.close()
        log.info("stopped")
    return 0


@click.command()
@click.option("--machine", required=True, help="Machine name in the Milex configuration.")
@click.option(
    "--remote-socket",
    default="",
    help="The agent's unix socket there (absolute); default: from --on-connect.",
)
@click.option(
    "--local-socket", type=click.Path(path_type=Path), help="Default: NAME.sock in the runtime dir."
)
@click.option("--idle", type=float, default=DEFAULT_IDLE, show_default=True, help="Stop after idle seconds.")
@click.option("--relay", default=DEFAULT_RELAY, show_default=True, help="Fallback relay command ({socket}).")
@click.option("--on-connect", help="Remote command to run after each SSH (re)connection.")
def main(
    machine: str,
    remote_socket: str,
    local_socket: Path | None,
    idle: float,
    relay: str,
    on_connect: str | None,
) -> None:
    # Closing the terminal must not kill us, not even in the instant between READY and detaching.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Fork first, while there are no threads: the CLI's child exits at once (nothing left for it to
    # reap) and the grandchild keeps the terminal for prompts and the stdout pipe for READY.
    if os.fork() > 0:
        os._exit(0)
    local_socket = local_socket or TunnelFiles.of(machine).path("sock")
    sys.exit(run(machine, remote_socket, local_socket.absolute(), idle, relay, on_connect))


if __name__ == "__main__":
    main()
