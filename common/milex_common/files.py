"""Files that must not be half-written, private directories, and locks that die with their holder."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from milex_common.errors import LocksUnreliable, MilexError


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Replace `path` with `data` in one step (temporary file in the same directory, then rename).

    `durable` also flushes the data to disk before the rename; files that can be made again
    (rendered scripts, caches of state kept elsewhere) skip that cost.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def temporary_beside(path: Path) -> tuple[int, str]:
    """A new file (open, mode 0600) in `path`'s directory, named `.NAME.` and a random part, to be
    filled then renamed over `path`; its descriptor and path. What tempfile.mkstemp makes, without
    importing tempfile (shutil and random with it: ~2 ms of a warm `milex-run`)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):  # 48 random bits: a second name is all but never needed
        temporary = str(path.parent / f".{path.name}.{os.urandom(6).hex()}")
        try:
            return os.open(temporary, flags, 0o600), temporary
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary name", str(path.parent))


def file_in_the_way(directory: Path) -> Path | None:
    """The file (not a directory) that stands at `directory` or at one of its parents, if any:
    what keeps `directory` from being made."""
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def private_directory(path: Path) -> Path:
    """Create `path` as a directory only its owner can enter (0700), or make sure it is one.

    A symlink, or a directory another user owns (planted in /tmp, say), is refused: a socket
    inside must be reachable by us alone.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise MilexError(
            f"{path} must be a directory of yours (it is {stat.filemode(info.st_mode)}, owner uid "
            f"{info.st_uid}); remove it and retry."
        )
    if info.st_mode & 0o077:
        path.chmod(0o700)
    return path


def is_locked(path: Path) -> bool:
    """Whether a live process holds an flock on `path` (a lock dies with its process; a pid file does not)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return not _flock(fd, path, fcntl.LOCK_SH | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def take_lock(path: Path, *, wait: bool = False) -> int | None:
    """An exclusive flock on `path`, held until the returned descriptor is closed; None if taken
    (with `wait`, waits for the holder to let go instead)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if _flock(fd, path, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB):
            return fd
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def _flock(fd: int, path: Path, operation: int) -> bool:
    """flock(2) `operation` on `fd`: whether it was granted (False: another process holds it), or
    LocksUnreliable when the filesystem refuses locks (ENOLCK, ENOSYS, EOPNOTSUPP...)."""
    try:
        fcntl.flock(fd, operation)
    except BlockingIOError:
        return False
    except OSError as error:
        name = errno.errorcode.get(error.errno or 0, str(error.errno))
        raise LocksUnreliable(f"flock on {path} fails: {error.strerror} ({name})") from None
    return True
