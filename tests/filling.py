"""Filling a filesystem for real, for the tests of a full disk (unit and end to end)."""

from __future__ import annotations

import errno
from pathlib import Path


def fill(directory: Path) -> Path:
    """Write a file into `directory` until its filesystem is full; the file, to free the space later."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as file:
        try:
            while True:
                file.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler
