"""The agent as a daemon: its directory, a private socket, one agent per directory, start and stop."""

from __future__ import annotations

import os
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from milex_agent import daemon
from milex_common import agent_layout
from milex_common.connection import AgentConnection
from milex_common.errors import MilexError
from milex_common.files import private_directory
from milex_common.protocol import HelloReply

NOBODY = 65534


def wait_until_gone(pid: int, deadline: float = 5.0) -> None:
    """Wait for `pid` to exit; a zombie counts as gone (a container's init may never reap it)."""
    end = time.monotonic() + deadline
    while daemon.running(pid):
        if time.monotonic() > end:
            raise AssertionError(f"process {pid} still runs {deadline} s after stop")
        time.sleep(0.02)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_agent_dir_is_per_cluster_under_the_milex_path(tmp_path):
    assert agent_layout.agent_dir(tmp_path / "milex", cluster="c1") == tmp_path / "milex" / "agent" / "c1"
    assert agent_layout.agent_dir("~/milex", cluster="c1") == Path.home() / "milex" / "agent" / "c1"
    assert (
        agent_layout.agent_dir(tmp_path).name == agent_layout.cluster_name()
    )  # this host's cluster, or its name


def test_socket_path_is_in_the_agent_dir_when_short_enough(tmp_path):
    assert agent_layout.socket_path(tmp_path / "agent") == tmp_path / "agent" / "run" / "agent.sock"


def test_socket_path_falls_back_to_a_private_tmp_dir_for_a_long_path(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", "/tmp")  # only a name is computed: nothing is made there
    long_dir = tmp_path / ("d" * 120) / "agent"
    other_dir = tmp_path / ("e" * 120) / "agent"
    path = agent_layout.socket_path(long_dir)
    assert path.parent == Path("/tmp") / f"milex-agent-{os.getuid()}"
    assert path.suffix == ".sock"
    assert len(str(path)) <= agent_layout.SOCKET_PATH_LIMIT
    assert agent_layout.socket_path(long_dir) == path  # the same directory always gets the same socket
    assert agent_layout.socket_path(other_dir) != path


def test_private_dir_is_created_0700_and_tightened_if_open(tmp_path):
    created = private_directory(tmp_path / "a" / "b")
    assert created == tmp_path / "a" / "b"
    assert mode(created) == 0o700
    opened = tmp_path / "open"
    opened.mkdir(mode=0o755)
    opened.chmod(0o755)
    private_directory(opened)
    assert mode(opened) == 0o700


def test_private_dir_refuses_a_dir_owned_by_another_user(tmp_path):
    if os.getuid() != 0:
        pytest.skip("making a directory owned by another user needs root")
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o777)
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(MilexError, match="must be a directory of yours"):
        private_directory(theirs)


def test_read_info_without_an_agent_is_none(tmp_path):
    assert daemon.read_info(tmp_path) is None
    assert daemon.stop(tmp_path) is None


def test_read_info_ignores_info_left_by_a_dead_agent(tmp_path):
    info = agent_layout.AgentInfo(
        pid=1, socket="/x.sock", version="0", started_at=0.0, directory=str(tmp_path)
    )
    daemon.publish(tmp_path, info)
    (tmp_path / "agent.lock").touch()
    assert daemon.read_info(tmp_path) is None


def test_hold_lock_allows_one_holder(tmp_path):
    fd = daemon.hold_lock(tmp_path)
    try:
        assert daemon.is_locked(tmp_path / "agent.lock")
        with pytest.raises(MilexError, match="already running"):
            daemon.hold_lock(tmp_path)
    finally:
        os.close(fd)
    assert not daemon.is_locked(tmp_path / "agent.lock")


# ---- a real agent process ------------------------------------------------------------------------


@pytest.fixture
def agent_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "milex" / "agent" / "login1"
    yield directory
    daemon.stop(directory, timeout=5.0)


def test_start_then_start_again_is_the_same_agent_and_stop_stops_it(agent_dir):
    info = daemon.start(agent_dir, poll_interval=0.1, max_interval=0.5)
    assert info.running and info.pid != os.getpid()
    assert daemon.read_info(agent_dir) == info
    assert info.socket == str(agent_layout.socket_path(agent_dir))
    assert daemon.start(agent_dir).pid == info.pid  # one agent per directory
    with pytest.raises(MilexError, match=f"already running.*pid {info.pid}"):
        daemon.hold_lock(agent_dir)
    with AgentConnection(f"ipc://{info.socket}", timeout=5.0) as connection:
        reply = connection.hello("test")
    assert isinstance(reply, HelloReply) and reply.pid == info.pid

    stopped = daemon.stop(agent_dir)
    assert not daemon.running(info.pid)  # exited, its files closed, when stop returns
    assert stopped is not None and (stopped.pid, stopped.running) == (info.pid, False)
    assert daemon.read_info(agent_dir) is None
    assert not Path(info.socket).exists()
    wait_until_gone(info.pid)


def test_an_idle_agent_exits_cleanly_by_itself_and_says_why(agent_dir):
    info = daemon.start(agent_dir, poll_interval=0.1, max_interval=0.5, idle_exit=0.5)
    wait_until_gone(info.pid)
    assert daemon.read_info(agent_dir) is None
    assert not (agent_dir / "agent.json").exists() and not Path(info.socket).exists()
    assert "stopping: idle for" in (agent_dir / "agent.log").read_text()
    assert daemon.start(agent_dir, poll_interval=0.1, max_interval=0.5).pid != info.pid  # starts again


def test_an_agent_started_with_the_idle_exit_off_stays(agent_dir):
    info = daemon.start(agent_dir, poll_interval=0.1, max_interval=0.5, idle_exit=0)
    time.sleep(1.0)  # nothing to wait for: the test is that nothing happens in a second of idleness
    assert daemon.read_info(agent_dir) == info


def test_the_socket_and_its_directory_are_private(agent_dir):
    info = daemon.start(agent_dir, poll_interval=0.1, max_interval=0.5)
    socket = Path(info.socket)
    assert stat.S_ISSOCK(socket.stat().st_mode)
    assert mode(socket) & 0o077 == 0
    assert mode(socket.parent) == 0o700
    assert mode(agent_dir) == 0o700
    assert mode(agent_dir / "agent.json") == 0o600
    assert socket.stat().st_uid == os.getuid()


def test_an_agent_dir_with_a_long_path_serves_on_a_private_tmp_socket(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    directory = tmp_path / ("long" * 30) / "agent"
    try:
        info = daemon.start(directory, poll_interval=0.1, max_interval=0.5)
        socket = Path(info.socket)
        assert socket.parent == tmp_path / "tmp" / f"milex-agent-{os.getuid()}"
        assert mode(socket.parent) == 0o700 and mode(socket) & 0o077 == 0
        with AgentConnection(f"ipc://{socket}", timeout=5.0) as connection:
            assert connection.hello("test").pid == info.pid
    finally:
        daemon.stop(directory, timeout=5.0)


def test_an_agent_refuses_a_tmp_socket_dir_that_another_user_made_first(tmp_path, monkeypatch):
    if os.getuid() != 0:
        pytest.skip("making a directory owned by another user needs root")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    planted = tmp_path / "tmp" / f"milex-agent-{os.getuid()}"
    planted.mkdir(parents=True, mode=0o777)
    os.chown(planted, NOBODY, NOBODY)
    directory = tmp_path / ("long" * 30) / "agent"
    try:
        with pytest.raises(MilexError, match="must be a directory of yours"):
            daemon.start(directory, poll_interval=0.1, max_interval=0.5)
        assert list(planted.iterdir()) == []
    finally:
        daemon.stop(directory, timeout=5.0)
