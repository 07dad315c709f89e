"""The agent as a per-user daemon: its lock, socket, start, stop and status (its directory's layout is
milex_common.agent_layout).

A command that finds its local agent running (milex.machine.local) reads only its info here: logging,
signal and subprocess (~7 ms of a warm `milex-run`) are imported where an agent is started, stopped
or run, and the lock's refusal (sqlite3) where the filesystem refuses a lock.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from milex_agent.handover import ask_to_leave, beat, elsewhere, leave_reason, live_elsewhere
from milex_common.agent_layout import JOURNAL, AgentInfo, node_name, node_socket_path, socket_path
from milex_common.errors import LocksUnreliable, MilexError
from milex_common.files import atomic_write, is_locked, private_directory, take_lock
from milex_common.intervals import (
    CONTROLLER_SETTLE,
    IDLE_EXIT,
    MAX_POLL_INTERVAL,
    POLL_INTERVAL,
    SUBMIT_RETRY,
)

T = TypeVar("T")
START_TIMEOUT = 15.0


def _bound_socket_path(directory: Path) -> Path:
    """Where the agent of `directory` binds its socket, made ready (a killed agent's file removed: the
    caller holds the lock): `socket_path`, or the node's where the filesystem of `directory` holds no
    sockets (a FUSE mount without mknod, some network filesystems)."""
    sock = socket_path(directory)
    for place in dict.fromkeys((sock, node_socket_path(directory))):  # once each, when they are one
        private_directory(place.parent)
        place.unlink(missing_ok=True)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.bind(str(place))
        except OSError as error:
            import logging

            logging.getLogger("milex_agent").info("no socket in %s (%s)", place.parent, error.strerror)
            continue
        finally:
            probe.close()
        place.unlink()
        return place
    return sock  # not even /tmp holds one: binding there says why


def read_info(directory: Path) -> AgentInfo | None:
    """The running agent's info, or None when no agent holds the lock of `directory`."""
    if not _refused_locks_named(directory, is_locked, directory / "agent.lock"):
        return None
    try:
        return msgspec.json.decode((directory / "agent.json").read_bytes(), type=AgentInfo)
    except (FileNotFoundError, msgspec.DecodeError):
        return None


def hold_lock(directory: Path) -> int:
    """Take the agent lock for this process's life; MilexError naming the running agent if taken,
    LocksUnreliable if the filesystem refuses it."""
    fd = _refused_locks_named(directory, take_lock, directory / "agent.lock")
    if fd is None:
        info = read_info(directory)
        running = f"pid {info.pid}, socket {info.socket}" if info else "starting"
        raise MilexError(f"an agent is already running for {directory} ({running}).") from None
    return fd


def _refused_locks_named(directory: Path, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`call(*args, **kwargs)`, an flock of `directory` inside; the agent's refusal, saying where to
    keep its state instead, if the filesystem refuses it."""
    try:
        return call(*args, **kwargs)
    except LocksUnreliable as error:
        from milex_agent.locks import refusal

        raise refusal(directory, str(error)) from None


def publish(directory: Path, info: AgentInfo) -> None:
    atomic_write(directory / "agent.json", msgspec.json.encode(info), mode=0o600)


def start(
    directory: Path,
    *,
    poll_interval: float = POLL_INTERVAL,
    max_interval: float = MAX_POLL_INTERVAL,
    idle_exit: float = IDLE_EXIT,
    submit_retry: float = SUBMIT_RETRY,
) -> AgentInfo:
    """The running agent of `directory`, started detached first if there is none."""
    info = read_info(directory)
    if info is not None and not elsewhere(info.host):
        return info
    with _starting(directory):
        info = read_info(directory)
        if info is not None and elsewhere(info.host):
            ask_to_leave(directory, info.host, info.pid)  # it moves here, where the command landed
            info = None
        return info or _launch(directory, _run_options(poll_interval, max_interval, idle_exit, submit_retry))


def start_if_work(
    directory: Path,
    *,
    poll_interval: float = POLL_INTERVAL,
    max_interval: float = MAX_POLL_INTERVAL,
    idle_exit: float = IDLE_EXIT,
    submit_retry: float = SUBMIT_RETRY,
) -> AgentInfo | None:
    """The watchdog's start (milex_agent.watchdog): the agent of `directory` started detached when
    none runs, on any node, and its journal holds work; None, having done nothing, otherwise. An agent
    that runs costs one lock probe; one of another node is left where it is."""
    from milex_agent.journal import holds_work

    if read_info(directory) is not None or not holds_work(directory / JOURNAL):
        return None
    with _starting(directory):
        if read_info(directory) is not None:  # a command started it meanwhile
            return None
        _note(directory, "no agent runs and the journal holds work: the watchdog starts one")
        return _launch(directory, _run_options(poll_interval, max_interval, idle_exit, submit_retry))


def _note(directory: Path, message: str) -> None:
    """A line in the agent's log (in the agent's own format) from a process that is not the agent."""
    with open(directory / "agent.log", "a") as log:
        log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} INFO {message}\n")


@contextlib.contextmanager
def _starting(directory: Path) -> Iterator[None]:
    """Held while a start looks and launches. Commands starting the agent together queue here (on
    every node of a shared home): the first starts it, the others then find it."""
    private_directory(directory)
    starting = _refused_locks_named(directory, take_lock, directory / "start.lock", wait=True)
    assert starting is not None  # impossible: a waiting take_lock returns once it holds the lock
    try:
        yield
    finally:
        os.close(starting)


def _run_options(
    poll_interval: float, max_interval: float, idle_exit: float, submit_retry: float
) -> list[str]:
    """The options of `milex-agent run` for these settings."""
    return ["--poll-interval", str(poll_interval), "--max-interval", str(max_interval),
            "--idle-exit", str(idle_exit), "--submit-retry", str(submit_retry)]  # fmt: skip


def _of_another_node(directory: Path) -> bool:
    """Whether agent.json, whoever holds the lock, names an agent of another node."""
    try:
        return elsewhere(msgspec.json.decode((directory / "agent.json").read_bytes(), type=AgentInfo).host)
    except (FileNotFoundError, msgspec.DecodeError):
        return False


def _launch(directory: Path, options: list[str]) -> AgentInfo:
    """Start the agent of `directory` detached, with these options of `milex-agent run`; its info
    once it serves."""
    if not _of_another_node(directory):  # another node's is for the new agent to judge (live_elsewhere)
        (directory / "agent.json").unlink(missing_ok=True)  # a killed agent's: not to be mistaken for ours
    import subprocess

    log_file = directory / "agent.log"
    logged = log_file.stat().st_size if log_file.exists() else 0
    command = [sys.executable, "-m", "milex_agent.cli", "run", "--detach", "--dir", str(directory), *options]
    with open(log_file, "ab") as log:
        # `run --detach` forks; its parent exits once the agent serves (or failed), so the agent
        # is nobody's child here and the exit status says whether it started.
        launcher = subprocess.run(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, timeout=START_TIMEOUT, check=False
        )
    info = read_info(directory)
    if launcher.returncode != 0 or info is None:
        with open(log_file, "rb") as log:  # what this start wrote, not an earlier agent's lines
            log.seek(logged)
            tail = log.read().decode(errors="replace")[-4000:]
        if not tail.strip() and not _has_room(directory):  # it could not even log why
            from milex_agent.locks import disk_full

            raise disk_full(directory, OSError(errno.ENOSPC, f"nothing could be written to {log_file}"))
        raise MilexError(f"the agent did not start (status {launcher.returncode}); {log_file}:\n{tail}")
    return info


def _has_room(directory: Path) -> bool:
    """Whether the filesystem of `directory` has room for the agent to write (True when unknown)."""
    from milex_agent.disk_space import ROOM, free_bytes

    free = free_bytes(directory)
    return free is None or free >= ROOM


def stop(directory: Path, timeout: float = 10.0) -> AgentInfo | None:
    """Stop the running agent of `directory` (SIGTERM, then SIGKILL; on another node, a request to
    leave); its info, None if none ran."""
    info = read_info(directory)
    if info is None:
        return None
    if elsewhere(info.host):
        ask_to_leave(directory, info.host, info.pid)
        info.running = False
        return info
    import signal

    os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while is_locked(directory / "agent.lock"):
        if time.monotonic() > deadline:
            os.kill(info.pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
        time.sleep(0.02)
    # It let go of the lock just before it exits: wait for that too, so that its files are closed
    # when stop returns (a filesystem can then be unmounted, a venv replaced).
    while running(info.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    info.running = False
    return info


def running(pid: int) -> bool:
    """Whether process `pid` runs; a zombie (exited, its files closed, not yet reaped) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or between open and read
        return False
    except OSError:  # no /proc here: whether the pid is taken at all
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def run(
    directory: Path,
    *,
    poll_interval: float,
    max_interval: float,
    idle_exit: float = IDLE_EXIT,
    version: str,
    submit_retry: float = SUBMIT_RETRY,
    on_ready: Callable[[], None] = lambda: None,
) -> None:
    """Serve in the foreground until SIGTERM, SIGINT, a Shutdown request, `idle_exit` seconds of
    idleness, or the removal of `directory`; `on_ready` once serving."""
    import logging
    import signal

    from milex_agent.controller import ControllerWatch
    from milex_agent.journal import Journal
    from milex_agent.lifetime import Lifetime, identity
    from milex_agent.locks import check, refusal
    from milex_agent.poller import Poller
    from milex_agent.recovery import recover
    from milex_agent.server import AgentServer
    from milex_agent.state import Agent, SchedulerCache

    private_directory(directory)
    lock = hold_lock(directory)
    try:
        check(directory, directory / "agent.lock")  # before the journal opens: it must have one writer
        another = live_elsewhere(directory)  # and the lock must hold across the login nodes too
        if another is not None:
            raise refusal(directory, another)
    except BaseException:
        os.close(lock)
        raise
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sock = _bound_socket_path(directory)
    journal_path = directory / JOURNAL
    journal = Journal(journal_path)
    schedulers = SchedulerCache()
    poller = Poller(journal, schedulers, interval=poll_interval, max_interval=max_interval)
    controller = ControllerWatch(settle=CONTROLLER_SETTLE, retry_for=submit_retry)
    agent = Agent(
        journal=journal, poller=poller, schedulers=schedulers, version=version, controller=controller
    )
    recover(agent)
    previous = os.umask(0o077)  # the socket file itself is private too
    try:
        leave = functools.partial(leave_reason, directory, node_name(), os.getpid())
        lifetime = Lifetime(
            idle_exit=idle_exit, home=[directory, journal_path], leave=leave, beat=lambda: beat(directory)
        )
        server = AgentServer(agent, f"ipc://{sock}", lifetime=lifetime)
    finally:
        os.umask(previous)
    ours = {path: identity(path) for path in (sock,)}

    def request_stop(signum: int, frame: object) -> None:
        agent.stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    publish(directory, AgentInfo(pid=os.getpid(), socket=str(sock), version=version, started_at=time.time(),
                                 directory=str(directory), host=node_name()))  # fmt: skip
    ours[directory / "agent.json"] = identity(directory / "agent.json")
    logging.getLogger("milex_agent").info("agent %s serving on %s", version, sock)
    on_ready()
    try:
        server.serve()
    finally:
        server.close()
        schedulers.close()
        for path, created in ours.items():  # not another agent's, if the directory was replaced
            if identity(path) == created:
                path.unlink(missing_ok=True)
        journal.close()
        os.close(lock)
        logging.getLogger("milex_agent").info("agent %s stopped", version)
