"""The interface every scheduler implements: submit a script, report states, cancel."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import msgspec

from milex_common.model import JobStatus
from milex_common.usage import Usage


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """What the cluster lets this user have at once, as far as the agent could learn it."""

    # Jobs pending and running at once (each array task counts); None: no cap known.
    max_submitted: int | None = None
    max_array_size: int | None = None  # MaxArraySize: array indices must be below this
    held_by: str = ""  # the limit that sets max_submitted, in words for the user


class SubmitCall(msgspec.Struct, frozen=True):
    """What to submit: a script, the jobs it waits for and how, and the comment it is found by."""

    script: Path
    # The script itself; None: the scheduler reads it from `script` (given, it may still be being written).
    text: str | None = None
    after: Sequence[str] = ()  # ids of the jobs it waits for
    dependency_type: str = "afterok"  # how it waits for them (SLURM's --dependency type)
    comment: str = ""  # how a lookup finds it ('' for none)


class Scheduler(Protocol):
    """A batch system that runs rendered scripts; job ids are strings it chooses."""

    name: str
    parallel_submissions: int  # submit calls it takes at once (independent jobs of a bundle)

    def submit(self, call: SubmitCall) -> str:
        """Queue `call.script` to start once the jobs `call.after` satisfy `call.dependency_type`;
        return its id.

        With its `text` given, the script is not read from `script`, which may still be being written.

        Raises SubmitError carrying the scheduler's own message when the job is refused.
        """
        ...

    def start_submit(self, call: SubmitCall) -> Callable[[], str]:
        """`submit`, begun now (SLURM: sbatch is started here); the function returned waits for the
        answer and returns or raises what `submit` would, on whichever thread calls it."""
        ...

    def states(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """The current status of each of `job_ids`, in one query whatever their number; an array's
        with its tasks (`JobStatus.tasks`, by the index its script sees) where the scheduler lists them."""
        ...

    def usage(self, job_ids: Sequence[str]) -> dict[str, Usage]:
        """What each of these ended jobs used, in one query whatever their number: those whose account
        is complete (accounting lags a job's end by a moment: the others are asked again later); where
        the scheduler keeps no accounting at all, each with a `note` saying so (`NO_ACCOUNTING`).

        Raises SchedulerError when its accounting failed to answer.
        """
        ...

    def cancel(self, job_ids: Sequence[str]) -> None:
        """Cancel the given jobs (and, for an array, all its tasks)."""
        ...

    def lookup(self, comments: Sequence[str]) -> dict[str, str]:
        """The ids of jobs submitted with these comments, by comment (those found), in one query.

        How a submission interrupted by a crash is found again before anything is resubmitted.
        """
        ...

    def boot_time(self) -> float | None:
        """When the scheduler's controller last started (seconds since the epoch, this host's clock);
        None for one that never forgets a job it accepted. Jobs accepted before that may be lost."""
        ...

    def confirm(self, accepted: Mapping[str, str], booted: float) -> set[str]:
        """Of the jobs it accepted (ids by comment) before its controller started at `booted`, the
        comments of those it no longer has, neither queued, running nor ended, in one query (and a few
        more for those not in the controller).

        A controller killed and restarted from state saved before it accepted them has lost them, and
        hands their ids out again: how the agent finds them after a silence, to submit them again. A
        job that has ended under a lost job's id since (submitted after `booted`) is another job.
        """
        ...

    def limits(self, account: str, qos: str | None) -> Limits:
        """The limits on a job of this account ('' = the user's default) and QOS (None: the default)."""
        ...

    def close(self) -> None:
        """Let go of what it keeps between calls (SLURM: the sbatch started ahead)."""
        ...
