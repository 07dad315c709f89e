"""Advice from what jobs used: the SLURM options to ask for next time (`--mem` from the peak, `--time`
from the longest run, `--cpus_per_task` from the CPUs really kept busy), each with its reason."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from milex_common.model import SlurmOptions
from milex_common.usage import TaskUsage, Usage, describe_size, format_duration, format_size, peak

MEMORY_HEADROOM = 0.2  # the suggested --mem: the peak and 20% more
TIME_HEADROOM = 0.5  # the suggested --time: the longest run and half as much again, in whole minutes
TIMED_OUT_FACTOR = 2  # a run that hit its limit: twice the limit
MIN_MEMORY = 64 * 1024**2  # below this, no site bothers (and a job's own start needs some)
LOW_CPU_EFFICIENCY = 0.5  # below this, fewer CPUs would do as well
MIN_ELAPSED_FOR_CPUS = 10.0  # seconds: a shorter run says little about how many CPUs it keeps busy


@dataclass(frozen=True)
class Suggestion:
    """The options for the next run (None: no advice on it), and why each."""

    mem: str | None = None
    time: str | None = None
    cpus_per_task: int | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def options(self) -> list[str]:
        """As milex-schedule takes them: `--mem 260M --time 00:01:00`."""
        given = (("--mem", self.mem), ("--time", self.time), ("--cpus_per_task", self.cpus_per_task))
        return [f"{flag} {value}" for flag, value in given if value is not None]

    def under(self, slurm: SlurmOptions) -> SlurmOptions:
        """`slurm` with these suggestions where it gives no value of its own (what the user typed wins)."""
        import msgspec

        suggested = {"mem": self.mem, "time": self.time, "cpus_per_task": self.cpus_per_task}
        missing = {name: value for name, value in suggested.items() if getattr(slurm, name) is None}
        return msgspec.structs.replace(slurm, **missing)


def suggest(tasks: Sequence[TaskUsage]) -> Suggestion:
    """What to ask for next time, from the runs of one job (an array's tasks, several runs)."""
    reasons: list[str] = []
    mem = _memory(tasks, reasons)
    time = _time(tasks, reasons)
    cpus = _cpus(tasks, reasons)
    return Suggestion(mem=mem, time=time, cpus_per_task=cpus, reasons=reasons)


def _memory(tasks: Sequence[TaskUsage], reasons: list[str]) -> str | None:
    top = peak([task.max_rss for task in tasks])
    if top is None:
        return None
    mem = format_size(max(top * (1 + MEMORY_HEADROOM), MIN_MEMORY))
    reasons.append(f"--mem {mem}: a peak of {describe_size(top)} and {MEMORY_HEADROOM:.0%} headroom")
    return mem


def _time(tasks: Sequence[TaskUsage], reasons: list[str]) -> str | None:
    ran = [task for task in tasks if task.elapsed > 0]
    if not ran:
        return None
    timed_out = [task.time_limit for task in ran if task.state == "TIMEOUT" and task.time_limit]
    if timed_out:
        limit = max(timed_out) * TIMED_OUT_FACTOR
        time = format_duration(math.ceil(limit / 60) * 60)
        reasons.append(f"--time {time}: it hit its limit of {format_duration(max(timed_out))}")
        return time
    longest = max(task.elapsed for task in ran)
    time = format_duration(max(math.ceil(longest * (1 + TIME_HEADROOM) / 60), 1) * 60)
    reasons.append(
        f"--time {time}: the longest run took {format_duration(longest)}, and {TIME_HEADROOM:.0%} more"
    )
    return time


def _cpus(tasks: Sequence[TaskUsage], reasons: list[str]) -> int | None:
    """Fewer CPUs when those held were mostly idle: as many as the busiest run kept busy."""
    long_runs = [task for task in tasks if task.elapsed >= MIN_ELAPSED_FOR_CPUS and task.cpus > 1]
    if not long_runs:
        return None
    busy = max(task.cpu_time / task.elapsed for task in long_runs)
    held = max(task.cpus for task in long_runs)
    efficiency = max(task.cpu_efficiency or 0.0 for task in long_runs)
    if efficiency >= LOW_CPU_EFFICIENCY:
        return None
    cpus = max(1, math.ceil(busy))
    reasons.append(f"--cpus_per_task {cpus}: {held} CPUs held, {busy:.1f} kept busy ({efficiency:.0%})")
    return cpus


def suggestion_from(bundle: str, machine_name: str | None, job_name: str) -> Suggestion:
    """What the usage of `bundle`'s jobs on that machine suggests for the next run of `job_name` (the
    runs of that job, or of every job of the bundle when none has its name); UnknownJob when the agent
    tracks no such bundle, InvalidValue when none of its jobs has usage to learn from."""
    from milex.config.file import load_config
    from milex.machine.submitter import submitter_for
    from milex_common.errors import InvalidValue, UnknownJob

    machine = load_config().machine(machine_name)
    reply = submitter_for(machine).tracked(bundle=bundle, usage=True)
    if not reply.jobs:
        raise UnknownJob(f"--like {bundle}: the agent on {machine.name} tracks no bundle {bundle!r}.")
    named = [job for job in reply.jobs if job.name == job_name] or reply.jobs
    tasks = [task for job in named for task in reply.usage.get(job.key, _NONE).tasks]
    if not tasks:
        notes = sorted({used.note for used in reply.usage.values() if used.note})
        why = notes[0] if notes else "none of its jobs has ended with its usage recorded"
        raise InvalidValue(f"--like {bundle}: no usage to start from on {machine.name} ({why}).")
    return suggest(tasks)


_NONE = Usage()
