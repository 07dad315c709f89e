"""The SLURM scheduler: sbatch to submit, one squeue call for the states of all jobs, scancel."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from milex.agent.scheduler.command import run_command
from milex.agent.scheduler.slurm_history import SlurmHistory
from milex.common.errors import SchedulerError, SchedulerUnavailable, SubmitError
from milex.common.model import JobState, JobStatus

# Fields of `squeue --Format`, each followed by a separator no value contains. Width 0 prints a
# value whole and unpadded: with thousands of finished jobs still in the controller's memory,
# padded fields made squeue spend most of a poll formatting spaces (and us reading them).
_SQUEUE_FIELDS = ("JobID", "ArrayJobID", "State", "Reason", "exit_code")
_SQUEUE_FORMAT = ",".join(f"{field}:0|" for field in _SQUEUE_FIELDS)
_ACTIVE_ORDER = (JobState.RUNNING, JobState.PENDING)
MAX_LISTED_JOBS = 500
Row = tuple[str, str, JobState, str, "int | None"]  # job id, array job id, state, reason, exit code


class SlurmScheduler:
    """Drives a SLURM cluster through its client commands on this host."""

    name = "slurm"
    # slurmctld serves several sbatch calls at once; more than a few only queue on its locks.
    parallel_submissions = 4

    def __init__(self) -> None:
        self.history = SlurmHistory()

    def submit(
        self,
        script: Path,
        *,
        text: str | None = None,
        after: Sequence[str] = (),
        dependency_type: str = "afterok",
        comment: str = "",
    ) -> str:
        argv = ["sbatch", "--parsable"]
        if after:
            argv.append(f"--dependency={dependency_type}:{':'.join(after)}")
        if comment:
            argv.append(f"--comment={comment}")
        if text is None:
            argv.append(str(script))
        result = run_command(argv, stdin=text)  # sbatch reads a script from stdin when given no file
        if result.unanswered:  # it may have been accepted: the caller looks it up by its comment
            raise SchedulerUnavailable(f"sbatch got no answer for {script.name}: {result.message}")
        if result.returncode != 0:
            raise SubmitError(f"sbatch refused {script.name}: {result.message}")
        # --parsable prints `jobid` or `jobid;cluster`.
        return result.stdout.strip().split(";")[0]

    def states(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        if not job_ids:
            return {}
        argv = ["squeue", "--noheader", "--array", "--states=all", f"--Format={_SQUEUE_FORMAT}"]
        # Past a few hundred ids, ask for all of the user's jobs and pick ours: one argument holds
        # at most 128 KiB, and squeue filters a long id list slower than we do.
        many = len(job_ids) > MAX_LISTED_JOBS
        result = run_command([*argv, "--me"] if many else [*argv, f"--jobs={','.join(job_ids)}"])
        if result.returncode != 0 and "Invalid job id" not in result.stderr:
            raise SchedulerError(f"squeue failed: {result.message}")
        # Rows by the job id they belong to: their own, or their array's (one pass, not one per job).
        rows_of: dict[str, list[Row]] = defaultdict(list)
        for line in result.stdout.splitlines():
            if line.strip():
                row = _parse_row(line)
                rows_of[row[0]].append(row)
                if row[1] != row[0]:
                    rows_of[row[1]].append(row)
        states = {job_id: _combine(job_id, rows_of.get(job_id, [])) for job_id in job_ids}
        forgotten = [job_id for job_id, status in states.items() if status.state is JobState.UNKNOWN]
        if forgotten:
            # Only jobs that ended longer ago than MinJobAge: rare, so a second query is fine.
            states.update(self.history.states(forgotten))
        return states

    def lookup(self, comments: Sequence[str]) -> dict[str, str]:
        if not comments:
            return {}
        wanted = set(comments)
        argv = ["squeue", "--noheader", "--states=all", "--me", "--Format=JobID:0|,Comment:0|"]
        result = run_command(argv)
        if result.returncode != 0:
            error = SchedulerUnavailable if result.unanswered else SchedulerError
            raise error(f"squeue failed: {result.message}")
        found: dict[str, str] = {}
        for line in result.stdout.splitlines():
            job_id, _, rest = line.partition("|")
            comment = rest.rpartition("|")[0].strip()
            if comment in wanted:
                # An array's tasks share the comment; the array's own id is the one we gave out.
                found.setdefault(comment, job_id.strip().split("_")[0])
        return found

    def cancel(self, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        result = run_command(["scancel", *job_ids])
        if result.returncode != 0:
            raise SchedulerError(f"scancel {' '.join(job_ids)} failed: {result.message}")


def _parse_row(line: str) -> Row:
    job_id, array_job_id, state, reason, exit_code, *_ = (part.strip() for part in line.split("|"))
    return job_id, array_job_id, JobState.from_slurm(state), reason, _exit_code(exit_code)


def _exit_code(text: str) -> int | None:
    """`3:0` (code:signal, as scontrol prints it) or a raw wait status (as squeue prints it)."""
    code, colon, signal = text.partition(":")
    if not code.isdigit():
        return None
    if colon:
        return int(code) or (128 + int(signal) if signal.isdigit() and int(signal) else 0)
    status = int(code)
    # A raw wait status: the exit code is its high byte, or 128 + the signal that killed the job.
    return 128 + (status & 0x7F) if status & 0x7F else status >> 8


def _combine(job_id: str, rows: list[Row]) -> JobStatus:
    """One status for a job from its squeue rows (several for the tasks of an array)."""
    if not rows:
        return JobStatus(job_id=job_id, state=JobState.UNKNOWN, reason="no longer known to squeue")
    states = [row[2] for row in rows]
    for active in _ACTIVE_ORDER:
        if active in states:
            return JobStatus(job_id=job_id, state=active, reason=_first_reason(rows, active))
    failed = [row for row in rows if row[2] is not JobState.COMPLETED]
    worst = failed[0] if failed else rows[0]
    codes = [row[4] for row in rows if row[4]]
    return JobStatus(
        job_id=job_id,
        state=worst[2],
        exit_code=max(codes) if codes else (0 if not failed else None),
        reason=_first_reason(rows, worst[2]),
    )


def _first_reason(rows: list[Row], state: JobState) -> str:
    reason = next((row[3] for row in rows if row[2] is state), "")
    return "" if reason == "None" else reason
