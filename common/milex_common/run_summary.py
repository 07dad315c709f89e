"""What a run came to once every job of it has ended: the summary the agent's `notify` command reads
on its stdin (as JSON), and the one line both the agent and the laptop say it in."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import msgspec

from milex_common.model import JobState
from milex_common.usage import Usage

NAMED_FAILURES = 3  # jobs named in the one line's parenthesis; the others are counted only


class JobOutcome(msgspec.Struct, kw_only=True):
    """How one job of the run ended (a job never submitted, refused or left out when its submission
    stopped, ended CANCELLED, with a reason that says so)."""

    name: str
    key: str = ""
    job_id: str = ""
    state: JobState
    exit_code: int | None = None
    reason: str = ""
    usage: Usage | None = None  # what it used, as the scheduler's accounting says (None: nothing known)


class RunSummary(msgspec.Struct, kw_only=True):
    """One run of a bundle that has ended: where, which run, each job's end, and the line saying it."""

    bundle: str
    run_id: str
    machine: str
    summary: str
    counts: dict[str, int]
    jobs: list[JobOutcome]


def summarize(bundle: str, run_id: str, machine: str, jobs: Sequence[JobOutcome]) -> RunSummary:
    """The summary of a run whose jobs ended so."""
    counts = Counter(job.state.value for job in jobs)
    return RunSummary(bundle=bundle, run_id=run_id, machine=machine, summary=one_line(bundle, jobs),
                      counts=dict(sorted(counts.items())), jobs=list(jobs))  # fmt: skip


def one_line(bundle: str, jobs: Sequence[JobOutcome]) -> str:
    """`bundle NAME_DATE done: 7 completed, 1 failed (job x exit 3)`: the count of each end, completed
    first, and the first jobs that did not complete."""
    counts = Counter(job.state for job in jobs)
    order = sorted(counts, key=lambda state: (state is not JobState.COMPLETED, list(JobState).index(state)))
    said = ", ".join(f"{counts[state]} {state.value.lower().replace('_', ' ')}" for state in order)
    failed = [job for job in jobs if job.state is not JobState.COMPLETED]
    named = [_failure(job) for job in failed[:NAMED_FAILURES]]
    if len(failed) > NAMED_FAILURES:
        named.append(f"{len(failed) - NAMED_FAILURES} more")
    return f"bundle {bundle} done: {said or 'no job'}" + (f" ({', '.join(named)})" if named else "")


def _failure(job: JobOutcome) -> str:
    """`job x exit 3` for a job that failed with its own exit code, else its end (`job y timeout`)."""
    if job.state is JobState.FAILED and job.exit_code is not None:
        return f"job {job.name} exit {job.exit_code}"
    code = f" exit {job.exit_code}" if job.exit_code else ""
    return f"job {job.name} {job.state.value.lower().replace('_', ' ')}{code}"
