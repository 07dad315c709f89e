"""The agent's directory on a full filesystem (a small tmpfs of its own, filled for real): the running
agent refuses what it cannot record, loses nothing, and goes back to normal once space is back, saying
so; an agent started there says the disk is full, not that locks do not work."""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from milex_agent import daemon, locks
from milex_agent.journal import Journal
from milex_agent.lifetime import Lifetime
from milex_agent.server import AgentServer
from milex_common.connection import AgentConnection, AgentError
from milex_common.errors import DiskFull, LocksUnreliable
from milex_common.files import is_locked
from milex_common.model import JobState, MachineSettings
from milex_common.protocol import Status, StatusReply, Submitted
from tests.filling import fill
from tests.unit.agent_fakes import FakeScheduler, chain_bundle, make_agent, submit_request, wait_until

DEADLINE = 5.0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A directory on a 1 MiB tmpfs of its own, unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_running_agent_goes_back_to_normal_once_space_is_back_and_says_so(small_disk, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="milex_agent")
    journal = Journal(small_disk / "journal.sqlite")
    fake = FakeScheduler()
    agent = make_agent(journal, fake, interval=0.02, max_interval=0.1)
    server = AgentServer(agent, f"ipc://{tmp_path / 'agent.sock'}", lifetime=Lifetime(idle_exit=0))
    settings = MachineSettings(name="cluster", path=str(tmp_path / "milex"))
    thread = threading.Thread(target=server.serve, daemon=True)
    connection = AgentConnection(f"ipc://{tmp_path / 'agent.sock'}", timeout=DEADLINE)

    def submit(name: str) -> Submitted:
        reply = connection.request(submit_request(chain_bundle(name, "a"), settings), expect=Submitted)
        assert isinstance(reply, Submitted)
        return reply

    def states(name: str) -> list[JobState]:
        reply = connection.request(Status(bundle=name), expect=StatusReply)
        assert isinstance(reply, StatusReply)
        return [job.state for job in reply.jobs]

    thread.start()
    try:
        [before] = submit("before").jobs
        filler = fill(small_disk)
        fake.set_state(before.job_id, JobState.COMPLETED, exit_code=0)
        with pytest.raises(
            AgentError, match=rf"could not write its journal {small_disk}/journal.sqlite.*full"
        ):
            submit("during")
        wait_until(lambda: "the disk is full" in caplog.text, DEADLINE)
        assert states("before") == [JobState.SUBMITTED]  # the change waits for space, and is not lost
        assert thread.is_alive()

        filler.unlink()
        wait_until(lambda: states("before") == [JobState.COMPLETED], DEADLINE)  # journal writes resume
        [after] = submit("after").jobs
        assert after.job_id and states("after") == [JobState.SUBMITTED]
        assert states("during") == []  # refused whole, recorded nowhere
        assert f"space is back on the filesystem of {small_disk}" in caplog.text
        assert caplog.text.count("the disk is full") == 1  # said once, not at every poll
        assert "Traceback" not in caplog.text
        assert thread.is_alive()
    finally:
        agent.stopping = True
        thread.join(DEADLINE)
        connection.close()
        server.close()
        journal.close()


def test_an_agent_started_on_a_full_disk_says_the_disk_is_full_not_that_locks_fail(small_disk):
    directory = small_disk / "agent"
    directory.mkdir(mode=0o700)
    (directory / "agent.lock").touch()
    filler = fill(small_disk)

    with pytest.raises(DiskFull) as refused:
        daemon.run(directory, poll_interval=1.0, max_interval=1.0, version="0")

    message = str(refused.value)
    assert message.startswith(f"the disk is full: the agent cannot write in {directory} (")
    assert "0 bytes free on its filesystem" in message and "locks" not in message
    assert not is_locked(directory / "agent.lock")
    assert sorted(path.name for path in directory.iterdir()) == ["agent.lock"]  # no probe left behind

    with pytest.raises(DiskFull, match=f"the disk is full: the agent cannot write in {directory} "):
        daemon.start(directory)  # the launched agent could not even log why: the start says it
    assert not isinstance(refused.value, LocksUnreliable)

    filler.unlink()  # and once space is back, it starts
    info = daemon.start(directory, idle_exit=0)
    try:
        assert info.directory == str(directory)
    finally:
        daemon.stop(directory)


def test_locks_that_do_not_exclude_are_still_refused_as_such(small_disk, monkeypatch):
    monkeypatch.setattr(locks, "_places", lambda: [])
    directory = small_disk / "agent"
    directory.mkdir(mode=0o700)
    (directory / "agent.lock").touch()  # not held: a second process is granted it, as a faked lock is

    with pytest.raises(LocksUnreliable, match="a second process was granted the flock"):
        locks.check(directory, directory / "agent.lock")
