"""A record file's replacement begun ahead: its temporary file made while the command waits for
something else, then filled and moved into place in one step once the content is known.

On the disks measured (ext4, shared), creating a file is most of a small record's write (~0.1 to
0.4 ms, more than writing its bytes): a submission makes its run record's file while the agent
submits, so that only the bytes and the rename follow the agent's answer. The file is what
milex_common.files.atomic_write makes (same directory and name pattern, mode 0644); not flushed to
disk (the run records are not: the agent's journal holds the same ids durably).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO

from milex_common.files import temporary_beside

MODE = 0o644


class PreparedWrite:
    """The next version of the file at `path`, its temporary file made by `prepare`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._temporary = ""

    @property
    def ready(self) -> bool:
        """Whether `prepare` made the temporary file (and `commit` or `discard` has not used it yet)."""
        return self._fd is not None

    def prepare(self) -> None:
        """Make the temporary file now. If that fails (a full disk, a directory gone), nothing is made:
        the write is then done the usual way, which says what is wrong."""
        if self.ready:
            return
        try:
            fd, self._temporary = temporary_beside(self.path)
        except OSError:
            return
        self._fd = fd
        try:
            os.fchmod(fd, MODE)
        except OSError:
            self.discard()

    def commit(self, data: bytes) -> None:
        """Replace the file at `path` with `data` in one step (the old one stays whole if that fails);
        OSError when it cannot be written, the temporary file removed."""
        assert self._fd is not None, "commit() of a write that was not prepared"
        fd, self._fd = self._fd, None
        try:
            with os.fdopen(fd, "wb") as file:
                _fill(file, data)
            os.replace(self._temporary, self.path)
        except BaseException:
            Path(self._temporary).unlink(missing_ok=True)
            raise

    def discard(self) -> None:
        """Remove the temporary file of a write that will not be made."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.close(fd)
        Path(self._temporary).unlink(missing_ok=True)


def _fill(file: IO[bytes], data: bytes) -> None:
    """Write `data` (its own function: tests stand a full disk in for it)."""
    file.write(data)
