"""What ended SLURM jobs used, from accounting: one sacct call for any number of jobs, decoded into Usage.

sacct's units (slurm_captured/usage: 22.05 and 24.11 print them alike): Elapsed, TotalCPU and Timelimit
as `[D-][HH:]MM:SS[.mmm]` (TotalCPU `00:00.684` under an hour), Timelimit `UNLIMITED` (or
`Partition_Limit`); MaxRSS on the steps only, with a unit (`215704K`; `0` bare); ReqMem the job's whole
request (`500M`) since 21.08, and before that per CPU or per node with a `c` or `n` suffix (`4000Mc`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from milex_agent.scheduler.slurm.command import run_command
from milex_agent.scheduler.slurm.poll import MAX_LISTED_JOBS
from milex_common.model import JobState
from milex_common.usage import StepUsage, TaskUsage, Usage, duration, memory_bytes, peak

FORMAT = "JobID,State,Elapsed,TotalCPU,MaxRSS,ReqMem,AllocCPUS,NNodes,Timelimit"
_JOB_ID = re.compile(r"(\d+)(?:_(\d+|\[[^\]]*\])|\+(\d+))?(?:\.(.+))?")


def usage_query(job_ids: Sequence[str]) -> list[str]:
    """sacct for the usage of `job_ids` and their steps; past a few hundred ids, every job of the user
    running in the last week (one argument holds at most 128 KiB), of which the caller picks its own."""
    chosen = f"--jobs={','.join(job_ids)}" if len(job_ids) <= MAX_LISTED_JOBS else "--starttime=now-7days"
    return ["sacct", "--noheader", "--parsable2", f"--format={FORMAT}", chosen]


def read_usage(job_ids: Sequence[str]) -> tuple[dict[str, Usage], str | None]:
    """The usage of those of `job_ids` whose accounting has every task ended, and sacct's complaint
    when it failed (None when it answered)."""
    result = run_command(usage_query(job_ids))
    if result.returncode != 0:
        return {}, result.message
    wanted = set(job_ids)
    return {job_id: usage for job_id, usage in usage_rows(result.stdout).items() if job_id in wanted}, None


def usage_rows(text: str) -> dict[str, Usage]:
    """The usage of each job in `sacct --parsable2 --noheader --format=FORMAT` output, by the id sbatch
    gave it; a job with a task not ended (accounting lags the end by a moment) is left out."""
    tasks: dict[str, dict[str, dict[str, str]]] = {}  # job id -> allocation (`7_0`) -> its row
    steps: dict[str, list[tuple[str, dict[str, str]]]] = {}  # allocation -> (step name, row)
    unfinished: set[str] = set()
    for line in text.splitlines():
        fields = dict(zip(FORMAT.split(","), (part.strip() for part in line.split("|")), strict=False))
        match = _JOB_ID.fullmatch(fields.get("JobID", ""))
        if match is None:
            continue
        job_id, task, _component, step = match.groups()
        allocation = fields["JobID"].partition(".")[0]
        if step is not None:
            steps.setdefault(allocation, []).append((step, fields))
        elif not (task or "").startswith("["):
            tasks.setdefault(job_id, {})[allocation] = fields
        elif not JobState.from_slurm(fields.get("State", "")).finished:  # `7_[2-3]` still pending
            unfinished.add(job_id)
        # (`7_[2-3]` cancelled before they started: tasks that used nothing)
    usage = {}
    for job_id, allocations in tasks.items():
        rows = [_task(name, row, steps.get(name, [])) for name, row in allocations.items()]
        if job_id not in unfinished and all(JobState.from_slurm(row.state).finished for row in rows):
            usage[job_id] = Usage(tasks=sorted(rows, key=lambda row: -1 if row.task is None else row.task))
    return usage


def _task(allocation: str, row: dict[str, str], steps: list[tuple[str, dict[str, str]]]) -> TaskUsage:
    match = _JOB_ID.fullmatch(allocation)
    index = match.group(2) if match else None
    cpus = _count(row.get("AllocCPUS", ""))
    step_usage = [
        StepUsage(
            name=name,
            elapsed=duration(fields.get("Elapsed", "")) or 0.0,
            cpu_time=duration(fields.get("TotalCPU", "")) or 0.0,
            max_rss=memory_bytes(fields.get("MaxRSS", ""), base="K"),
        )
        for name, fields in steps
    ]
    return TaskUsage(
        task=int(index) if index and index.isdecimal() else None,
        state=row.get("State", "").split(" ")[0],
        elapsed=duration(row.get("Elapsed", "")) or 0.0,
        cpu_time=duration(row.get("TotalCPU", "")) or 0.0,
        max_rss=peak([memory_bytes(row.get("MaxRSS", ""), base="K"), *(s.max_rss for s in step_usage)]),
        requested_memory=requested_memory(
            row.get("ReqMem", ""), cpus=cpus, nodes=_count(row.get("NNodes", ""))
        ),
        cpus=cpus,
        time_limit=duration(row.get("Timelimit", "")),
        steps=step_usage,
    )


def requested_memory(text: str, *, cpus: int, nodes: int) -> int | None:
    """The whole job's request from ReqMem: as printed since 21.08, or `...c` per CPU, `...n` per node."""
    size = memory_bytes(text.rstrip("cnCN"), base="M")
    if size is None or not size:
        return None
    per = text.strip()[-1:].lower()
    return size * max(cpus, 1) if per == "c" else size * max(nodes, 1) if per == "n" else size


def _count(text: str) -> int:
    return int(text) if text.strip().isdecimal() else 0
