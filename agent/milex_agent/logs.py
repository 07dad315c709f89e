"""Reading a job's stdout or stderr from an offset, in chunks, for `milex logs`."""

from __future__ import annotations

from pathlib import Path

from milex_common.protocol import LOG_CHUNK_BYTES, TrackedJob


class LogNotFound(Exception):
    """The log cannot be named (an array job without a task) or read."""


def log_path(job: TrackedJob, array_task: int | None, stream: str) -> Path:
    """The file SLURM writes `stream` of `job` to, its `%j`/`%A`/`%a` patterns filled in."""
    pattern = job.stdout if stream == "out" else job.stderr
    if "%a" in pattern and array_task is None:
        raise LogNotFound(f"job {job.job_id} ({job.name}) is an array: say which task's log to read.")
    return Path(pattern.replace("%A", job.job_id).replace("%a", str(array_task)).replace("%j", job.job_id))


def read_chunk(path: Path, offset: int, limit: int = LOG_CHUNK_BYTES) -> bytes:
    """Up to `limit` bytes of `path` from `offset`; empty when nothing is there yet."""
    try:
        with path.open("rb") as file:
            file.seek(offset)
            return file.read(limit)
    except FileNotFoundError:
        return b""
    except OSError as error:
        raise LogNotFound(f"cannot read {path}: {error.strerror}") from None
