"""Whether file locks really exclude a second process where the agent keeps its state, and where to
keep it instead: checked at start, before the journal opens, so that two agents never write one journal.

Two kinds of lock guard the journal. The agent's `agent.lock` is an flock held for the agent's life:
it alone keeps a second agent out. SQLite's own locks on the journal are POSIX (fcntl) locks, in WAL
mode on its `-shm` file too: a filesystem that refuses them fails every write, and one that fakes them
lets any other writer (a second agent, a user's `sqlite3`) corrupt it. Both are tried from a second
process, since a lock never excludes its own holder (flock: its open file; fcntl: its process).
"""

from __future__ import annotations

import json
import os
import pwd
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

from milex_agent.disk_space import describe_free, is_full
from milex_common.errors import DiskFull, LocksUnreliable, MilexError
from milex_common.files import take_lock

PROBE_DATABASE = "locks-probe.sqlite"
PROBE_TIMEOUT = 30.0  # a second process that cannot get an answer from the filesystem in this time
EXCLUDED = "excluded"  # what the second process prints when every lock was refused to it


def check(directory: Path, lock_file: Path) -> None:
    """Nothing when a second process is refused both the flock this process holds on `lock_file`
    and SQLite's write lock on a database of `directory`; else LocksUnreliable saying where to keep
    the agent's state instead. DiskFull when the probe cannot be written there: that says nothing
    of the locks."""
    reason = exclusion_failure(lock_file)
    if reason is not None:
        raise refusal(directory, reason)


def exclusion_failure(lock_file: Path) -> str | None:
    """Why locks beside `lock_file` (whose flock this process holds) do not exclude a second
    process; None when they do; DiskFull when its filesystem has no room for the probe. Leaves no
    file behind."""
    database = lock_file.parent / PROBE_DATABASE
    # A rollback journal, not the journal's WAL: the same POSIX locks (on the database file rather
    # than on `-shm`), with a verdict at once where WAL retries a faked lock's protocol error for 10 s.
    db: sqlite3.Connection | None = None
    try:
        try:
            db = sqlite3.connect(database, isolation_level=None, timeout=0)
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            if is_full(error, database):
                raise disk_full(lock_file.parent, error) from None
            return f"SQLite cannot take its write lock on a database there: {error}"
        return _second_process(lock_file, database)
    finally:
        if db is not None:
            db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)


def _second_process(lock_file: Path, database: Path) -> str | None:
    """Run `second_try` in a process of its own: None if it was refused every lock, else why not."""
    command = [sys.executable, "-m", "milex_agent.locks", str(lock_file), str(database)]
    try:
        probe = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                               timeout=PROBE_TIMEOUT, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"a second process trying the locks got no answer from the filesystem in {PROBE_TIMEOUT:.0f} s"
    answer = probe.stdout.strip()
    if probe.returncode != 0 or not answer:
        return f"a second process trying the locks failed (exit {probe.returncode}): {probe.stderr[-500:]}"
    return None if answer == EXCLUDED else answer


def disk_full(directory: Path, error: BaseException) -> DiskFull:
    """The agent's refusal to start in `directory`, whose filesystem has no room left."""
    return DiskFull(
        f"the disk is full: the agent cannot write in {directory} ({error}; {describe_free(directory)}); "
        "free space on that filesystem, then start the agent again (the next command does)."
    )


def second_try(lock_file: Path, database: Path) -> str:
    """What a second process gets while the first holds both locks: EXCLUDED, or what went wrong."""
    try:
        fd = take_lock(lock_file)
    except LocksUnreliable as error:
        return f"in a second process, {error}"
    if fd is not None:
        os.close(fd)
        return "a second process was granted the flock that the first one holds"
    db = sqlite3.connect(database, isolation_level=None, timeout=0)
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as error:
        if str(error) == "database is locked":  # SQLITE_BUSY (its code is on errors from Python 3.11 only)
            return EXCLUDED
        return f"SQLite fails in a second process: {error}"
    finally:
        db.close()
    return "a second process was granted the SQLite write lock that the first one holds"


def refusal(directory: Path, reason: str) -> LocksUnreliable:
    """The agent's refusal to keep its state in `directory`, naming a directory of this node to
    use instead (the machine's `state_dir`) and the configuration line that says so."""
    from milex_common.agent_layout import agent_dir, node_name

    problem = (
        f"file locks do not work in {directory} ({reason}): two agents could both write its journal "
        "and corrupt it, so the agent does not start there."
    )
    place = node_local_directory(avoid=directory)
    if place is None:
        tried = ", ".join(str(base) for base, _ in _places())
        return LocksUnreliable(
            f"{problem} No directory of this node that Milex tried ({tried}) has working locks either: "
            'set the machine\'s "state_dir" to a directory on a disk of this node whose locks work.'
        )
    return LocksUnreliable(
        f"{problem} Keep the agent's state on a disk of this node instead: add the line\n"
        f'    "state_dir": {json.dumps(str(place))},\n'
        "to this machine in your Milex configuration (or run "
        f"`milex config set <machine> state_dir {place}`); "
        f"its agent then keeps its directory and journal in {agent_dir(place, cluster=node_name())}, "
        "and your jobs' files stay where they are."
    )


def _places() -> list[tuple[Path, str]]:
    """Where a node keeps local files, best first, with the name of the agent's state there: /var/tmp
    survives a logout and a reboot, /tmp a logout; $XDG_RUNTIME_DIR is removed when the user's last
    session ends, and the journal with it."""
    user = pwd.getpwuid(os.getuid()).pw_name
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return [(Path("/var/tmp"), f"milex-{user}"), (Path("/tmp"), f"milex-{user}"),
            *([(Path(runtime), "milex")] if runtime else [])]  # fmt: skip


def node_local_directory(avoid: Path) -> Path | None:
    """A directory for the agent's state in the first of `_places` whose locks exclude a second
    process (tried in a temporary directory there) and that is not on the filesystem of `avoid`."""
    avoided = _device(avoid)
    for base, name in _places():
        usable = os.access(base, os.W_OK | os.X_OK) and _device(base) not in (None, avoided)
        if usable and _locks_work_in(base):
            return base / name
    return None


def _device(path: Path) -> int | None:
    """The filesystem of `path`, or of its nearest existing parent."""
    for candidate in (path, *path.parents):
        try:
            return candidate.stat().st_dev
        except OSError:
            continue
    return None


def _locks_work_in(base: Path) -> bool:
    try:
        with tempfile.TemporaryDirectory(dir=base, prefix=".milex-locks-") as trial:
            lock_file = Path(trial) / "agent.lock"
            fd = take_lock(lock_file)
            if fd is None:
                return False
            try:
                return exclusion_failure(lock_file) is None
            finally:
                os.close(fd)
    except (OSError, MilexError):  # a full disk there too, or locks refused
        return False


if __name__ == "__main__":
    print(second_try(Path(sys.argv[1]), Path(sys.argv[2])))
