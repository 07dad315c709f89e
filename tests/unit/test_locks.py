"""The agent's lock check: locks a filesystem refuses or grants to two processes are found, and the
refusal names a directory of the node whose locks work (tests/e2e/test_unreliable_locks.py runs it on
a filesystem whose locks fail)."""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
from pathlib import Path

import pytest

from milex_agent import daemon, locks
from milex_common import agent_layout
from milex_common.errors import LocksUnreliable
from milex_common.files import is_locked, take_lock


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_flock_the_filesystem_refuses_is_locks_unreliable_and_leaks_no_descriptor(tmp_path, monkeypatch):
    def refused(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    lock_file = tmp_path / "agent.lock"
    lock_file.touch()
    before = open_descriptors()
    monkeypatch.setattr(fcntl, "flock", refused)
    for attempt in (
        lambda: take_lock(lock_file),
        lambda: take_lock(lock_file, wait=True),
        lambda: is_locked(lock_file),
    ):
        with pytest.raises(
            LocksUnreliable, match=f"flock on {lock_file} fails: No locks available \\(ENOLCK\\)"
        ):
            attempt()
    assert open_descriptors() == before


def test_locks_that_exclude_pass_and_the_check_leaves_no_file(tmp_path):
    fd = daemon.hold_lock(tmp_path)
    try:
        assert locks.exclusion_failure(tmp_path / "agent.lock") is None
        locks.check(tmp_path, tmp_path / "agent.lock")
    finally:
        os.close(fd)
    assert [path.name for path in tmp_path.iterdir()] == ["agent.lock"]


def test_a_lock_granted_to_a_second_process_is_found(tmp_path):
    # A faked flock: this process believes it holds the lock; the filesystem gives it to the next one too.
    (tmp_path / "agent.lock").touch()
    reason = locks.exclusion_failure(tmp_path / "agent.lock")
    assert reason == "a second process was granted the flock that the first one holds"


def test_a_sqlite_write_lock_granted_to_a_second_process_is_found(tmp_path):
    # A faked POSIX lock: the flock excludes, but SQLite's write lock, which this process believes it
    # holds, goes to the next process too.
    lock_file, database = tmp_path / "agent.lock", tmp_path / "probe.sqlite"
    holder = take_lock(lock_file)
    sqlite3.connect(database).close()
    try:
        reason = locks._second_process(lock_file, database)
    finally:
        os.close(holder)
    assert reason == "a second process was granted the SQLite write lock that the first one holds"


def test_the_refusal_names_a_directory_of_the_node_whose_locks_work_and_the_line_to_add(
    tmp_path, monkeypatch
):
    local = tmp_path / "var-tmp"
    local.mkdir()
    monkeypatch.setattr(
        locks, "_places", lambda: [(tmp_path / "absent", "milex-alice"), (local, "milex-alice")]
    )
    home = Path("/proc/home/alice/milex/agent/login1")  # on another filesystem than tmp_path

    message = str(locks.refusal(home, "a second process was granted the flock that the first one holds"))

    assert message.startswith(f"file locks do not work in {home} (a second process was granted the flock")
    assert f'\n    "state_dir": "{local}/milex-alice",\n' in message
    assert f"milex config set <machine> state_dir {local}/milex-alice" in message
    assert str(agent_layout.agent_dir(local / "milex-alice", cluster=agent_layout.node_name())) in message
    assert list(local.iterdir()) == []  # tried, and nothing left there


def test_a_place_on_the_failing_filesystem_is_not_proposed(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "_places", lambda: [(tmp_path, "milex-alice")])

    message = str(locks.refusal(tmp_path / "milex" / "agent" / "login1", "flock fails"))

    assert 'state_dir": ' not in message
    assert f"No directory of this node that Milex tried ({tmp_path}) has working locks either" in message


def test_the_agent_refuses_before_it_opens_its_journal_and_lets_go_of_its_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(
        locks, "exclusion_failure", lambda lock_file: "a second process was granted the flock"
    )
    monkeypatch.setattr(locks, "_places", lambda: [])

    with pytest.raises(LocksUnreliable, match="a second process was granted the flock"):
        daemon.run(tmp_path, poll_interval=1.0, max_interval=1.0, version="0")

    assert not (tmp_path / "journal.sqlite").exists()
    assert not is_locked(tmp_path / "agent.lock")


def test_a_machine_with_a_state_dir_keeps_its_agent_there_in_a_private_directory(tmp_path):
    state = tmp_path / "var-tmp" / "milex-alice"
    directory = agent_layout.machine_agent_dir(str(tmp_path / "home"), str(state))
    assert directory == agent_layout.agent_dir(
        state, cluster=agent_layout.node_name()
    )  # a disk of this node: its own agent
    assert state.stat().st_mode & 0o777 == 0o700
    assert agent_layout.machine_agent_dir(str(tmp_path / "home"), None) == agent_layout.agent_dir(
        tmp_path / "home"
    )


def test_status_and_start_on_a_filesystem_refusing_flock_give_the_refusal(tmp_path, monkeypatch):
    def refused(fd: int, operation: int) -> None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(fcntl, "flock", refused)
    monkeypatch.setattr(locks, "_places", lambda: [])
    (tmp_path / "agent.lock").touch()
    for command in (lambda: daemon.read_info(tmp_path), lambda: daemon.start(tmp_path)):
        with pytest.raises(LocksUnreliable) as refusal:
            command()
        assert str(refusal.value).startswith(f"file locks do not work in {tmp_path} (flock on {tmp_path}/")
        assert "Function not implemented (ENOSYS)" in str(refusal.value)
