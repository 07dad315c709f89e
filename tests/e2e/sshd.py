"""Helpers for the tunnel's end-to-end tests: the test sshd, its login user, and servers run as that user."""

from __future__ import annotations

import os
import pty
import pwd
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("MILEX_SSHD_STATE", "/var/run/milex-test-sshd"))
PORT = int(os.environ.get("MILEX_SSHD_PORT", "2222"))
NO_STREAMLOCAL_PORT = PORT + 1
KBDINT_PORT = PORT + 2
LOGIN = "milex-login"
PASSPHRASE = "correct horse battery staple"
# The remote side runs Debian's python3 as the login user (root's Python is unreadable to it); the
# ZeroMQ server runs in the login user's own venv, which has pyzmq (see `login_venv`).
REMOTE_PYTHON = "/usr/bin/python3"

# The relay a real deployment gets from `milex-agent bridge`, inline: stdin/stdout <-> the socket.
RELAY = (
    REMOTE_PYTHON + " -c 'import os, socket, sys, threading\n"
    "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
    "def up():\n"
    "    while data := os.read(0, 65536): s.sendall(data)\n"
    "    s.shutdown(socket.SHUT_WR)\n"
    "threading.Thread(target=up, daemon=True).start()\n"
    "while data := s.recv(65536): sys.stdout.buffer.write(data); sys.stdout.buffer.flush()\n"
    "' {socket}"
)

# Answers each connection with its bytes upper-cased, and half-closes when the client does.
ECHO_SERVER = """
import os, socket, sys, threading
path = sys.argv[1]
if os.path.exists(path):
    os.unlink(path)
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen(64)
def serve(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data.upper())
        conn.shutdown(socket.SHUT_WR)
while True:
    threading.Thread(target=serve, args=(server.accept()[0],), daemon=True).start()
"""

# A ZeroMQ REP on an ipc:// socket, as the agent's ROUTER would be: replies b"pong:" + request.
ZMQ_SERVER = """
import sys, zmq
rep = zmq.Context().socket(zmq.REP)
rep.bind("ipc://" + sys.argv[1])
while True:
    rep.send(b"pong:" + rep.recv())
"""


PASSWORD = "second-factor-42"


@dataclass(frozen=True)
class Keys:
    """The client's key pairs: one plain, one protected by PASSPHRASE."""

    plain: Path
    encrypted: Path


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120, **kwargs)


@dataclass(frozen=True)
class Sshd:
    """The test servers: the normal one, one forbidding stream-local forwarding, one asking 2FA."""

    port: int
    no_streamlocal_port: int
    kbdint_port: int

    def listener_pid(self, port: int) -> int:
        return int((STATE / f"sshd-{port}.pid").read_text())


def start_sshd() -> Sshd:
    """Start (or find running) the test servers with deploy/sshd-up.sh; failing to is a test failure."""
    variants = [(PORT, []), (NO_STREAMLOCAL_PORT, ["--no-streamlocal"]), (KBDINT_PORT, ["--kbd-interactive"])]
    for port, flags in variants:
        sshd_script("sshd-up.sh", port, *flags)
    return Sshd(PORT, NO_STREAMLOCAL_PORT, KBDINT_PORT)


def sshd_script(script: str, port: int, *flags: str) -> None:
    """Run deploy/sshd-up.sh or sshd-down.sh for the server on `port`; failing to is a test failure."""
    env = {**os.environ, "MILEX_SSHD_PORT": str(port), "MILEX_SSHD_STATE": str(STATE)}
    argv = [str(REPO / "deploy" / script), *flags, *([str(port)] if script == "sshd-down.sh" else [])]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        pytest.fail(f"deploy/{script} {' '.join(flags)} on port {port} failed:\n{done.stderr}", pytrace=False)


@dataclass(frozen=True)
class LoginUser:
    """The unprivileged account the client logs in as."""

    name: str
    home: Path
    uid: int
    gid: int

    @property
    def work(self) -> Path:
        return self.home / "milex-test"

    def spawn(self, *argv: str) -> subprocess.Popen[bytes]:
        """Start a process as this user (its pid is the process itself, so it can be stopped by pid)."""
        env = {"HOME": str(self.home), "PATH": "/usr/bin:/bin"}
        return subprocess.Popen(list(argv), user=self.uid, group=self.gid, extra_groups=[], env=env,
                                cwd=self.home, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip


def ensure_login_user(public_keys: list[str], password: str) -> LoginUser:
    """Create the login user if needed; its authorized_keys and password are (re)written each time."""
    try:
        pwd.getpwnam(LOGIN)
    except KeyError:
        run(["useradd", "--create-home", "--shell", "/bin/bash", LOGIN])
    entry = pwd.getpwnam(LOGIN)
    user = LoginUser(LOGIN, Path(entry.pw_dir), entry.pw_uid, entry.pw_gid)
    # A locked password field (`!`) makes sshd refuse the account when UsePAM is off; a real
    # password lets the keyboard-interactive variant ask for it as a second factor.
    run(["chpasswd"], input=f"{LOGIN}:{password}\n")
    ssh = user.home / ".ssh"
    for directory in (ssh, user.work):
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chown(directory, user.uid, user.gid)
    authorized = ssh / "authorized_keys"
    authorized.write_text("".join(key.strip() + "\n" for key in public_keys))
    authorized.chmod(0o600)
    os.chown(authorized, user.uid, user.gid)
    return user


def generate_key(path: Path, passphrase: str = "", kind: str = "ed25519") -> str:
    run(["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-C", f"milex-test-{path.name}", "-f", str(path)])
    return Path(f"{path}.pub").read_text()


def known_hosts_line(port: int) -> str:
    return run(["ssh-keyscan", "-p", str(port), "127.0.0.1"]).stdout


def wait_for(path: Path, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(
                f"server for {path} exited: {process.stderr.read() if process.stderr else ''}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {path}")
        time.sleep(0.05)


def session_processes(listener_pid: int, user: str) -> list[int]:
    """The sshd processes serving `user`'s connections to the listener `listener_pid` (and their children)."""
    table = [line.split(None, 2) for line in run(["ps", "-eo", "pid=,ppid=,args="]).stdout.splitlines()]
    children: dict[int, list[int]] = {}
    for pid, ppid, _ in table:
        children.setdefault(int(ppid), []).append(int(pid))
    found = [int(pid) for pid, ppid, args in table if int(ppid) == listener_pid and f"sshd: {user}" in args]
    for pid in list(found):
        found += children.get(pid, [])
    return found


def kill_sshd(port: int) -> None:
    """Kill the server on `port` outright, and the login user's connections to it: they drop as they
    would if the host crashed. Bring it back with `sshd_script("sshd-up.sh", port)`."""
    listener = int((STATE / f"sshd-{port}.pid").read_text())
    for pid in [*session_processes(listener, LOGIN), listener]:
        os.kill(pid, signal.SIGKILL)


# Calls start_tunnel as the CLI would, from a terminal: argv[1] is the terminal, which becomes the
# controlling one when this session leader opens it.
TERMINAL_DRIVER = """
import os, sys
tty = os.open(sys.argv[1], os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(tty, fd)
from milex.machine.tunnel.control import start_tunnel
status = start_tunnel(sys.argv[2], sys.argv[3])
print("RESULT", status.local_socket, "END", flush=True)
"""


class Terminal:
    """A pseudo-terminal on which a program runs as if a user sat there: prompts appear, answers are typed."""

    def __init__(self, script: str, *args: str, env: dict[str, str] | None = None) -> None:
        # The slave end stays open here too: a master whose slave nobody holds reads as an error.
        self.master, self.slave = pty.openpty()
        argv = [sys.executable, "-c", script, os.ttyname(self.slave), *args]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        self.output = ""

    def expect(self, text: str, timeout: float = 30.0) -> str:
        """Everything shown so far, once `text` has been shown."""
        deadline = time.monotonic() + timeout
        while text not in self.output:
            ready, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"{text!r} never appeared on the terminal; it shows:\n{self.output}")
            try:
                self.output += os.read(self.master, 4096).decode(errors="replace")
            except OSError:  # the program ended and the terminal hung up
                raise AssertionError(f"{text!r} never appeared; the terminal shows:\n{self.output}") from None
        return self.output

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def close(self) -> None:
        self.process.wait(30)
        os.close(self.slave)
        os.close(self.master)
