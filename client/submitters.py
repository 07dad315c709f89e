"""The one interface through which the client submits, watches and cancels jobs: the machine's agent."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

from milex.agents import drop_shared_connection, shared_connection
from milex.common.errors import SubmitError
from milex.common.model import Bundle, JobStatus, MachineSettings
from milex.common.protocol import Cancel, Cancelled, Status, StatusReply, SubmitBundle, Submitted, TrackedJob
from milex.config import Machine
from milex.connection import DEFAULT_TIMEOUT, AgentConnection, AgentUnavailable

SECONDS_PER_JOB = 0.5


class AgentSubmitter:
    """Submits bundles to one machine's agent and asks it about its jobs."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine

    @property
    def connection(self) -> AgentConnection:
        return shared_connection(self.machine)

    def submit(
        self,
        bundle: Bundle,
        settings: MachineSettings,
        on_submitted: Callable[[TrackedJob], None],
        while_waiting: Callable[[], None] = lambda: None,
        run_id: str = "",
    ) -> list[TrackedJob]:
        """Submit `bundle`; `while_waiting` runs once the request is on its way, while the agent works.

        A lost reply is retried once with the same keys, so nothing doubles. If `while_waiting`
        fails, the reply is still collected (the jobs are submitted and reach `on_submitted`) before
        its error is raised. `run_id` (the run's record id) is the keys' per-attempt part, so a job in
        SLURM names the run it belongs to.
        """
        attempt = run_id or uuid.uuid4().hex[:12]
        keys = {name: f"{bundle.stem}/{name}/{attempt}" for name in bundle.jobs}
        request = SubmitBundle(bundle=bundle, settings=settings, keys=keys)
        # The agent answers once every job is submitted: give a big bundle the time its sbatch calls take.
        timeout = DEFAULT_TIMEOUT + SECONDS_PER_JOB * len(bundle.jobs)
        request_id = self.connection.send(request)
        meanwhile: Exception | None = None
        try:
            while_waiting()
        except Exception as error:  # raised below, once the submission is known
            meanwhile = error
        try:
            reply = self.connection.receive(request_id, timeout, expect=Submitted)
        except AgentUnavailable:
            drop_shared_connection(self.machine)
            reply = self.connection.request(request, timeout, expect=Submitted)
        for job in reply.jobs:
            on_submitted(job)
        if meanwhile is not None:
            raise meanwhile
        if reply.error:
            raise SubmitError(reply.error)
        return reply.jobs

    def tracked(self, job_ids: Sequence[str] = (), bundle: str = "") -> StatusReply:
        return self.connection.request(Status(job_ids=list(job_ids), bundle=bundle), expect=StatusReply)

    def states(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """The agent's last known state of each job (it polls SLURM; this asks only the agent)."""
        return {job.job_id: job.status() for job in self.tracked(job_ids).jobs}

    def cancel(self, job_ids: Sequence[str] = (), bundle: str = "") -> list[str]:
        reply = self.connection.request(Cancel(job_ids=list(job_ids), bundle=bundle), expect=Cancelled)
        return reply.job_ids


def submitter_for(machine: Machine) -> AgentSubmitter:
    """The submitter that reaches `machine`."""
    return AgentSubmitter(machine)
