"""A FUSE passthrough filesystem whose file locks fail the way real ones do, for the tests of the agent's
lock check: refused with an errno (Lustre without `-o flock`: ENOSYS), granted to every process
(faked), for flock and POSIX locks alike or for POSIX locks alone, or kept by the kernel for this mount
alone (`node`: two mounts of one directory are two login nodes whose locks do not see each other's,
as NFS with `local_lock=all` or Lustre with `localflock`).

Run as root: `python tests/e2e/lockfs.py ROOT MOUNTPOINT MODE` (in the foreground; `umount
MOUNTPOINT` ends it), as `mounted` in tests/e2e/test_unreliable_locks.py does. Files it creates
belong to the calling user, so a login user can use it too (`allow_other`, the kernel checking
permissions). Needs fuse3 (deploy/setup.sh) and mfusepy (the `test` extra).
"""

from __future__ import annotations

import errno
import os
import sys

import mfusepy as fuse

MODES = ("ENOSYS", "ENOLCK", "EOPNOTSUPP", "fake", "fake-posix", "node")
STAT_KEYS = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino")


class Passthrough(fuse.Operations):  # type: ignore[misc]
    """`root` as it is, but for its locks: refused with errno `mode`, or granted to all (`fake`)."""

    use_ns = True

    def __init__(self, root: str, mode: str) -> None:
        self.root = root
        self.mode = mode

    def lock(self, path: str, fh: int, cmd: int, lock: object) -> int:
        """POSIX (fcntl) locks, SQLite's."""
        if self.mode.startswith("fake"):
            return 0  # granted, whoever holds it already
        raise fuse.FuseOSError(getattr(errno, self.mode))

    def flock(self, path: str, fh: int, op: int) -> int:
        return self.lock(path, fh, op, None)

    def _path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _owned(self, path: str) -> None:
        uid, gid, _ = fuse.fuse_get_context()
        os.lchown(self._path(path), uid, gid)

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        info = os.lstat(self._path(path)) if fh is None else os.fstat(fh)
        times = {f"st_{t}time": getattr(info, f"st_{t}time_ns") for t in "amc"}
        return {key: getattr(info, key) for key in STAT_KEYS} | times

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._path(path))]

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._path(path), mode)
        self._owned(path)
        return 0

    def create(self, path: str, mode: int, fi: object = None) -> int:
        fd = os.open(self._path(path), os.O_RDWR | os.O_CREAT, mode)
        self._owned(path)
        return fd

    def open(self, path: str, flags: int) -> int:
        return os.open(self._path(path), flags)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        os.truncate(self._path(path) if fh is None else fh, length)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        os.fsync(fh)
        return 0

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    def unlink(self, path: str) -> int:
        os.unlink(self._path(path))
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._path(path))
        return 0

    def rename(self, old: str, new: str) -> int:
        os.rename(self._path(old), self._path(new))
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._path(path), mode)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        os.utime(self._path(path), ns=times)
        return 0


class KernelFlock(Passthrough):
    """Only POSIX locks fail: flock is the kernel's own, which works (`fake-posix`)."""

    flock = None


class MountLocal(Passthrough):
    """Locks the kernel keeps for this mount's files, which exclude each other within this mount only
    (`node`): a FUSE filesystem without lock operations gets them."""

    lock = None
    flock = None


if __name__ == "__main__":
    source, target, how = sys.argv[1:4]
    assert how in MODES, f"mode {how!r}: one of {MODES}"
    kind = {"fake-posix": KernelFlock, "node": MountLocal}.get(how, Passthrough)
    operations = kind(source, how.removesuffix("-posix"))
    fuse.FUSE(operations, target, foreground=True, allow_other=True, default_permissions=True)
