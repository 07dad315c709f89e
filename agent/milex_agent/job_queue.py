"""The agent's own job queue: jobs kept in the journal until their scheduler has room for them.

A submit request is kept whole in the journal and its jobs are QUEUED before any goes to the
scheduler; its submission gives the scheduler what fits in the room (`milex_agent.room`), and the
rest waits. After each poll (no query of its own), the queue counts from the journal what each
scheduler has of ours, and releases waiting jobs, in dependency order, by a new submission of their
request, at most `RELEASE_PER_POLL` per scheduler and poll.
"""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Set as AbstractSet

import msgspec

from milex_agent.ledger import JournalLedger
from milex_agent.pending import PendingSubmit
from milex_agent.room import QUEUED_REASON, RequestRoom, SchedulerRoom
from milex_agent.scheduler import scheduler_group
from milex_agent.state import Agent
from milex_agent.submission import BundleSubmission, job_tasks, planned_files
from milex_common.model import JobState, MachineSettings
from milex_common.protocol import SubmitBundle, TrackedJob, encode


def enqueue(agent: Agent, request: SubmitBundle) -> None:
    """Keep `request` and queue its jobs not seen before (a retry's known jobs stay as they are)."""
    bundle, settings = request.bundle, request.settings
    jobs = []
    for job in bundle.ordered_jobs():
        files = planned_files(bundle.stem, job, settings)
        tracked = TrackedJob(key=request.keys[job.name], bundle=bundle.stem, name=job.name, job_id="",
                             state=JobState.QUEUED, reason=QUEUED_REASON, script=files.script,
                             stdout=files.stdout, stderr=files.stderr)  # fmt: skip
        jobs.append((tracked, job_tasks(job)))
    body = encode(msgspec.structs.replace(request, progress=False))
    agent.journal.enqueue(bundle.stem, body, jobs, scheduler=settings.scheduler, machine_path=settings.path)


def room_for(agent: Agent, settings: MachineSettings, *, release: bool = False) -> RequestRoom:
    """The room a request with these settings submits into (its scheduler's limits read when due);
    `release`: a release of queued jobs, which spends the poll's budget."""
    group = scheduler_group(settings.scheduler, settings.path)
    room = agent.rooms.get(group)
    if room is None:
        room = agent.rooms[group] = SchedulerRoom(clock=agent.controller.clock)
        room.used = _used(agent).get(group, 0)
    scheduler = agent.scheduler_for(settings)
    room.read_when_due(lambda: agent.dispatch(lambda: scheduler.limits(settings.slurm_account, None)))
    return RequestRoom(room, settings.max_submitted, release=release)


def release(agent: Agent, busy: AbstractSet[str]) -> Iterator[PendingSubmit]:
    """After a poll: count what each scheduler has of ours, and a submission for each request with
    queued jobs whose scheduler has room (none for a request whose keys a submission in progress owns)."""
    used = _used(agent)
    for group, scheduler_room in agent.rooms.items():
        scheduler_room.counted(used.get(group, 0))
    requests = agent.journal.queued_requests()
    for _, body in requests:
        request = msgspec.msgpack.decode(body, type=SubmitBundle)
        if not busy.isdisjoint(request.keys.values()):
            continue
        room = room_for(agent, request.settings, release=True)
        if room.ready and room.full:
            continue
        yield submission_of(agent, request, room, release=True)
    if requests:
        agent.journal.drop_settled_requests()


def submission_of(
    agent: Agent, request: SubmitBundle, room: RequestRoom, *, release: bool = False
) -> PendingSubmit:
    """The submission of `request`'s jobs that are not submitted yet, into `room` (`release`: of
    queued jobs, by the agent itself, not for a client)."""
    scheduler = agent.scheduler_for(request.settings)
    submission = BundleSubmission(
        request.bundle,
        request.settings,
        scheduler,
        JournalLedger(agent.journal, request, scheduler, release=release),
        dispatch=agent.dispatch,
        in_flight=scheduler.parallel_submissions,
        watch=agent.controller,
        room=room,
    )
    return PendingSubmit(agent, request, submission)


def _used(agent: Agent) -> dict[tuple[str, str], int]:
    """Tasks each scheduler group has of ours (or may have: in doubt), from the journal."""
    used: dict[tuple[str, str], int] = {}
    for (kind, machine_path), tasks in agent.journal.in_scheduler().items():
        group = scheduler_group(kind, machine_path)
        used[group] = used.get(group, 0) + tasks
    return used
