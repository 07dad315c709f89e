"""The one interface through which the client submits, watches and cancels jobs: the machine's agent."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Protocol

from milex.config.file import Machine
from milex.machine.endpoint import drop_shared_connection, shared_connection
from milex.records import job_key
from milex_common.connection import DEFAULT_TIMEOUT, AgentConnection, AgentUnavailable
from milex_common.errors import SchedulerError, SubmitError
from milex_common.intervals import APP_VERSIONS_TIMEOUT
from milex_common.model import Bundle, JobStatus, MachineSettings
from milex_common.protocol import (
    SUBMIT_PROGRESS,
    USAGE,
    AppVersionsReply,
    Cancel,
    Cancelled,
    Status,
    StatusReply,
    SubmitBundle,
    SubmitProgress,
    Submitted,
    TrackedJob,
)

SECONDS_PER_JOB = 0.5  # for an agent that sends no progress: the time its sbatch calls may take
# An agent that streams progress sends some every second: this long without any, it is gone.
PROGRESS_TIMEOUT = 5.0
OnProgress = Callable[[SubmitProgress], None]


class VersionAnswers(Protocol):
    """What a submission that asks the agent to check the apps' versions makes of its answers
    (milex.provenance.check.AgentCheck)."""

    def refusal(self, reply: AppVersionsReply) -> Exception:
        """The error to raise: the check refused the submission (nothing was submitted)."""
        ...

    def unchecked(self, why: str) -> None:
        """The agent could not check, and submitted: say so."""
        ...


class AgentSubmitter:
    """Submits bundles to one machine's agent and asks it about its jobs."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine

    @property
    def connection(self) -> AgentConnection:
        return shared_connection(self.machine)

    @property
    def agent_host(self) -> str:
        """The host the machine's agent runs on, as it said when greeted."""
        return self.connection.agent_host

    def submit(
        self,
        bundle: Bundle,
        settings: MachineSettings,
        on_submitted: Callable[[TrackedJob], None],
        while_waiting: Callable[[], None] = lambda: None,
        run_id: str = "",
        on_progress: OnProgress | None = None,
        versions: VersionAnswers | None = None,
    ) -> list[TrackedJob]:
        """Submit `bundle`; `while_waiting` runs once the request is on its way, while the agent works;
        `on_progress` gets each SubmitProgress of an agent that sends them.

        A lost reply (or an agent silent for PROGRESS_TIMEOUT while it should send progress) is
        retried once with the same keys, so nothing doubles. If `while_waiting` fails, the reply is
        still collected (the jobs are submitted and reach `on_submitted`) before its error is raised.
        `run_id` (the run's record id) is the keys' per-attempt part, so a job in SLURM names the run
        it belongs to. With `versions`, the agent checks the apps' versions first, in the same request:
        its refusal is raised (`versions.refusal`), nothing submitted.
        """
        attempt = run_id or uuid.uuid4().hex[:12]
        keys = {name: job_key(bundle.stem, name, attempt) for name in bundle.jobs}
        request = SubmitBundle(
            bundle=bundle, settings=settings, keys=keys, check_versions=versions is not None
        )
        request_id = self.connection.send(self._asking_progress(request))
        meanwhile: Exception | None = None
        try:
            while_waiting()
        except Exception as error:  # raised below, once the submission is known
            meanwhile = error
        try:
            reply = self._reply(request, request_id, on_progress)
        except AgentUnavailable:
            drop_shared_connection(self.machine)
            request_id = self.connection.send(self._asking_progress(request))
            reply = self._reply(request, request_id, on_progress)
        if isinstance(reply, AppVersionsReply):
            assert versions is not None  # impossible: only a request that asks gets this reply
            if meanwhile is not None:
                raise meanwhile
            raise versions.refusal(reply)
        if reply.unchecked and versions is not None:
            versions.unchecked(reply.unchecked)
        for job in reply.jobs:
            on_submitted(job)
        if meanwhile is not None:
            raise meanwhile
        if reply.error:
            raise SubmitError(reply.error)
        return reply.jobs

    def _asking_progress(self, request: SubmitBundle) -> SubmitBundle:
        """`request`, asking for progress when this agent sends it (older agents do not)."""
        request.progress = SUBMIT_PROGRESS in self.connection.features
        return request

    def _reply(
        self, request: SubmitBundle, request_id: str, on_progress: OnProgress | None
    ) -> Submitted | AppVersionsReply:
        """The Submitted reply (or the version check's refusal, when asked), passing on the progress
        that comes before it."""
        final: tuple[type[Submitted | AppVersionsReply], ...] = (
            (Submitted, AppVersionsReply) if request.check_versions else (Submitted,)
        )
        if not request.progress:  # the agent answers once every job is submitted: give it their time
            timeout = DEFAULT_TIMEOUT + SECONDS_PER_JOB * len(request.bundle.jobs)
            if request.check_versions:  # and the time of the check, first
                timeout += APP_VERSIONS_TIMEOUT
            return self.connection.receive(request_id, timeout, expect=final)
        expect: tuple[type[Submitted | AppVersionsReply | SubmitProgress], ...] = (SubmitProgress, *final)
        while True:
            reply = self.connection.receive(request_id, PROGRESS_TIMEOUT, expect=expect)
            if not isinstance(reply, SubmitProgress):
                return reply
            if on_progress is not None:
                on_progress(reply)

    def tracked(self, job_ids: Sequence[str] = (), bundle: str = "", *, usage: bool = False) -> StatusReply:
        """The agent's jobs (all, those of `job_ids`, or of `bundle`); with `usage`, what those that
        ended used (an agent too old to keep it is an error that says how to update it)."""
        connection = self.connection
        if usage and USAGE not in connection.features:
            raise SchedulerError(
                f"the agent on {self.machine.name} keeps no resource usage (an older release): "
                f"`milex agent deploy --machine {self.machine.name}`, then `milex agent stop --machine "
                f"{self.machine.name}`, and it gathers the usage of jobs that end from then on."
            )
        request = Status(job_ids=list(job_ids), bundle=bundle, usage=usage)
        return connection.request(request, expect=StatusReply)

    def states(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """The agent's last known state of each job (it polls SLURM; this asks only the agent)."""
        return {job.job_id: job.status() for job in self.tracked(job_ids).jobs}

    def cancel(self, job_ids: Sequence[str] = (), bundle: str = "") -> Cancelled:
        """Cancel jobs by id, or every unfinished job of a bundle (those in the agent's queue too)."""
        return self.connection.request(Cancel(job_ids=list(job_ids), bundle=bundle), expect=Cancelled)


def submitter_for(machine: Machine) -> AgentSubmitter:
    """The submitter that reaches `machine`."""
    return AgentSubmitter(machine)
