"""What an ended job used (`Usage`): per job, or per array task, and per step within, as the scheduler
measured it. One type from the scheduler's account to the agent's journal, the wire and the CLI.

Units are plain: seconds and bytes. A value the scheduler did not measure is None, never 0 (a job too
short for the accounting's sampling has no MaxRSS; that is not a peak of nothing).
"""

from __future__ import annotations

import math
import re

import msgspec

# `Usage.note` when there is none, and why: said once to the user, never an error.
NO_ACCOUNTING = "no accounting on this cluster"
NOT_RECORDED = "no accounting record"  # the scheduler never had one (asked until USAGE_WAIT after the end)
_DURATION = re.compile(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)([KMGTP]?)", re.IGNORECASE)
_UNITS = "KMGTP"
# sbatch's --time: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
_TIME_LIMIT = re.compile(r"(?:(\d+)-(\d+)(?::(\d+)(?::(\d+))?)?)|(?:(\d+)(?::(\d+)(?::(\d+))?)?)")


class StepUsage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One step of a job or task (SLURM's `batch`, `extern`, `0`...)."""

    name: str
    elapsed: float = 0.0
    cpu_time: float = 0.0
    max_rss: int | None = None  # bytes


class TaskUsage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One job, or one task of an array (`task`: its index): what it was given and what it used."""

    task: int | None = None
    state: str = ""  # the scheduler's own word for how it ended (COMPLETED, FAILED...)
    elapsed: float = 0.0  # seconds, wall time
    cpu_time: float = 0.0  # seconds of CPU, every step and process together (SLURM's TotalCPU)
    max_rss: int | None = None  # bytes: the peak resident memory of its biggest step; None: not measured
    requested_memory: int | None = None  # bytes, for the whole job; None: not known
    cpus: int = 0  # allocated
    time_limit: float | None = None  # seconds; None: unlimited (or not known)
    steps: list[StepUsage] = []

    @property
    def cpu_efficiency(self) -> float | None:
        """CPU time over the time its CPUs were held (TotalCPU / (Elapsed x CPUs)), as seff computes it."""
        held = self.elapsed * self.cpus
        return self.cpu_time / held if held > 0 else None

    @property
    def memory_efficiency(self) -> float | None:
        """The peak over the memory requested, as seff computes it."""
        if self.max_rss is None or not self.requested_memory:
            return None
        return self.max_rss / self.requested_memory


class Usage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What one job used: a row per task (one for a plain job), or none and a `note` saying why."""

    tasks: list[TaskUsage] = []
    note: str = ""


def peak(values: list[int | None]) -> int | None:
    """The largest of the measured values; None when none was measured."""
    measured = [value for value in values if value is not None]
    return max(measured) if measured else None


def duration(text: str) -> float | None:
    """Seconds in `[D-][HH:]MM:SS[.fff]`, as sacct prints Elapsed, TotalCPU and Timelimit; None for
    `UNLIMITED`, `Partition_Limit`, `INVALID` or nothing."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        return None
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)


def memory_bytes(text: str, *, base: str = "M") -> int | None:
    """Bytes in a size such as `215704K`, `1.20G`, `500M`; a bare number is in the unit `base` (sbatch's
    --mem and sacct's ReqMem: M; sacct's MaxRSS: K). None for nothing or what is not a size."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        return None
    number, unit = match.groups()
    power = _UNITS.index((unit or base).upper()) + 1
    return round(float(number) * (1 << 10 * power))


def time_limit_seconds(text: str) -> float | None:
    """Seconds in sbatch's --time (`30` minutes, `1:30:00`, `2-12`, `0-01:00`); None for UNLIMITED or
    what is not a time."""
    match = _TIME_LIMIT.fullmatch(text.strip())
    if match is None:
        return None
    days, day_hours, day_minutes, day_seconds, minutes, minute_seconds, seconds = match.groups()
    if days is not None:
        return int(days) * 86400 + int(day_hours) * 3600 + int(day_minutes or 0) * 60 + int(day_seconds or 0)
    if seconds is not None:  # H:M:S
        return int(minutes) * 3600 + int(minute_seconds) * 60 + int(seconds)
    return int(minutes) * 60 + int(minute_seconds or 0)


def format_size(size: float) -> str:
    """Bytes as a SLURM memory size, rounded up to a whole unit of at most three digits: `6G`, `750M`."""
    power = 1
    while power < len(_UNITS) and size / 1024**power >= 1000:
        power += 1
    return f"{math.ceil(size / 1024**power)}{_UNITS[power - 1]}"


def format_duration(seconds: float) -> str:
    """Seconds as sbatch's `D-HH:MM:SS` (`HH:MM:SS` under a day), whole seconds rounded up."""
    whole = math.ceil(seconds)
    days, rest = divmod(whole, 86400)
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{text}" if days else text


def describe_size(size: float) -> str:
    """Bytes for people: `4.8G`, `211M`, `900K` (one decimal under 10 of a unit)."""
    power = 1
    while power < len(_UNITS) and size / 1024**power >= 1000:
        power += 1
    value = size / 1024**power
    return f"{value:.1f}{_UNITS[power - 1]}" if value < 10 else f"{value:.0f}{_UNITS[power - 1]}"
