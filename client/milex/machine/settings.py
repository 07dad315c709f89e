"""What the client starts an agent with: its poll interval, back-off ceiling and idle exit, from the
agent's defaults (`milex_common.intervals`) unless the environment overrides them; and this version."""

from __future__ import annotations

import os
from typing import TypedDict

from milex_common import intervals
from milex_common.errors import MilexError
from milex_common.version import VERSION

POLL_INTERVAL_ENV = "MILEX_AGENT_POLL_INTERVAL"
MAX_INTERVAL_ENV = "MILEX_AGENT_MAX_INTERVAL"
IDLE_EXIT_ENV = "MILEX_AGENT_IDLE_EXIT"


def client_version() -> str:
    return VERSION


class PollSettings(TypedDict):
    poll_interval: float
    max_interval: float


class StartSettings(PollSettings):
    idle_exit: float


def poll_settings() -> PollSettings:
    """The agent's SLURM poll interval and its back-off ceiling."""
    return PollSettings(
        poll_interval=_seconds(POLL_INTERVAL_ENV, intervals.POLL_INTERVAL),
        max_interval=_seconds(MAX_INTERVAL_ENV, intervals.MAX_POLL_INTERVAL),
    )


def start_settings() -> StartSettings:
    """What a detached agent starts with: the poll settings, and how long it stays when idle."""
    return StartSettings(**poll_settings(), idle_exit=_seconds(IDLE_EXIT_ENV, intervals.IDLE_EXIT))


def _seconds(variable: str, default: float) -> float:
    text = os.environ.get(variable)
    if text is None:
        return default
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise MilexError(f"{variable}={text!r} is not a number of seconds; set it to one, or unset it.")
    return seconds
