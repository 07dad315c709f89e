"""The process behind one `local` job: waits for its dependencies, runs its script, records the outcome.

Started by `LocalScheduler.submit` as `python -m milex_agent.scheduler.local.runner JOB_DIR LOCK_FD`.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

from milex_agent.scheduler.local.measure import run_measured, write_usage
from milex_agent.scheduler.local.scheduler import parse_header
from milex_agent.scheduler.local.store import (
    SCRIPT_FILE,
    STATE_LOCK,
    LocalJobSpec,
    append_task,
    ended_tasks,
    file_lock,
    read_record,
    read_spec,
    read_status,
    write_record,
)
from milex_common.model import JobState, TaskStatus, dependency_verdict
from milex_common.slurm_values import array_indices
from milex_common.usage import TaskUsage

# SLURM's filename patterns (with an optional zero-padding width, as in `%3a`).
_PATTERN = re.compile(r"%(\d*)([%AajxuN])")
_NO_ARRAY_INDEX = "4294967294"  # what SLURM writes for %a in a job that is not an array
_POLL_FIRST, _POLL_MAX = 0.05, 0.5  # seconds between dependency checks, growing to the max


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    job_dir = Path(args[0])
    if len(args) > 1:
        # The runner lock, taken by the submitter; held until we exit, never passed to scripts.
        os.set_inheritable(int(args[1]), False)
    with contextlib.suppress(PermissionError):
        os.setsid()  # our own process group: cancel signals the runner and its scripts together
    if not advance(job_dir, {JobState.PENDING}, pid=os.getpid()):
        return 0  # cancelled before we started
    try:
        run_job(job_dir, read_spec(job_dir))
    except Exception as error:  # the runner's top level: any failure must reach the job's record
        reason = f"local runner failed: {error}"
        advance(job_dir, {JobState.PENDING, JobState.RUNNING}, state=JobState.FAILED, reason=reason, end=True)
        raise
    return 0


def run_job(job_dir: Path, spec: LocalJobSpec) -> None:
    """Wait for the dependencies, then run every task and record how the job ended."""
    if not wait_for_dependencies(spec, job_dir.parent):
        advance(
            job_dir,
            {JobState.PENDING},
            state=JobState.CANCELLED,
            reason="DependencyNeverSatisfied",
            end=True,
        )
        return
    if not advance(job_dir, {JobState.PENDING}, state=JobState.RUNNING, reason=""):
        return
    code, used = run_tasks(spec, job_dir)
    header = parse_header((job_dir / SCRIPT_FILE).read_text())
    write_usage(job_dir, used, (JobState.COMPLETED if code == 0 else JobState.FAILED).value, header)
    if code == 0:
        advance(job_dir, {JobState.RUNNING}, state=JobState.COMPLETED, exit_code=0, reason="")
    else:
        changes: dict[str, Any] = {"exit_code": code, "reason": "NonZeroExitCode"}
        advance(job_dir, {JobState.RUNNING}, state=JobState.FAILED, **changes)


def advance(job_dir: Path, allowed: set[JobState], *, end: bool = False, **changes: Any) -> bool:
    """Apply `changes` to the record if the job is still in one of `allowed` (else a cancel won);
    with `end`, an array's tasks not finished end in the job's new state."""
    with file_lock(job_dir / STATE_LOCK):
        record = read_record(job_dir)
        if record.state not in allowed:
            return False
        if end:
            changes["tasks"] = ended_tasks(record.tasks, changes["state"])
        write_record(job_dir, record, **changes)
    return True


def wait_for_dependencies(spec: LocalJobSpec, state_dir: Path) -> bool:
    """Block until the dependencies allow the job to start (True) or show they never will (False)."""
    delay = _POLL_FIRST
    while True:
        states = [read_status(state_dir, job_id).state for job_id in spec.after]
        # A job gone from the state directory will never satisfy anything.
        states = [JobState.FAILED if s is JobState.UNKNOWN else s for s in states]
        verdict = dependency_verdict(spec.dependency_type, states)
        if verdict is not None:
            return verdict
        time.sleep(delay)
        delay = min(delay * 1.5, _POLL_MAX)


def run_tasks(spec: LocalJobSpec, job_dir: Path) -> tuple[int, list[TaskUsage]]:
    """Run the script once, or once per array index (up to the `%N` limit, else CPUs, at a time),
    recording each task's state as it starts and ends.

    Returns the highest exit code (0 when every run succeeded), and what each run used.
    """
    script = job_dir / SCRIPT_FILE
    if spec.array is None:
        code, used = run_task(spec, script, None)
        return code, [used]
    indices, limit = array_indices(spec.array)
    workers = max(1, min(len(indices), limit or os.cpu_count() or 1))

    def task(index: int) -> tuple[int, TaskUsage]:
        append_task(job_dir, TaskStatus(index=index, state=JobState.RUNNING))
        code, used = run_task(spec, script, index)
        ended = JobState.COMPLETED if code == 0 else JobState.FAILED
        reason = "" if code == 0 else "NonZeroExitCode"
        # After a cancel, no longer read: the cancel ended the tasks not ended then.
        append_task(job_dir, TaskStatus(index=index, state=ended, exit_code=code, reason=reason))
        return code, used

    with ThreadPoolExecutor(max_workers=workers) as pool:
        runs = list(pool.map(task, indices))
    return max((code for code, _ in runs), default=0), [used for _, used in runs]


def run_task(spec: LocalJobSpec, script: Path, index: int | None) -> tuple[int, TaskUsage]:
    """Run the script with bash for one task; a death by signal N counts as exit code 128 + N."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    environment.update(slurm_environment(spec, index))
    default = "slurm-%j.out" if index is None else "slurm-%A_%a.out"
    output = log_path(spec.output or default, spec, index)
    error = log_path(spec.error, spec, index) if spec.error else output
    with ExitStack() as files:
        stdout = files.enter_context(_open_log(output))
        stderr = stdout if error == output else files.enter_context(_open_log(error))
        code, used = run_measured(
            ["bash", str(script)],
            task=index,
            cwd=spec.submit_dir,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
    return (code if code >= 0 else 128 - code), used


def slurm_environment(spec: LocalJobSpec, index: int | None) -> dict[str, str]:
    """The SLURM_* variables a script sees, as sbatch would set them."""
    environment = {
        "SLURM_JOB_ID": spec.job_id,
        "SLURM_JOBID": spec.job_id,
        "SLURM_JOB_NAME": spec.job_name,
        "SLURM_SUBMIT_DIR": spec.submit_dir,
    }
    if index is not None and spec.array is not None:
        indices, _ = array_indices(spec.array)
        environment.update(
            SLURM_ARRAY_JOB_ID=spec.job_id,
            SLURM_ARRAY_TASK_ID=str(index),
            SLURM_ARRAY_TASK_COUNT=str(len(indices)),
            SLURM_ARRAY_TASK_MIN=str(indices[0]),
            SLURM_ARRAY_TASK_MAX=str(indices[-1]),
        )
    return environment


def expand_pattern(pattern: str, spec: LocalJobSpec, index: int | None) -> str:
    """A log file name with SLURM's `%j %A %a %x %u %N %%` replaced; other `%` letters kept."""
    values = {
        "%": lambda: "%",
        "j": lambda: spec.job_id,
        "A": lambda: spec.job_id,
        "a": lambda: _NO_ARRAY_INDEX if index is None else str(index),
        "x": lambda: spec.job_name,
        "u": _user,
        "N": socket.gethostname,
    }

    def substitute(match: re.Match[str]) -> str:
        width, letter = match.groups()
        value = values[letter]()
        return value.zfill(int(width)) if width and value.isdigit() else value

    return _PATTERN.sub(substitute, pattern)


def log_path(pattern: str, spec: LocalJobSpec, index: int | None) -> Path:
    """Where a task's log goes: the expanded pattern, relative to the submission directory."""
    return Path(spec.submit_dir) / expand_pattern(pattern, spec, index)


def _open_log(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "wb")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


if __name__ == "__main__":
    sys.exit(main())
