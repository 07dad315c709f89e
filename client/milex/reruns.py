"""`milex rerun`: a bundle's record submitted again as it was recorded, as a new run of the bundle:
every job, or (`failed`) only the jobs that did not complete and the jobs that depend on them.

A rerun's record is written before its request leaves, marked pending: a rerun interrupted before
the agent's answer was recorded (Ctrl-C, a crash, a lost link) is resumed by the next `rerun` of
the bundle with the same run id, so the agent, which knows each job by a key naming the run,
submits none of them twice.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from milex.api import new_submission, refresh, submit_bundle
from milex.config.file import Config, load_config
from milex.records import (
    Submission,
    SubmittedJobRecord,
    load_bundle,
    load_submissions,
    save_submission,
    warn,
)
from milex_common.errors import BundleError, MilexError
from milex_common.model import Bundle, Job, JobState
from milex_common.slurm_values import array_indices, array_spec

if TYPE_CHECKING:
    from milex_common.protocol import SubmitProgress

_STEM = re.compile(r"(?P<name>.+)_(?P<date>\d{14})")


class NothingToRerun(MilexError):
    """`rerun(failed=True)` of a bundle whose jobs all completed: nothing was submitted."""

    exit_code = 0


def rerun(
    bundle: str,
    *,
    date: str | None = None,
    run: str | None = None,
    machine: str | None = None,
    failed: bool = False,
    any_version: bool = False,
    config: Config | None = None,
    progress: Callable[[SubmitProgress], None] | None = None,
) -> Submission:
    """Submit the record of bundle `bundle` (`NAME` for the newest, `NAME_DATE`, or `date`) again.

    Against run `run` of it (default: every run, each job's newest); on `machine` (default: that
    run's). With `failed`, only the jobs that failed, were cancelled, timed out or never ran, and the
    jobs that depend on them (each rerun from the start); NothingToRerun when every job completed.
    A rerun of this bundle interrupted before its answer was recorded is resumed instead. The apps'
    versions on the machine are checked against the record, as `milex.run` does, unless `any_version`.
    """
    config = config or load_config()
    name, date = _name_and_date(bundle, date)
    record = load_bundle(config.jobs_dir, name, date)
    history = load_submissions(config.jobs_dir, record.stem)
    interrupted = next((s for s in reversed(history) if s.pending), None)
    if interrupted is not None:
        warn(
            f"the rerun {interrupted.run_id} of {record.stem} was interrupted before the agent's answer "
            f"was recorded: resuming it ({len(interrupted.jobs)} job(s), each submitted at most once)."
        )
        return _send(_resumed(record, interrupted), interrupted, config, progress, any_version)
    source = _source_runs(history, record.stem, run)
    chosen = record
    if failed:
        _refresh_unfinished(source, config)
        chosen = select_failed(record, latest_states(source))
    target = config.machine(machine or source[-1].machine).name
    submission = new_submission(record, target)
    submission.rerun_of, submission.pending = source[-1].run_id, True
    for name, job in chosen.jobs.items():
        submission.jobs[name] = SubmittedJobRecord(job_id="", state=JobState.SUBMITTED)
        if job.slurm.array != record.jobs[name].slurm.array:
            submission.arrays[name] = job.slurm.array or ""
    save_submission(config.jobs_dir, submission)
    return _send(chosen, submission, config, progress, any_version)


def _send(
    bundle: Bundle,
    submission: Submission,
    config: Config,
    progress: Callable[[SubmitProgress], None] | None,
    any_version: bool,
) -> Submission:
    return submit_bundle(
        bundle, submission.machine, config, progress=progress, submission=submission, any_version=any_version
    )


def _resumed(record: Bundle, interrupted: Submission) -> Bundle:
    """What the interrupted rerun `interrupted` sent: its jobs of `record`, its arrays narrowed."""
    subset = _subset(record, set(interrupted.jobs))
    for name, array in interrupted.arrays.items():
        slurm = msgspec.structs.replace(subset.jobs[name].slurm, array=array)
        subset.jobs[name] = msgspec.structs.replace(subset.jobs[name], slurm=slurm)
    return subset


def _name_and_date(bundle: str, date: str | None) -> tuple[str, str | None]:
    """`NAME_DATE` as its name and date, unless `date` is given or NAME is itself a name."""
    match = _STEM.fullmatch(bundle)
    if date is None and match:
        return match["name"], match["date"]
    return bundle, date


def _source_runs(history: list[Submission], stem: str, run: str | None) -> list[Submission]:
    """The runs a rerun repeats: `run` alone, or every run (oldest first); BundleError if none."""
    if not history:
        raise BundleError(f"bundle {stem} has no run to rerun; `milex-run` runs it a first time.")
    if run is None:
        return history
    named = [submission for submission in history if submission.run_id == run]
    if not named:
        runs = ", ".join(submission.run_id for submission in history if submission.run_id) or "none"
        raise BundleError(f"bundle {stem} has no run {run!r} (its runs: {runs}).")
    return named


def _refresh_unfinished(runs: list[Submission], config: Config) -> None:
    """Ask each run's agent for the states of its jobs that the record has unfinished."""
    for submission in runs:
        if any(not job.state.finished for job in submission.jobs.values()):
            refresh(submission, config=config)


def latest_states(runs: list[Submission]) -> dict[str, SubmittedJobRecord]:
    """Each job's record in the newest of `runs` (oldest first) that ran it."""
    latest: dict[str, SubmittedJobRecord] = {}
    for submission in runs:
        latest.update(submission.jobs)
    return latest


def select_failed(record: Bundle, states: dict[str, SubmittedJobRecord]) -> Bundle:
    """`record` with only the jobs to run again: those that ended without completing or never ran
    (no run has them), and every job that depends on one of them, directly or not; their
    dependencies on the others (which completed) dropped. An array that failed is narrowed to its
    tasks that did not complete, when its record knows its tasks. BundleError if one of them has not
    ended; NothingToRerun if there are none."""
    chosen = {name for name in record.jobs if name not in states or _did_not_complete(states[name].state)}
    for job in record.ordered_jobs():  # each after its dependencies: one pass reaches every dependent
        if any(dependency in chosen for dependency in job.dependencies):
            chosen.add(job.name)
    if not chosen:
        raise NothingToRerun(f"every job of bundle {record.stem} completed: nothing to rerun.")
    going_on = sorted(name for name in chosen if name in states and not states[name].state.finished)
    if going_on:
        listed = ", ".join(f"{name} ({states[name].state.value})" for name in going_on)
        raise BundleError(
            f"cannot rerun what has not ended: {listed}; wait for it (`milex status {record.stem} "
            "--watch`) or cancel it (`milex cancel`) first."
        )
    subset = _subset(record, chosen)
    for name, job in subset.jobs.items():
        if job.slurm.array is not None and name in states and _did_not_complete(states[name].state):
            subset.jobs[name] = _narrowed(job, states[name])
    return subset


def _narrowed(job: Job, status: SubmittedJobRecord) -> Job:
    """`job`, an array, with `--array` narrowed to its indices whose task did not complete by
    `status` (failed, cancelled, never started...; the `%` limit kept); `job` itself when no task is
    known to have completed (a record older than tasks, or every task failed)."""
    assert job.slurm.array is not None  # impossible: only arrays are narrowed
    completed = {task.index for task in status.tasks if task.state is JobState.COMPLETED}
    if not completed:
        return job
    indices, limit = array_indices(job.slurm.array)
    slurm = msgspec.structs.replace(
        job.slurm, array=array_spec([index for index in indices if index not in completed], limit)
    )
    return msgspec.structs.replace(job, slurm=slurm)


def _did_not_complete(state: JobState) -> bool:
    return state.finished and state is not JobState.COMPLETED


def _subset(record: Bundle, names: set[str]) -> Bundle:
    """`record` with only the jobs `names`, their dependencies on the others dropped (satisfied)."""
    jobs = {}
    for name, job in record.jobs.items():
        if name in names:
            kept = [dependency for dependency in job.dependencies if dependency in names]
            jobs[name] = job if kept == job.dependencies else msgspec.structs.replace(job, dependencies=kept)
    return msgspec.structs.replace(record, jobs=jobs)
