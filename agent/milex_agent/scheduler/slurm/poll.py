"""How the SLURM scheduler asks squeue about its jobs: every field at once, or on SLURM 24.05+ the
states alone (`--only-job-state`) and every field only for the jobs whose state changed.

Measured on SLURM 24.11 (bench/poll_query.py; figures in docs/architecture.md, "Watching"): with
3,000 jobs of other users in the controller, a state-only squeue costs slurmctld 0.10 (100 jobs
of ours) to 0.19 (2,000) of the CPU of the full one, which packs every job record for a list of
ids (REQUEST_JOB_INFO) or every job of the user (REQUEST_JOB_USER_INFO). The states alone lack
the reason and the exit code (Reason `None`, exit_code `0:0` for every job), so the jobs whose
state changed since the last poll (or that this agent has not polled yet) are asked again with
every field: one alone (REQUEST_JOB_INFO_SINGLE), several with every job of the user; a list of
ids would make slurmctld pack every job it holds, anyone's. A job whose state did not change keeps
its last full status (a pending job's new reason alone shows at its next change of state); an array
whose state holds while one of its tasks changes counts as changed, so that the task's exit code is
read.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from milex_agent.scheduler.slurm.command import CommandResult, run_command
from milex_agent.scheduler.slurm.output import iter_squeue_rows, statuses
from milex_common.errors import SchedulerError, SchedulerUnavailable
from milex_common.model import JobStatus

log = logging.getLogger("milex_agent")

# Fields of `squeue --Format`, each followed by a separator no value contains. Width 0 prints a
# value whole and unpadded: with thousands of finished jobs still in the controller's memory,
# padded fields made squeue spend most of a poll formatting spaces (and us reading them). ArrayTaskID
# comes last, so that rows captured before it was asked for still read.
_SQUEUE_FIELDS = ("JobID", "ArrayJobID", "State", "Reason", "exit_code", "ArrayTaskID")
_SQUEUE_FORMAT = ",".join(f"{field}:0|" for field in _SQUEUE_FIELDS)
_SQUEUE = ("squeue", "--noheader", "--array", "--states=all", f"--Format={_SQUEUE_FORMAT}")
ONLY_JOB_STATE = "--only-job-state"
ONLY_JOB_STATE_SINCE = (24, 5)
MAX_LISTED_JOBS = 500
_VERSION = re.compile(r"\b(\d+)\.(\d+)(?:\.\d+)?\b")


def full_query(job_ids: Sequence[str]) -> list[str]:
    """squeue for every field the agent reads of `job_ids`.

    Past a few hundred ids, it asks for all of the user's jobs and we pick ours: one argument holds
    at most 128 KiB, and squeue filters a long id list slower than we do.
    """
    many = len(job_ids) > MAX_LISTED_JOBS
    return [*_SQUEUE, "--me" if many else f"--jobs={','.join(job_ids)}"]


def state_query(job_ids: Sequence[str]) -> list[str]:
    """squeue for the states alone of `job_ids` (24.05+).

    Past a few hundred ids, every job of the cluster: `--me` filters out every job with
    `--only-job-state` (the state reply names no user), and the states of all jobs still cost
    slurmctld less than the full fields of ours (bench/poll_query.py).
    """
    many = len(job_ids) > MAX_LISTED_JOBS
    return [*_SQUEUE, ONLY_JOB_STATE, *([] if many else [f"--jobs={','.join(job_ids)}"])]


def changed_query(job_ids: Sequence[str]) -> list[str]:
    """squeue for every field of the jobs whose state changed: one alone (slurmctld looks it up), or
    every job of the user, where a list of ids has slurmctld pack every job it holds, anyone's."""
    return [*_SQUEUE, f"--jobs={job_ids[0]}" if len(job_ids) == 1 else "--me"]


def has_only_job_state(version: str) -> bool:
    """Whether a SLURM that says `version` (`squeue --version`: `slurm 24.11.5`, `slurm-wlm 22.05.8`)
    knows `--only-job-state`; False when it cannot be read."""
    match = _VERSION.search(version)
    return match is not None and (int(match[1]), int(match[2])) >= ONLY_JOB_STATE_SINCE


class SqueuePoll:
    """Asks squeue about jobs, choosing the query by the SLURM version it finds once."""

    def __init__(self) -> None:
        self.state_only: bool | None = None  # None: not chosen yet
        self.known: dict[str, JobStatus] = {}  # each polled job's last status with every field

    def states(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """The status of each of `job_ids` that squeue knows (not those it forgot)."""
        if self.state_only is None:
            self.state_only = self._choose()
        if not self.state_only:
            return self._full(job_ids)
        result = run_command(state_query(job_ids))
        if result.returncode != 0 and ONLY_JOB_STATE in result.stderr:  # "unrecognized option"
            log.warning(
                "squeue refused %s (%s): status polls ask for every field", ONLY_JOB_STATE, result.message
            )
            self.state_only = False
            return self._full(job_ids)
        now = _decoded(job_ids, result)
        changed = [job_id for job_id, status in now.items() if self._changed(job_id, status)]
        found = {job_id: self.known[job_id] for job_id in now.keys() - set(changed)}
        if changed:
            found.update(_decoded(changed, run_command(changed_query(changed))))
        self.known = {job_id: found[job_id] for job_id in job_ids if job_id in found}
        return found

    def _changed(self, job_id: str, status: JobStatus) -> bool:
        known = self.known.get(job_id)
        if known is None or known.state is not status.state:
            return True
        return [(task.index, task.state) for task in known.tasks] != [
            (task.index, task.state) for task in status.tasks
        ]

    def _full(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        return _decoded(job_ids, run_command(full_query(job_ids)))

    @staticmethod
    def _choose() -> bool:
        """Learn the version from squeue itself: it asks no controller, so it answers before one does."""
        result = run_command(["squeue", "--version"])
        version = result.stdout.strip() or result.message
        if has_only_job_state(version):
            log.info(
                "status polls: squeue %s, then every field for changed jobs (%s)", ONLY_JOB_STATE, version
            )
            return True
        log.info("status polls: squeue with every field (%s; %s needs 24.05)", version, ONLY_JOB_STATE)
        return False


def _decoded(job_ids: Sequence[str], result: CommandResult) -> dict[str, JobStatus]:
    # A list of ids squeue no longer knows fails with "Invalid job id" (22.05; 24.11 without
    # --only-job-state): they are forgotten, not an error.
    if result.returncode != 0 and "Invalid job id" not in result.stderr:
        error = SchedulerUnavailable if result.unanswered else SchedulerError
        raise error(f"squeue failed: {result.message}")
    return statuses(job_ids, iter_squeue_rows(result.stdout))
