"""The SLURM scheduler: sbatch to submit, squeue for the states of all jobs at once, scancel."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from milex_agent.scheduler.base import Limits, SubmitCall
from milex_agent.scheduler.slurm.command import CommandResult, run_command
from milex_agent.scheduler.slurm.history import STANDARD_TIME, SlurmHistory
from milex_agent.scheduler.slurm.limits import config_values, limit_refusal, read_limits
from milex_agent.scheduler.slurm.output import ids_by_comment, slurm_time
from milex_agent.scheduler.slurm.poll import SqueuePoll
from milex_agent.scheduler.slurm.sbatch import Sbatch
from milex_agent.scheduler.slurm.usage import read_usage
from milex_common.errors import (
    DependencyRefused,
    LimitReached,
    SchedulerError,
    SchedulerUnavailable,
    SubmitError,
)
from milex_common.model import JobState, JobStatus
from milex_common.usage import NO_ACCOUNTING, Usage

# What sbatch says when a job named in --dependency does not exist (ESLURM_DEPENDENCY).
DEPENDENCY_PROBLEM = "Job dependency problem"


class SlurmScheduler:
    """Drives a SLURM cluster through its client commands on this host."""

    name = "slurm"
    # slurmctld serves several sbatch calls at once; more than a few only queue on its locks.
    parallel_submissions = 4

    def __init__(self) -> None:
        self.history = SlurmHistory()
        self.poll = SqueuePoll()
        self.sbatch = Sbatch()

    def submit(self, call: SubmitCall) -> str:
        return self.start_submit(call)()

    def start_submit(self, call: SubmitCall) -> Callable[[], str]:
        options = []
        if call.after:
            options.append(f"--dependency={call.dependency_type}:{':'.join(call.after)}")
        if call.comment:
            options.append(f"--comment={call.comment}")
        running = self.sbatch.start(options, call.script, call.text)
        return lambda: _job_id(running(), call)

    def close(self) -> None:
        self.sbatch.close()

    def states(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        if not job_ids:
            return {}
        found = self.poll.states(job_ids)
        states = {job_id: found.get(job_id) or _forgotten(job_id) for job_id in job_ids}
        forgotten = [job_id for job_id, status in states.items() if status.state is JobState.UNKNOWN]
        if forgotten:
            # Only jobs that ended longer ago than MinJobAge: rare, so a second query is fine.
            states.update(self.history.states(forgotten))
        return states

    def usage(self, job_ids: Sequence[str]) -> dict[str, Usage]:
        if not job_ids:
            return {}
        if self.history.accounting:
            found, problem = read_usage(job_ids)
            if problem is None:
                return found
            if "disabled" not in problem:  # slurmdbd away: asked again at the next poll
                raise SchedulerError(f"sacct failed: {problem}")
            self.history.accounting = False  # "Slurm accounting storage is disabled": asked once
        return {job_id: Usage(note=NO_ACCOUNTING) for job_id in job_ids}

    def lookup(self, comments: Sequence[str]) -> dict[str, str]:
        if not comments:
            return {}
        wanted = set(comments)
        found = self._in_controller(wanted)
        if len(found) < len(wanted):  # rare: a job accepted unanswered, and forgotten since
            found.update(self.history.find(wanted - found.keys()))
        return found

    def boot_time(self) -> float | None:
        # The standard time format whatever the user's SLURM_TIME_FORMAT: scontrol prints the boot
        # time in this host's local time, as time.mktime reads it.
        result = run_command(["scontrol", "show", "config"], env=STANDARD_TIME)
        if result.returncode != 0:
            error = SchedulerUnavailable if result.unanswered else SchedulerError
            raise error(f"scontrol show config failed: {result.message}")
        booted = slurm_time(config_values(result.stdout).get("BOOT_TIME", ""))
        if booted is None:
            raise SchedulerError("scontrol show config printed no BOOT_TIME Milex can read")
        return booted

    def confirm(self, accepted: Mapping[str, str], booted: float) -> set[str]:
        if not accepted:
            return set()
        missing = {comment: job_id for comment, job_id in accepted.items()}
        for comment in self._in_controller(set(accepted)):
            del missing[comment]
        if missing:  # ended and forgotten since (the agent was away), or lost
            found = self.history.states(list(missing.values()))
            ended = [job_id for job_id, status in found.items() if status.state.finished]
            # A record submitted after the restart is of another job, given a lost job's id again.
            own = set(ended) - self.history.given_again(ended, booted)
            missing = {comment: job_id for comment, job_id in missing.items() if job_id not in own}
        return set(missing)

    def _in_controller(self, comments: set[str]) -> dict[str, str]:
        """The ids of the jobs the controller holds (any state) with these comments, by comment."""
        argv = ["squeue", "--noheader", "--states=all", "--me", "--Format=JobID:0|,Comment:0|"]
        result = run_command(argv)
        if result.returncode != 0:
            error = SchedulerUnavailable if result.unanswered else SchedulerError
            raise error(f"squeue failed: {result.message}")
        return ids_by_comment(result.stdout, comments)

    def cancel(self, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        result = run_command(["scancel", *job_ids])
        if result.returncode != 0:
            raise SchedulerError(f"scancel {' '.join(job_ids)} failed: {result.message}")

    def limits(self, account: str, qos: str | None) -> Limits:
        return read_limits(account, qos)


def _job_id(result: CommandResult, call: SubmitCall) -> str:
    """The id sbatch printed for `call`'s script; what its failure means, raised."""
    script = call.script
    if result.unanswered:  # it may have been accepted: the caller looks it up by its comment
        raise SchedulerUnavailable(f"sbatch got no answer for {script.name}: {result.message}")
    if result.returncode != 0:
        limit = limit_refusal(result.message)
        if limit is not None:  # the same job goes in once some of the user's jobs end
            raise LimitReached(f"sbatch refused {script.name} for {limit}")
        if call.after and DEPENDENCY_PROBLEM in result.message:
            raise DependencyRefused(f"sbatch refused {script.name}: {result.message}")
        raise SubmitError(f"sbatch refused {script.name}: {result.message}")
    # --parsable prints `jobid` or `jobid;cluster`.
    return result.stdout.strip().split(";")[0]


def _forgotten(job_id: str) -> JobStatus:
    return JobStatus(job_id=job_id, state=JobState.UNKNOWN, reason="no longer known to squeue")
