"""What a running agent holds: its journal, poller, schedulers, and the clients it streams to."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from milex_agent.controller import ControllerWatch
from milex_agent.journal import Journal
from milex_agent.poller import Poller
from milex_agent.room import SchedulerRoom
from milex_agent.scheduler.base import Scheduler
from milex_agent.submission import Dispatch, run_inline
from milex_common.intervals import CONTROLLER_SETTLE, SUBMIT_RETRY
from milex_common.model import MachineSettings
from milex_common.protocol import Logs, Message

Peer = bytes  # a client's ZeroMQ routing id
Send = Callable[[Peer, Message], bool]  # False when the client is gone


@dataclass
class WatchStream:
    """A client following events: where it is, and when it last heard from us."""

    peer: Peer
    request_id: str
    heartbeat: float
    last_sent: float = field(default_factory=time.monotonic)
    tasks: bool = False  # the events of arrays' tasks too (`Watch.tasks`)


@dataclass
class LogStream:
    """A client following a job's log: the request, how far it has read, and when it last heard from us."""

    peer: Peer
    request: Logs
    job_key: str
    path: str
    offset: int
    last_sent: float = field(default_factory=time.monotonic)


@dataclass
class Agent:
    """The agent's state; dependencies come in through the constructor so tests can build one."""

    journal: Journal
    poller: Poller
    schedulers: Callable[[str, str], Scheduler]
    version: str
    watches: dict[tuple[Peer, str], WatchStream] = field(default_factory=dict)
    log_streams: dict[tuple[Peer, str], LogStream] = field(default_factory=dict)
    stopping: bool = False
    # How scheduler calls of a submission run: here and now, unless the server hands them to workers.
    dispatch: Dispatch = run_inline
    # Whether the controller answers: shared by every submission and by the recovery of jobs in doubt.
    controller: ControllerWatch = field(
        default_factory=lambda: ControllerWatch(settle=CONTROLLER_SETTLE, retry_for=SUBMIT_RETRY)
    )
    # The room each scheduler group has for our jobs (see milex_agent.room), by scheduler_group.
    rooms: dict[tuple[str, str], SchedulerRoom] = field(default_factory=dict)
    # Keys of jobs in doubt whose bundle was cancelled: cancelled once their outcome is known.
    cancel_requested: set[str] = field(default_factory=set)
    # Keys of the jobs whose submit call is out now (the server's submissions say; none without one).
    in_flight: Callable[[], set[str]] = set

    def scheduler_for(self, settings: MachineSettings) -> Scheduler:
        return self.schedulers(settings.scheduler, settings.path)


class SchedulerCache:
    """Schedulers by (kind, machine path), made once each: SLURM's is shared by every path."""

    def __init__(self) -> None:
        self.made: dict[tuple[str, str], Scheduler] = {}

    def __call__(self, kind: str, machine_path: str) -> Scheduler:
        from milex_agent.scheduler import scheduler_for, scheduler_group

        key = scheduler_group(kind, machine_path)
        if key not in self.made:
            settings = MachineSettings(name=kind, path=machine_path, scheduler=kind)  # type: ignore[arg-type]
            self.made[key] = scheduler_for(settings)
        return self.made[key]

    def close(self) -> None:
        for scheduler in self.made.values():
            scheduler.close()
