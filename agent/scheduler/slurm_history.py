"""Where SLURM keeps jobs that squeue has forgotten: accounting (sacct), else the job-completion log."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from milex.agent.scheduler.command import run_command
from milex.common.model import JobState, JobStatus

_FIELD = re.compile(r"(\w+)=(\S*)")


class SlurmHistory:
    """Looks finished jobs up, remembering which sources this cluster lacks."""

    def __init__(self) -> None:
        self.accounting = True
        self.jobcomp_log: Path | bool | None = True  # True: not looked up yet

    def states(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """What is known of `job_ids` after they left the controller's memory (those found)."""
        found = self._from_sacct(job_ids) if self.accounting else {}
        missing = [job_id for job_id in job_ids if job_id not in found]
        if missing:
            found.update(self._from_jobcomp(missing))
        return found

    def _from_sacct(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        argv = ["sacct", "--noheader", "--parsable2", "--allocations", "--format=JobID,State,ExitCode"]
        result = run_command([*argv, f"--jobs={','.join(job_ids)}"])
        if result.returncode != 0:
            # "Slurm accounting storage is disabled": ask once, not at every poll.
            self.accounting = "disabled" not in result.message
            return {}
        found: dict[str, JobStatus] = {}
        for line in result.stdout.splitlines():
            job_id, state, exit_code = [*line.split("|"), "", "", ""][:3]
            base = job_id.split("_")[0]
            if base in job_ids and base not in found:
                code = exit_code.split(":")[0]
                found[base] = JobStatus(
                    job_id=base,
                    state=JobState.from_slurm(state),
                    exit_code=int(code) if code.isdigit() else None,
                )
        return found

    def _from_jobcomp(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        log = self._jobcomp_path()
        if log is None:
            return {}
        wanted = set(job_ids)
        found: dict[str, JobStatus] = {}
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            return {}
        for line in lines:
            fields = dict(_FIELD.findall(line))
            job_id = fields.get("JobId", "")
            if job_id in wanted:
                code = fields.get("ExitCode", "").split(":")[0]
                found[job_id] = JobStatus(
                    job_id=job_id,
                    state=JobState.from_slurm(fields.get("JobState", "")),
                    exit_code=int(code) if code.isdigit() else None,
                )
        return found

    def _jobcomp_path(self) -> Path | None:
        if self.jobcomp_log is True:
            self.jobcomp_log = None
            result = run_command(["scontrol", "show", "config"])
            config = dict(
                (key.strip(), value.strip())
                for key, _, value in (line.partition("=") for line in result.stdout.splitlines())
            )
            if config.get("JobCompType") == "jobcomp/filetxt" and config.get("JobCompLoc"):
                self.jobcomp_log = Path(config["JobCompLoc"])
        return self.jobcomp_log if isinstance(self.jobcomp_log, Path) else None
