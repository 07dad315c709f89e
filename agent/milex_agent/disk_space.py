"""Room on the filesystem of the agent's directory: how much is free, and a full disk told in the
agent's log once when it starts refusing writes and once when space is back, not at every write."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("milex_agent")
ROOM = 64 * 1024  # free bytes that make a write of a few journal pages worth trying again
CHECK_EVERY = 1.0  # seconds between looks at the free space while the disk is full
SQLITE_FULL = 13  # SQLite's result code (sqlite3 names it from Python 3.11 only)


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on the filesystem of `path` (or of its nearest
    existing parent); 0 when it has no inode left either; None when it cannot be read."""
    for candidate in (path, *path.parents):
        try:
            stats = os.statvfs(candidate)
        except FileNotFoundError:
            continue
        except OSError:
            return None
        return 0 if stats.f_files and not stats.f_favail else stats.f_bavail * stats.f_frsize
    return None


def describe_free(path: Path) -> str:
    """How much is free where `path` is, in words: "12 KiB free on its filesystem"."""
    free = free_bytes(path)
    if free is None:
        return "its free space unknown"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if free >= size:
            return f"{free / size:.1f} {unit} free on its filesystem"
    return f"{free} bytes free on its filesystem"


def is_full(error: BaseException, path: Path) -> bool:
    """Whether `error`, from writing at `path`, means its filesystem is full: SQLite's SQLITE_FULL
    (its code is on errors from Python 3.11 only), ENOSPC or EDQUOT, or an I/O error with no room left."""
    if isinstance(error, OSError) and error.errno in (28, 122):  # ENOSPC, EDQUOT
        return True
    if isinstance(error, sqlite3.Error):
        if getattr(error, "sqlite_errorcode", None) == SQLITE_FULL or "disk is full" in str(error):
            return True
        free = free_bytes(path)
        return free is not None and free < ROOM and "I/O error" in str(error)
    return False


class DiskSpace:
    """Whether the writes at `path` are refused for a full disk: told once as it starts (`refused`),
    and once as it ends (`wrote`, or `check` finding room before any write is tried)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path, self.clock = path, clock
        self.full = False
        self._checked = 0.0

    def refused(self, error: BaseException) -> bool:
        """A write at `path` failed with `error`: whether for a full disk (said in the log the first time)."""
        if not is_full(error, self.path):
            return False
        if not self.full:
            log.warning(
                "the disk is full: %s cannot be written (%s; %s); requests that must be recorded are "
                "refused and state changes wait, until space is freed there",
                self.path, error, describe_free(self.path),
            )  # fmt: skip
            self.full, self._checked = True, self.clock()
        return True

    def wrote(self) -> None:
        """A write at `path` went through: space is back, if it was full."""
        if self.full:
            self.full = False
            log.info("space is back on the filesystem of %s (%s): writes resume", self.path.parent,
                     describe_free(self.path))  # fmt: skip

    def check(self) -> None:
        """While full, at most every CHECK_EVERY seconds: room again counts as space back (a write
        that still fails says the disk is full again)."""
        if not self.full or self.clock() - self._checked < CHECK_EVERY:
            return
        self._checked = self.clock()
        free = free_bytes(self.path)
        if free is not None and free >= ROOM:
            self.wrote()
