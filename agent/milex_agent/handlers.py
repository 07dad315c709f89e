"""One small function per request type; `handle` dispatches a decoded request to it."""

from __future__ import annotations

import getpass
import os
import socket
from concurrent.futures import Future
from functools import partial

import msgspec

from milex_agent import app_versions, run_ends
from milex_agent.array_windows import window_name, window_of
from milex_agent.checked_submit import CheckedSubmit
from milex_agent.job_queue import enqueue, room_for, submission_of
from milex_agent.logs import LogNotFound, check_task, log_path, read_chunk
from milex_agent.pending import PendingSubmit
from milex_agent.scheduler import scheduler_group
from milex_agent.state import Agent, LogStream, Peer, WatchStream
from milex_common.model import JobState
from milex_common.protocol import (
    AGENT_FEATURES,
    Ack,
    AppVersions,
    AppVersionsReply,
    Cancel,
    Cancelled,
    Error,
    Events,
    Hello,
    HelloReply,
    LogChunk,
    Logs,
    Reply,
    Request,
    Shutdown,
    Status,
    StatusReply,
    SubmitBundle,
    TrackedJob,
    Unwatch,
    Watch,
    watched,
)
from milex_common.version_check import recorded_versions

CANCELLED_QUEUED = "cancelled before it was submitted"
# The reason `status` gives a job with no id yet that is not queued: its submit call is out, or it
# got no answer and the job is looked up by its comment (milex_agent.in_doubt, milex_agent.recovery).
SUBMITTING = "submitting: sbatch under way"
IN_DOUBT = "in doubt: sbatch got no answer; asking SLURM whether it has the job"
IN_DOUBT_SILENT = "in doubt: sbatch got no answer and SLURM's controller is silent; asking it again"


Answer = Reply | PendingSubmit | CheckedSubmit | Future[AppVersionsReply]


def handle(agent: Agent, peer: Peer, request: Request) -> Answer:
    """The reply to `request` from `peer`, a submission whose reply comes when it is done (after a
    check of its apps' versions, when asked), or a reply being made on a worker (a check that runs
    commands); streams it starts are registered on `agent`."""
    match request:
        case Hello():
            return hello(agent, request)
        case SubmitBundle():
            return submit(agent, request)
        case Cancel():
            return cancel(agent, request)
        case Status():
            return status(agent, request)
        case Watch():
            return watch(agent, peer, request)
        case Unwatch():
            return unwatch(agent, peer, request)
        case Logs():
            return logs(agent, peer, request)
        case Shutdown():
            agent.stopping = True
            return Ack(id=request.id)
        case AppVersions():  # runs the machine's env_command: never on the loop's thread
            return agent.dispatch(partial(app_versions.answer, request))


def hello(agent: Agent, request: Hello) -> HelloReply:
    return HelloReply(
        id=request.id,
        agent_version=agent.version,
        user=getpass.getuser(),
        host=socket.gethostname(),
        pid=os.getpid(),
        last_seq=agent.journal.last_seq,
        features=list(AGENT_FEATURES),
    )


def submit(agent: Agent, request: SubmitBundle) -> PendingSubmit | CheckedSubmit | Error:
    missing = [name for name in request.bundle.jobs if name not in request.keys]
    if missing:
        return Error(
            id=request.id,
            code="bad_request",
            message=f"the submit request has no idempotency key for job(s) {', '.join(map(repr, missing))}; "
            "nothing was submitted.",
        )
    # A machine path the laptop's configuration writes `~/...` is under this login node's home.
    settings = msgspec.structs.replace(request.settings, path=os.path.expanduser(request.settings.path))
    request = msgspec.structs.replace(request, settings=settings)
    wanted = recorded_versions(request.bundle) if request.check_versions else {}
    if wanted:  # the check runs the machine's env_command: on a worker; the submission starts after
        check = AppVersions(id=request.id, settings=settings, apps=sorted(wanted))
        return CheckedSubmit(
            request,
            wanted,
            agent.dispatch(partial(app_versions.answer, check)),
            partial(_start, agent, request),
        )
    return _start(agent, request)


def _start(agent: Agent, request: SubmitBundle) -> PendingSubmit:
    """The submission of `request`, its jobs queued and journaled."""
    enqueue(agent, request)
    if request.settings.notify:
        run_ends.record(agent.journal, request)
    return submission_of(agent, request, room_for(agent, request.settings))


def cancel(agent: Agent, request: Cancel) -> Cancelled | Error:
    jobs = agent.journal.jobs(request.job_ids, request.bundle)
    if not jobs:
        what = request.bundle or ", ".join(request.job_ids) or "nothing"
        return Error(id=request.id, code="not_found", message=f"no tracked job matches {what}.")
    # Queued jobs end here: none of them reaches the scheduler (a submission in progress asks the
    # journal about each job before it starts it). Those whose sbatch is on its way (in doubt) are
    # cancelled once their id is known, by `cancel_late`.
    jobs = [part for job in jobs for part in (agent.journal.windows(job.key)[1] or [job])]
    queued = [job.key for job in jobs if job.state is JobState.QUEUED]
    agent.journal.settle_unsubmitted(queued, JobState.CANCELLED, CANCELLED_QUEUED)
    if request.bundle:
        bundles = {job.bundle for job in jobs}
        agent.cancel_requested.update(
            row.job.key for row in agent.journal.in_doubt() if row.job.bundle in bundles
        )
    unfinished = {job.job_id: job for job in jobs if job.job_id and not job.state.finished}
    _cancel_in_scheduler(agent, set(unfinished))
    return Cancelled(id=request.id, job_ids=sorted(unfinished), queued=len(queued))


def cancel_late(agent: Agent) -> None:
    """Cancel the jobs whose sbatch was on its way when their bundle was cancelled, now that their
    fate is known: an id (scancel), or back in the queue (settled there). Called by the loop."""
    if not agent.cancel_requested:
        return
    for key in list(agent.cancel_requested):
        job = agent.journal.find(key)
        if job is None or job.state.finished:
            agent.cancel_requested.discard(key)
        elif job.state is JobState.QUEUED:
            agent.journal.settle_unsubmitted([key], JobState.CANCELLED, CANCELLED_QUEUED)
            agent.cancel_requested.discard(key)
        elif job.job_id:
            _cancel_in_scheduler(agent, {job.job_id})
            agent.cancel_requested.discard(key)


def _cancel_in_scheduler(agent: Agent, job_ids: set[str]) -> None:
    """scancel (or its like) these unfinished jobs, one call per scheduler."""
    by_scheduler: dict[tuple[str, str], list[str]] = {}
    for row in agent.journal.watched():
        if row.job_id in job_ids:
            by_scheduler.setdefault(scheduler_group(row.scheduler, row.machine_path), []).append(row.job_id)
    for (kind, machine_path), ids in by_scheduler.items():
        agent.schedulers(kind, machine_path).cancel(ids)
    agent.poller.nudge()


def status(agent: Agent, request: Status) -> StatusReply:
    """The jobs asked for; those of a bundle (or all) include the jobs on their way to the scheduler,
    with no id yet and a reason that says whether their call is out or in doubt."""
    jobs = agent.journal.jobs(request.job_ids, request.bundle, in_doubt=not request.job_ids)
    on_the_way = [job for job in jobs if not job.job_id and job.state is JobState.SUBMITTED]
    if on_the_way:
        in_flight = agent.in_flight()
        doubt = IN_DOUBT_SILENT if agent.controller.silent else IN_DOUBT
        for job in on_the_way:
            job.reason = SUBMITTING if job.key in in_flight else doubt
    usage = agent.journal.usage([job.key for job in jobs]) if request.usage else {}
    return StatusReply(id=request.id, jobs=jobs, last_seq=agent.journal.last_seq, usage=usage)


def watch(agent: Agent, peer: Peer, request: Watch) -> Events:
    events = agent.journal.events_since(request.since)
    last_seq = events[-1].seq if events else max(request.since, agent.journal.last_seq)
    if request.follow:
        heartbeat = max(request.heartbeat, 0.05)
        stream = WatchStream(peer=peer, request_id=request.id, heartbeat=heartbeat, tasks=request.tasks)
        agent.watches[(peer, request.id)] = stream
    return Events(id=request.id, events=watched(events, tasks=request.tasks), last_seq=last_seq)


def unwatch(agent: Agent, peer: Peer, request: Unwatch) -> Ack:
    agent.watches.pop((peer, request.watch_id), None)
    agent.log_streams.pop((peer, request.watch_id), None)
    return Ack(id=request.id)


def _log_owner(agent: Agent, job: TrackedJob, task: int | None) -> tuple[TrackedJob, int | None]:
    """Whose log a task is: the job's own, or for an array cut in windows, the window holding the
    task, with the task's index there."""
    size = agent.journal.window_size(job.key)
    if not size or task is None:
        return job, task
    offset, local = window_of(task, size)
    window = agent.journal.find(window_name(job.key, offset))
    if window is None:
        raise LogNotFound(f"job {job.job_id} ({job.name}) has no task {task}.")
    return window, local


def logs(agent: Agent, peer: Peer, request: Logs) -> LogChunk | Error:
    jobs = agent.journal.jobs([request.job_id])
    if not jobs:
        return Error(id=request.id, code="not_found", message=f"no tracked job with id {request.job_id}.")
    job = jobs[0]
    try:
        owner, task = _log_owner(agent, job, request.array_task)
        path = log_path(owner, task, request.stream)
        if task is not None and request.array_task is not None:
            check_task(owner, task, job=job, asked=request.array_task)
        data = read_chunk(path, request.offset)
    except LogNotFound as error:
        return Error(id=request.id, code="not_found", message=str(error))
    eof = not data and job.state.finished
    if request.follow and not eof:
        stream = LogStream(peer, request, job.key, str(path), request.offset + len(data))
        agent.log_streams[(peer, request.id)] = stream
    return LogChunk(id=request.id, path=str(path), offset=request.offset, data=data, eof=eof)
