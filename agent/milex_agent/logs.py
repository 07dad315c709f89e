"""Reading a job's stdout or stderr from an offset, in chunks, for `milex logs`."""

from __future__ import annotations

from pathlib import Path

from milex_common.protocol import LOG_CHUNK_BYTES, TrackedJob
from milex_common.slurm_values import array_indices

_ARRAY_LINE = "#SBATCH --array="


class LogNotFound(Exception):
    """The log cannot be named (an array job without a task) or read."""


def log_path(job: TrackedJob, array_task: int | None, stream: str) -> Path:
    """The file SLURM writes `stream` of `job` to, its `%j`/`%A`/`%a` patterns filled in."""
    pattern = job.stdout if stream == "out" else job.stderr
    if "%a" in pattern and array_task is None:
        raise LogNotFound(f"job {job.job_id} ({job.name}) is an array: say which task's log to read.")
    if "%a" not in pattern and array_task is not None:
        raise LogNotFound(
            f"job {job.job_id} ({job.name}) is not an array: it has no task {array_task}; "
            "read its log without one."
        )
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


def check_task(owner: TrackedJob, task: int, *, job: TrackedJob, asked: int) -> None:
    """LogNotFound unless `task` is one of `owner`'s array tasks, as its kept script's `--array` says;
    `asked` is the task of `job` the user named (`owner` is `job`, or the window of it holding the
    task). A script that cannot be read is trusted: its task's log is then simply empty."""
    spec = script_array_spec(owner.script)
    if spec is None or task in array_indices(spec)[0]:
        return
    tasks = f"; its tasks are {spec.partition('%')[0]}" if owner is job else ""
    raise LogNotFound(f"job {job.job_id} ({job.name}) has no task {asked}{tasks}.")


def script_array_spec(script: str) -> str | None:
    """The `--array` spec of the sbatch script kept at `script`, None if it cannot be read."""
    try:
        with open(script, encoding="utf-8", errors="replace") as file:
            for line in file:
                if line.startswith(_ARRAY_LINE):
                    return line[len(_ARRAY_LINE) :].strip()
                if line.strip() and not line.startswith("#"):
                    return None  # past the #SBATCH header: sbatch reads no option below
    except OSError:
        return None
    return None
