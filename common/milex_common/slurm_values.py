"""Validation of the SLURM values users type (time, memory, array ranges, names), before any write."""

from __future__ import annotations

import re

from milex_common.errors import InvalidValue

_TIME_FORMATS = (
    re.compile(r"\d+", re.ASCII),  # minutes
    re.compile(r"\d+:\d{1,2}", re.ASCII),  # minutes:seconds
    re.compile(r"\d+:\d{1,2}:\d{1,2}", re.ASCII),  # hours:minutes:seconds
    re.compile(r"\d+-\d{1,2}", re.ASCII),  # days-hours
    re.compile(r"\d+-\d{1,2}:\d{1,2}", re.ASCII),  # days-hours:minutes
    re.compile(r"\d+-\d{1,2}:\d{1,2}:\d{1,2}", re.ASCII),  # days-hours:minutes:seconds
)
_TIME_HELP = (
    "use one of MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS or UNLIMITED (e.g. 00-01:00 for one hour)"
)
_MEMORY = re.compile(r"\d+[KMGT]?", re.IGNORECASE | re.ASCII)
_ARRAY_ITEM = re.compile(r"(?P<start>\d+)(?:-(?P<end>\d+)(?::(?P<step>\d+))?)?", re.ASCII)
_COUNT = re.compile(r"\d+", re.ASCII)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_SBATCH_OPTION = re.compile(r"[a-z][a-z0-9-]*")


def validate_time(value: str) -> str:
    """Return `value` if SLURM accepts it as a time limit, else raise InvalidValue."""
    if value.upper() in {"UNLIMITED", "INFINITE"}:
        return value
    if not any(fmt.fullmatch(value) for fmt in _TIME_FORMATS):
        raise InvalidValue(f"--time {value!r} is not a SLURM time limit: {_TIME_HELP}.")
    fields = re.split(r"[-:]", value)
    # In every format but the bare count, fields after the first are bounded (hours < 24, minutes < 60).
    limits = {"-": (24, 60, 60), ":": (60, 60)}["-" if "-" in value else ":"]
    for field, limit in zip(fields[1:], limits, strict=False):
        if int(field) >= limit:
            raise InvalidValue(f"--time {value!r}: field {field!r} is out of range; {_TIME_HELP}.")
    return value


def validate_memory(value: str) -> str:
    """Return `value` if it is a SLURM memory size (a number with an optional K, M, G or T unit)."""
    if not _MEMORY.fullmatch(value):
        raise InvalidValue(
            f"--mem {value!r} is not a SLURM memory size: use a whole number with an optional unit "
            "K, M, G or T (e.g. 16G or 500M)."
        )
    return value


def validate_array(value: str) -> str:
    """Return `value` if it is a SLURM array spec such as `1-10:2`, `0,4,8-12` or `1-100%10`."""
    spec, _, limit = value.partition("%")
    problem = None
    if _ and not _COUNT.fullmatch(limit):
        problem = f"the limit after '%' must be a whole number, not {limit!r}"
    for item in spec.split(","):
        match = _ARRAY_ITEM.fullmatch(item)
        if problem or not match:
            problem = problem or f"{item!r} is not an index, a range A-B or a stepped range A-B:S"
            break
        if match["end"] is not None and int(match["end"]) < int(match["start"]):
            problem = f"range {item!r} ends before it starts"
        elif match["step"] is not None and int(match["step"]) == 0:
            problem = f"range {item!r} has a step of 0"
    if problem:
        raise InvalidValue(f"--array {value!r}: {problem} (e.g. 1-10, 1-10:2, 0,3,5-7 or 1-100%10).")
    return value


def array_indices(spec: str) -> tuple[list[int], int | None]:
    """The task indices of a valid array spec (`1-10:2`, `0,3,5-7`, `1-100%10`), and its `%` limit."""
    items, _, limit = spec.partition("%")
    indices: set[int] = set()
    for item in items.split(","):
        bounds, _, step = item.partition(":")
        start, _, end = bounds.partition("-")
        indices.update(range(int(start), int(end or start) + 1, int(step or 1)))
    return sorted(indices), int(limit) if limit else None


def array_spec(indices: list[int], limit: int | None = None) -> str:
    """The array spec of `indices` (sorted), runs of consecutive ones as ranges: `[1, 2, 3, 7]` is
    `1-3,7`; with `limit`, `%limit` after them (as `array_indices` reads it back)."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    items = ",".join(str(start) if start == end else f"{start}-{end}" for start, end in runs)
    return f"{items}%{limit}" if limit else items


def validate_positive(option: str, value: int) -> int:
    """Return `value` if it is a count SLURM accepts (at least 1)."""
    if value < 1:
        raise InvalidValue(f"--{option} must be at least 1, not {value}.")
    return value


def validate_name(kind: str, value: str) -> str:
    """Return `value` if it can name a bundle or job: it ends up in file names and #SBATCH lines."""
    if not _NAME.fullmatch(value):
        raise InvalidValue(
            f"{kind} {value!r} is not a valid name: start with a letter or digit and use only "
            "letters, digits and . _ + - (it becomes part of file names)."
        )
    return value


def validate_sbatch_option(name: str, value: str | None) -> None:
    """Check a pass-through sbatch option: a long option name, and a value on one line."""
    if not _SBATCH_OPTION.fullmatch(name):
        raise InvalidValue(
            f"sbatch option {name!r} is not a long option name such as 'constraint' or 'exclusive'."
        )
    if value is not None and ("\n" in value or "\r" in value):
        raise InvalidValue(f"sbatch option --{name} has a line break in its value {value!r}.")
