"""Settings read from environment variables rather than the configuration file: numbers of seconds."""

from __future__ import annotations

import os

from milex_common.errors import MilexError


def seconds_from_environment(variable: str, default: float, *, zero: bool = True) -> float:
    """The number of seconds `variable` sets, `default` when it is unset; MilexError naming the
    variable when it is not a number of seconds (negative, or zero where `zero` is False)."""
    text = os.environ.get(variable)
    if text is None:
        return default
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not (seconds >= 0 if zero else seconds > 0):
        raise MilexError(f"{variable}={text!r} is not a number of seconds; set it to one, or unset it.")
    return seconds
