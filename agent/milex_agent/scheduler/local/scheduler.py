"""The `local` scheduler: jobs run as detached processes on this machine, recorded in a state dir."""

from __future__ import annotations

import functools
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path

import msgspec

from milex_agent.scheduler.base import Limits, SubmitCall
from milex_agent.scheduler.local.measure import read_usage
from milex_agent.scheduler.local.store import (
    RUNNER_LOCK,
    RUNNER_LOG,
    SCRIPT_FILE,
    SPEC_FILE,
    STATE_FILE,
    STATE_LOCK,
    LocalJobRecord,
    LocalJobSpec,
    ended_tasks,
    file_lock,
    job_directory,
    read_record,
    read_spec,
    read_status,
    runner_alive,
    write_record,
)
from milex_common import slurm_values
from milex_common.errors import InvalidValue, SchedulerError, SubmitError
from milex_common.files import atomic_write
from milex_common.model import DEPENDENCY_TYPES, JobState, JobStatus, TaskStatus
from milex_common.usage import NOT_RECORDED, Usage

# The `#SBATCH` options the local scheduler reads (the resources for its jobs' usage); long names, and
# short ones mapped to them.
_HEADER_OPTIONS = ("output", "error", "array", "job-name", "cpus-per-task", "mem", "time")
_SHORT_OPTIONS = {
    "-o": "output",
    "-e": "error",
    "-a": "array",
    "-J": "job-name",
    "-c": "cpus-per-task",
    "-t": "time",
}


class LocalScheduler:
    """Runs each job as a detached runner process that keeps its record under `state_dir`."""

    name = "local"
    parallel_submissions = 1  # ids are allocated from files, one submission at a time

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir.absolute()

    def start_submit(self, call: SubmitCall) -> Callable[[], str]:
        """All of `submit` is done by the function returned (ids come from files, one at a time)."""
        return functools.partial(self.submit, call)

    def submit(self, call: SubmitCall) -> str:
        script, after = call.script, call.after
        text, options = _read_script(call)
        self._check_dependencies(after)
        job_id = self._allocate_id()
        job_dir = self.state_dir / job_id
        (job_dir / SCRIPT_FILE).write_text(text)
        spec = LocalJobSpec(
            job_id=job_id,
            script=str(script.resolve()),
            submit_dir=os.getcwd(),
            after=list(after),
            dependency_type=call.dependency_type,
            comment=call.comment,
            job_name=options.get("job-name", script.stem),
            array=options.get("array"),
            output=options.get("output"),
            error=options.get("error"),
            submitted=time.time(),
        )
        atomic_write(job_dir / SPEC_FILE, msgspec.json.encode(spec))
        indices = slurm_values.array_indices(spec.array)[0] if spec.array else []
        record = LocalJobRecord(
            job_id=job_id,
            state=JobState.PENDING,
            reason="Dependency" if after else "",
            tasks=[TaskStatus(index=index, state=JobState.PENDING) for index in indices],
        )
        _start_runner(job_dir, record)
        return job_id

    def states(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        return {job_id: read_status(self.state_dir, job_id) for job_id in job_ids}

    def usage(self, job_ids: Sequence[str]) -> dict[str, Usage]:
        """What the runners measured; a job that ended without running (cancelled) has nothing."""
        found = {}
        for job_id in job_ids:
            job_dir = job_directory(self.state_dir, job_id)
            if job_dir is not None and read_status(self.state_dir, job_id).state.finished:
                found[job_id] = read_usage(job_dir) or Usage(note=NOT_RECORDED)
        return found

    def lookup(self, comments: Sequence[str]) -> dict[str, str]:
        wanted = set(comments)
        found: dict[str, str] = {}
        for spec_file in self.state_dir.glob(f"*/{SPEC_FILE}") if wanted else ():
            spec = read_spec(spec_file.parent)
            if spec.comment in wanted:
                found[spec.comment] = spec.job_id
        return found

    def boot_time(self) -> float | None:
        return None

    def confirm(self, accepted: Mapping[str, str], booted: float) -> set[str]:
        """Its store loses nothing it accepted: a job is missing only if its directory was removed."""
        return set(accepted) - self.lookup(list(accepted)).keys()

    def limits(self, account: str, qos: str | None) -> Limits:
        """None: a machine without SLURM takes every job (its runner starts them as it can)."""
        return Limits()

    def close(self) -> None:
        """Nothing: each call opens and closes what it uses."""

    def cancel(self, job_ids: Sequence[str]) -> None:
        unknown = [job_id for job_id in job_ids if not self._cancel_one(job_id)]
        if unknown:
            raise SchedulerError(
                f"cannot cancel {', '.join(unknown)}: no such local job under {self.state_dir}."
            )

    def _cancel_one(self, job_id: str) -> bool:
        """Mark `job_id` CANCELLED and stop its runner; False if there is no such job."""
        job_dir = job_directory(self.state_dir, job_id)
        if job_dir is None or not (job_dir / STATE_FILE).is_file():
            return False
        with file_lock(job_dir / STATE_LOCK):
            record = read_record(job_dir)
            if record.state.finished:
                return True
            tasks = ended_tasks(record.tasks, JobState.CANCELLED)
            write_record(job_dir, record, state=JobState.CANCELLED, reason="cancelled", tasks=tasks)
        # A runner that has not recorded its pid yet sees CANCELLED before it starts anything.
        if record.pid is not None and runner_alive(job_dir):
            _terminate_group(record.pid)
        return True

    def _check_dependencies(self, after: Sequence[str]) -> None:
        unknown = [
            job_id
            for job_id in after
            if (job_dir := job_directory(self.state_dir, job_id)) is None
            or not (job_dir / SPEC_FILE).is_file()
        ]
        if unknown:
            raise SubmitError(
                f"dependency {', '.join(unknown)} is not a job of the local scheduler "
                f"(state directory {self.state_dir}); submit the jobs it depends on first."
            )

    def _allocate_id(self) -> str:
        """The next job id, its directory created; safe across processes through a lock file."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        counter = self.state_dir / "last-id"
        with file_lock(self.state_dir / "id.lock"):
            try:
                last = int(counter.read_text())
            except (FileNotFoundError, ValueError):
                names = (path.name for path in self.state_dir.iterdir())
                last = max((int(name) for name in names if name.isdecimal()), default=0)
            last += 1
            while (self.state_dir / str(last)).exists():  # a counter lost or reset: skip used ids
                last += 1
            (self.state_dir / str(last)).mkdir()
            atomic_write(counter, str(last).encode())
        return str(last)


def parse_header(text: str) -> dict[str, str]:
    """The `#SBATCH` options of a script's header (up to its first command), by long name."""
    options: dict[str, str] = {}
    for line in text.splitlines()[1:]:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
        words = shlex.split(stripped[7:]) if stripped.startswith("#SBATCH") else []
        if words:
            flag, equals, value = words[0].partition("=")
            name = flag[2:] if flag.startswith("--") else _SHORT_OPTIONS.get(flag, "")
            if not equals and len(words) > 1:
                value = words[1]
            if name in _HEADER_OPTIONS and value:
                options[name] = value
    return options


def _read_script(call: SubmitCall) -> tuple[str, dict[str, str]]:
    """The script's text (read unless given) and header options; SubmitError for anything sbatch
    would refuse."""
    script, kind = call.script, call.dependency_type
    if call.after and kind not in DEPENDENCY_TYPES:
        raise SubmitError(f"dependency type {kind!r} is not one of {', '.join(DEPENDENCY_TYPES)}.")
    try:
        text = script.read_text() if call.text is None else call.text
        options = parse_header(text)
        slurm_values.validate_array(options.get("array", "1"))
    except OSError as error:
        raise SubmitError(f"cannot read the job script {script}: {error.strerror}.") from None
    except (ValueError, InvalidValue) as error:
        raise SubmitError(f"the #SBATCH lines of {script} are not valid: {error}") from None
    return text, options


def _start_runner(job_dir: Path, record: LocalJobRecord) -> None:
    """Start the job's runner, detached (it outlives us and is never our zombie), holding its lock."""
    with file_lock(job_dir / RUNNER_LOCK) as lock_fd:
        # Written under the lock, so nobody sees a pending job without a live runner.
        write_record(job_dir, record)
        runner = [sys.executable, "-m", "milex_agent.scheduler.local.runner", str(job_dir)]
        with open(job_dir / RUNNER_LOG, "ab") as log:
            # `sh` puts the runner in the background and exits at once: the runner is orphaned
            # to init, and inherits the already locked descriptor, so the lock never lapses.
            shell = subprocess.run(
                ["/bin/sh", "-c", '"$@" &', "sh", *runner, str(lock_fd)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                pass_fds=(lock_fd,),
                cwd=job_dir,
                start_new_session=True,
                check=False,
            )
    if shell.returncode != 0:
        write_record(job_dir, record, state=JobState.FAILED, reason="runner did not start")
        raise SchedulerError(f"could not start the local runner; see {job_dir / RUNNER_LOG}.")


def _terminate_group(pid: int) -> None:
    """SIGTERM the runner's process group (its scripts included), or the runner if it has none yet."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
