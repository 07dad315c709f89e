"""What the client starts an agent with: its poll interval, back-off ceiling and idle exit, from the
agent's defaults (`milex_common.intervals`) unless the environment overrides them; and this version."""

from __future__ import annotations

from typing import TypedDict

from milex.config.environment import seconds_from_environment
from milex_common import intervals
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
        poll_interval=seconds_from_environment(POLL_INTERVAL_ENV, intervals.POLL_INTERVAL),
        max_interval=seconds_from_environment(MAX_INTERVAL_ENV, intervals.MAX_POLL_INTERVAL),
    )


def start_settings() -> StartSettings:
    """What a detached agent starts with: the poll settings, and how long it stays when idle."""
    return StartSettings(
        **poll_settings(), idle_exit=seconds_from_environment(IDLE_EXIT_ENV, intervals.IDLE_EXIT)
    )
