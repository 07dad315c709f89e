"""Starting, stopping and inspecting a machine's background tunnel (`milex tunnel up|down|status`)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import msgspec

from milex.machine.ssh.errors import ERRORS, LinkDown, PromptUnavailable, TunnelError, TunnelStopping
from milex_common.files import is_locked, private_directory, take_lock

DEFAULT_IDLE = 30 * 60.0
STARTING_WAIT = 120.0
# The longest a check of the link may take: a keepalive, or a new connection and the agent's start
# command run through it (a dead link fails it within seconds: tunnel.PROBE_DEADLINE + LINK_DEADLINE).
CHECK_WAIT = 180.0
UPLOAD_WAIT = 3600.0  # an upload through the tunnel: a container image of a few GB over a slow link


class TunnelStatus(msgspec.Struct, kw_only=True):
    """What `milex tunnel status` shows; a running service keeps it in `NAME.json`."""

    machine: str
    state: Literal["down", "starting", "up"] = "down"
    pid: int | None = None
    since: float | None = None
    host: str = ""
    node: str = ""  # the login node the connection landed on (its hostname), once known
    mode: str | None = None  # "streamlocal" or "relay", once the first connection has gone through
    local_socket: str = ""
    # The broker's socket (tunnel/broker.py): where clients connect, one round trip a request; ""
    # for a tunnel of an earlier release, whose clients connect to `local_socket`.
    broker_socket: str = ""
    remote_socket: str = ""
    connected_at: float | None = None
    link_error: str = ""  # why the last attempt to reach the remote side failed; "" once one succeeds
    link_error_at: float | None = None

    @property
    def up(self) -> bool:
        return self.state == "up"


class TunnelFiles(msgspec.Struct, frozen=True):
    """Where a machine's tunnel keeps socket, pid, lock, status and log: `$XDG_RUNTIME_DIR/milex` or /tmp."""

    machine: str
    directory: Path

    @classmethod
    def of(cls, machine: str) -> TunnelFiles:
        base = os.environ.get("XDG_RUNTIME_DIR")
        uid_dir = Path(f"/tmp/milex-{os.getuid()}")
        return cls(machine, Path(base) / "milex" if base and os.path.isdir(base) else uid_dir)

    def path(self, suffix: str) -> Path:
        return self.directory / f"{self.machine}.{suffix}"


def _locked(files: TunnelFiles) -> bool:
    """Whether a live service holds the machine's lock."""
    return is_locked(files.path("lock"))


def tunnel_status(machine: str) -> TunnelStatus:
    files = TunnelFiles.of(machine)
    if not _locked(files):
        return TunnelStatus(machine=machine)
    try:
        return msgspec.json.decode(files.path("json").read_bytes(), type=TunnelStatus)
    except (OSError, msgspec.DecodeError):  # still authenticating: no status written yet
        with contextlib.suppress(OSError, ValueError):
            return TunnelStatus(machine=machine, state="starting", pid=int(files.path("pid").read_text()))
        return TunnelStatus(machine=machine, state="starting")


def tunnel_gone(machine: str) -> str:
    """Why the machine's tunnel stopped by itself, as advice, once it is down: it needed a passphrase or
    a code for a reconnection and had no one to ask. "" while it is up, or when it left no word."""
    files = TunnelFiles.of(machine)
    try:
        reason = files.path("stopped").read_text()
    except OSError:
        return ""
    if _locked(files):
        return ""
    return stopped_for_prompt(machine, reason)


def stopped_for_prompt(machine: str, reason: str) -> str:
    """What a command is told of a tunnel that stopped because a reconnection asked what no one
    could type (`reason`: the prompt), and what to do."""
    return (
        f"the tunnel to {machine} stopped: {reason.strip()}. Open it again from a terminal with "
        f"`milex tunnel up --machine {machine}`: it asks there, once, and later commands use it."
    )


def start_tunnel(
    machine: str,
    remote_socket: str,
    *,
    local_socket: Path | None = None,
    idle: float = DEFAULT_IDLE,
    relay: str | None = None,
    on_connect: str | None = None,
) -> TunnelStatus:
    """The machine's tunnel to `remote_socket`, started if needed (prompting on the terminal).

    Connect ZeroMQ to `"ipc://" + status.broker_socket` (or `status.local_socket`, a channel each).
    `on_connect` is a remote command run after each SSH (re)connection, e.g. to start the agent
    without authenticating a second time.
    """
    if _serves(status := tunnel_status(machine), remote_socket):
        return status
    with _starting(TunnelFiles.of(machine)):
        if _serves(status := tunnel_status(machine), remote_socket):
            return status  # another command started it meanwhile
        stop_tunnel(machine)  # one to another remote socket (the agent moved), or left by a dead command
        return _spawn(machine, remote_socket, local_socket, idle, relay, on_connect)


def _serves(status: TunnelStatus, remote_socket: str) -> bool:
    """Whether the tunnel is up, to `remote_socket` (any, if empty: the agent's, learnt on connect)."""
    return status.up and (not remote_socket or status.remote_socket == remote_socket)


@contextlib.contextmanager
def _starting(files: TunnelFiles) -> Iterator[None]:
    """Held by the command that checks for the machine's tunnel and starts one: commands started
    together (or a watch and a command, after the tunnel died) share one new tunnel, where each
    started its own and all but one failed with "another tunnel is starting"."""
    private_directory(files.directory)
    deadline = time.monotonic() + STARTING_WAIT
    while (lock := take_lock(files.path("start.lock"))) is None:
        if time.monotonic() > deadline:
            raise TunnelError(
                f"another command has been starting the tunnel to {files.machine} for {STARTING_WAIT:.0f} s"
                " (is it asking for a passphrase?); see `milex tunnel status`."
            )
        time.sleep(0.1)
    try:
        yield
    finally:
        os.close(lock)


def _spawn(
    machine: str,
    remote_socket: str,
    local_socket: Path | None,
    idle: float,
    relay: str | None,
    on_connect: str | None,
) -> TunnelStatus:
    """Start the tunnel service and wait for its READY (or its error)."""
    options = {"--machine": machine, "--remote-socket": remote_socket, "--local-socket": local_socket,
               "--idle": idle, "--relay": relay, "--on-connect": on_connect}  # fmt: skip
    import subprocess  # lazy: a command that finds its tunnel up starts none (~2.5 ms of each)

    argv = [sys.executable, "-m", "milex.machine.tunnel.service"]
    argv += [str(word) for option, value in options.items() if value is not None for word in (option, value)]
    # stdin and stderr are inherited, so that passphrase and 2FA prompts reach the user's terminal.
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        word, _, rest = process.stdout.readline().strip().partition(" ")
    if word == "READY":
        return tunnel_status(machine)
    error = json.loads(rest) if word == "ERROR" else {"message": "it exited without a word"}
    log_path = TunnelFiles.of(machine).path("log")
    kind = ERRORS.get(error.get("kind", ""), TunnelError)
    # A passphrase or a code is needed and no one can type it: say where it can be, once.
    advice = (
        f". Open the tunnel from a terminal with `milex tunnel up --machine {machine}`: it asks there, "
        "once, and later commands use it while it stays up."
        if issubclass(kind, PromptUnavailable)
        else ""
    )
    raise kind(f"the tunnel to {machine} did not start: {error['message']} (log: {log_path}){advice}")


def link_down_error(machine: str, reason: str) -> LinkDown:
    """The error a command gets when `machine` cannot be reached: why, and what to do."""
    return LinkDown(
        f"the link to {machine} is down: {reason.rstrip('.')}. Nothing was sent; once the network is "
        "back, the next command reconnects by itself "
        f"(`milex tunnel status --machine {machine}` shows the link)."
    )


def check_link(machine: str) -> None:
    """Have the machine's tunnel make sure its SSH connection answers (or reconnect) before a command
    relies on it; the error at once when it cannot (LinkDown when the machine does not answer;
    TunnelStopping when the tunnel stops before it answers). A tunnel up without a check socket (of an
    older Milex) is left to the command."""
    import socket  # here: a command whose tunnel's broker answers never checks the link (~2 ms)

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as check:
        check.settimeout(CHECK_WAIT)
        try:
            check.connect(str(TunnelFiles.of(machine).path("check")))
        except (FileNotFoundError, ConnectionRefusedError):
            if tunnel_status(machine).up:  # a tunnel of an older Milex: the command finds out by itself
                return
            raise TunnelStopping(f"the tunnel to {machine} stopped before a check of its link") from None
        try:
            line = check.makefile("rb").readline()
        except OSError as error:
            line, reason = b"", str(error)
        else:
            reason = "it closed the check"
    if not line:  # it went as it was asked: stopping, as one that found the link needs a code does
        raise TunnelStopping(f"the tunnel to {machine} did not answer a check of its link: {reason}")
    answer = parse_check(line)
    if answer is not None:
        raise link_down_error(machine, str(answer)) if isinstance(answer, LinkDown) else answer


def parse_check(line: bytes) -> TunnelError | None:
    """A check's answer (one JSON line): None when the link is up, else the error it names."""
    try:
        answer = json.loads(line)
        if answer["up"]:
            return None
        return _error_of(answer)
    except (ValueError, KeyError, TypeError):
        return TunnelError(f"the tunnel's check of its link gave no answer we understand: {line[:200]!r}")


def _error_of(answer: dict[str, str]) -> TunnelError:
    """The error a tunnel's answer names (its kind and message)."""
    return ERRORS.get(answer["kind"], TunnelError)(answer["message"])


def exec_in_tunnel(machine: str, command: str, timeout: float) -> tuple[int, str, str] | None:
    """`command` run over the SSH session of the machine's tunnel (authenticated once, second factors
    included): its exit status, stdout and stderr. None when no tunnel is up (or one of a Milex
    without an exec socket): the caller opens a session of its own."""
    return _ask_exec_socket(machine, {"command": command, "timeout": timeout}, timeout)


def upload_in_tunnel(machine: str, local: Path, remote: str) -> bool:
    """Copy the file `local` to `remote` over the SSH session of the machine's tunnel (the tunnel
    service reads it: it runs here, as us); False when no tunnel is up, TunnelError if it failed."""
    ran = _ask_exec_socket(machine, {"upload": str(local.absolute()), "to": remote}, UPLOAD_WAIT)
    if ran is None:
        return False
    code, _, err = ran
    if code != 0:
        raise TunnelError(f"on {machine}: {err}")
    return True


def _ask_exec_socket(machine: str, request: dict[str, object], timeout: float) -> tuple[int, str, str] | None:
    """The tunnel's answer to `request` on its exec socket (one JSON line each way): an exit status,
    stdout and stderr; None when no tunnel serves one."""
    import socket  # here: only uploads and commands run through the tunnel need it (~2 ms)

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout + CHECK_WAIT)  # the request, after a reconnection at worst
        try:
            connection.connect(str(TunnelFiles.of(machine).path("exec")))
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        try:
            connection.sendall(json.dumps(request).encode() + b"\n")
            line = connection.makefile("rb").readline()
        except OSError as error:
            raise TunnelError(f"the tunnel to {machine} did not answer a command: {error}") from None
    try:
        answer = json.loads(line)
        if "code" in answer:
            return int(answer["code"]), str(answer["out"]), str(answer["err"])
        failure = _error_of(answer)
    except (ValueError, KeyError, TypeError):
        raise TunnelError(f"the tunnel to {machine} gave no answer we understand: {line[:200]!r}") from None
    raise failure


def stop_tunnel(machine: str, timeout: float = 10.0) -> bool:
    """Stop the machine's tunnel (SIGTERM, then SIGKILL); False if none was running."""
    import signal  # lazy: only stopping one needs it

    files = TunnelFiles.of(machine)
    status = tunnel_status(machine)
    if status.pid is None:
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(status.pid, sig)
        deadline = time.monotonic() + timeout
        while _locked(files) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _locked(files):
            break
    served = [Path(status.local_socket or files.path("sock"))] + [
        files.path(name) for name in ("check", "exec", "zmq")
    ]
    for path in (*served, files.path("pid"), files.path("json")):
        path.unlink(missing_ok=True)  # a killed service could not remove its own files
    return True
