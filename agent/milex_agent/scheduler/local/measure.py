"""What a local job's tasks use, measured by its runner: each task's process tree as the kernel counts
it when the task ends (wall time, CPU time, peak resident memory), and what the script's header asked."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from milex_common.files import atomic_write
from milex_common.usage import TaskUsage, Usage, memory_bytes, time_limit_seconds

USAGE_FILE = "usage.json"  # Usage, written by the runner before the job's final state


def run_measured(argv: Sequence[str], *, task: int | None, **popen: Any) -> tuple[int, TaskUsage]:
    """Run `argv` to its end; its exit status (negative: killed by that signal) and what it used."""
    started = time.monotonic()
    process = subprocess.Popen(list(argv), **popen)
    # wait4 rather than wait: the resources of the task and every descendant it waited for.
    _, status, resources = os.wait4(process.pid, 0)
    process.returncode = code = os.waitstatus_to_exitcode(status)
    used = TaskUsage(
        task=task,
        elapsed=time.monotonic() - started,
        cpu_time=resources.ru_utime + resources.ru_stime,
        max_rss=resources.ru_maxrss * 1024,  # KiB on Linux
    )
    return code, used


def requested(header: dict[str, str]) -> dict[str, Any]:
    """What the script's `#SBATCH` header asked for, as TaskUsage fields (a local job is given no
    more than the machine has, but its efficiency is judged against what it asked)."""
    cpus = header.get("cpus-per-task", "1")
    limit = header.get("time")
    return {
        "cpus": int(cpus) if cpus.isdecimal() else 1,
        "requested_memory": memory_bytes(header["mem"]) if "mem" in header else None,
        "time_limit": time_limit_seconds(limit) if limit else None,
    }


def write_usage(job_dir: Path, tasks: list[TaskUsage], state: str, header: dict[str, str]) -> None:
    """Keep what the job's tasks used, each with what the job asked for and how it ended."""
    asked = requested(header)
    rows = [msgspec.structs.replace(task, state=state, **asked) for task in tasks]
    atomic_write(job_dir / USAGE_FILE, msgspec.json.encode(Usage(tasks=rows)))


def read_usage(job_dir: Path) -> Usage | None:
    """What the runner kept; None when it kept nothing (a job cancelled, or that never ran)."""
    try:
        return msgspec.json.decode((job_dir / USAGE_FILE).read_bytes(), type=Usage)
    except (OSError, msgspec.DecodeError):
        return None
