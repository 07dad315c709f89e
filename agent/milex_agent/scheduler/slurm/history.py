"""Where SLURM keeps jobs that squeue has forgotten: accounting (sacct), else the job-completion log."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from milex_agent.scheduler.slurm.command import run_command
from milex_agent.scheduler.slurm.limits import config_values
from milex_agent.scheduler.slurm.output import (
    TaskRow,
    combine,
    ended_by_comment,
    jobcomp_line,
    sacct_rows,
    slurm_time,
    statuses,
    submit_times,
)
from milex_common.model import JobStatus

# Job ids per sacct call: one argument holds at most 128 KiB, so an agent back after a long absence
# with 20,000 forgotten jobs would fail every poll (E2BIG) asking about them all at once.
SACCT_IDS = 5000
STANDARD_TIME = {"SLURM_TIME_FORMAT": "standard"}  # times as slurm_time reads them


class SlurmHistory:
    """Looks finished jobs up, remembering which sources this cluster lacks."""

    def __init__(self) -> None:
        self.accounting = True
        self.jobcomp_log: Path | bool | None = True  # True: not looked up yet
        self.jobcomp: JobCompLog | None = None

    def states(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """What is known of `job_ids` after they left the controller's memory (those found)."""
        found = self._from_sacct(job_ids) if self.accounting else {}
        missing = [job_id for job_id in job_ids if job_id not in found]
        if missing:
            found.update(self._from_jobcomp(missing))
        return found

    def given_again(self, job_ids: Sequence[str], booted: float) -> set[str]:
        """Of `job_ids`, found by `states`, those whose record was submitted after `booted`, when the
        controller last started: ids that a controller restarted from older state handed out again,
        whose record is another job's (sacct shows an id's latest record)."""
        submitted: dict[str, float] = {}
        if self.accounting:
            for start in range(0, len(job_ids), SACCT_IDS):
                chunk = job_ids[start : start + SACCT_IDS]
                # Submit in the standard format whatever the user's SLURM_TIME_FORMAT.
                text = self._sacct("--format=JobID,Submit", f"--jobs={','.join(chunk)}", env=STANDARD_TIME)
                submitted.update(submit_times(text or ""))
        if self.jobcomp is not None:
            for job_id in job_ids:
                at = slurm_time(self.jobcomp.submitted.get(job_id, ""))
                if job_id not in submitted and at is not None:
                    submitted[job_id] = at
        return {job_id for job_id in job_ids if submitted.get(job_id, booted) > booted}

    def find(self, comments: set[str]) -> dict[str, str]:
        """The ids of the jobs of the last week accounting has with these comments that have ended (it
        has comments only where the cluster stores them, AccountingStoreFlags=job_comment): a job
        accepted while the controller did not answer may have ended and left squeue before it is
        looked up. One accounting has as pending or running, while the controller lacks it, was lost
        by a controller restarted from older state: not found."""
        if not self.accounting:
            return {}
        text = self._sacct("--starttime=now-7days", "--format=JobID,Comment,State")
        return ended_by_comment(text or "", comments)

    def _from_sacct(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        found: dict[str, JobStatus] = {}
        for start in range(0, len(job_ids), SACCT_IDS):
            chunk = job_ids[start : start + SACCT_IDS]
            text = self._sacct("--format=JobID,State,ExitCode", f"--jobs={','.join(chunk)}")
            if text is None:
                break
            found.update(statuses(chunk, sacct_rows(text)))
        return found

    def _sacct(self, *options: str, env: Mapping[str, str] | None = None) -> str | None:
        """What `sacct` prints for the allocations (not steps) `options` select; None when it fails."""
        result = run_command(["sacct", "--noheader", "--parsable2", "--allocations", *options], env=env)
        if result.returncode != 0:
            # "Slurm accounting storage is disabled": ask once, not at every poll.
            self.accounting = "disabled" not in result.message
            return None
        return result.stdout

    def _from_jobcomp(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        if self.jobcomp is None:
            path = self._jobcomp_path()
            if path is None:
                return {}
            self.jobcomp = JobCompLog(path)
        return self.jobcomp.states(job_ids)

    def _jobcomp_path(self) -> Path | None:
        if self.jobcomp_log is True:
            self.jobcomp_log = None
            result = run_command(["scontrol", "show", "config"])
            config = config_values(result.stdout)
            if config.get("JobCompType") == "jobcomp/filetxt" and config.get("JobCompLoc"):
                self.jobcomp_log = Path(config["JobCompLoc"])
        return self.jobcomp_log if isinstance(self.jobcomp_log, Path) else None


class JobCompLog:
    """The job-completion text log, read as it grows: each poll reads only the lines added since the
    last, and keeps the final states of this user's jobs (the log holds everybody's)."""

    def __init__(self, path: Path, uid: int | None = None) -> None:
        self.path = path
        self.uid = str(os.getuid() if uid is None else uid)
        self.finished: dict[str, dict[str, TaskRow]] = defaultdict(dict)  # by job id, then task
        self.submitted: dict[str, str] = {}  # the SubmitTime of each job's last line, as printed
        self._offset = 0
        self._inode = 0

    def states(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """The final states of those of `job_ids` the log has recorded."""
        self._read_new_lines()
        return {
            job_id: combine(job_id, self.finished[job_id].values())
            for job_id in job_ids
            if job_id in self.finished
        }

    def _read_new_lines(self) -> None:
        try:
            with self.path.open("rb") as log:
                stat = os.fstat(log.fileno())
                if stat.st_ino != self._inode or stat.st_size < self._offset:  # rotated or truncated
                    self._inode, self._offset = stat.st_ino, 0
                log.seek(self._offset)
                added = log.read()
        except OSError:
            return
        complete = added[: added.rfind(b"\n") + 1]  # a line still being written is read next time
        self._offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            uid, row, submitted = jobcomp_line(line)
            if uid == self.uid:
                # By task: a requeued job's (or task's) last line replaces its earlier ones.
                self.finished[row.job_id][row.task] = row
                self.submitted[row.job_id] = submitted
