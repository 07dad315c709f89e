"""A submit request in progress: stepped by the server between other requests, answered when done."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from milex.agent.state import Agent
from milex.agent.submission import BundleSubmission
from milex.common.errors import SubmitError
from milex.common.protocol import SubmitBundle, Submitted


@dataclass
class PendingSubmit:
    """The bundle of one SubmitBundle request on its way to the scheduler."""

    agent: Agent
    request: SubmitBundle
    submission: BundleSubmission

    def step(self) -> Submitted | None:
        """The reply once every job is submitted (or the submission stopped); None until then."""
        return self._reply() if self.submission.step() else None

    def wait(self) -> Submitted:
        """The reply, after submitting the whole bundle here and now."""
        with contextlib.suppress(SubmitError):  # the reply carries it
            self.submission.run()
        return self._reply()

    def stop(self, reason: str) -> None:
        self.submission.stop(reason)

    def _reply(self) -> Submitted:
        error = ""
        try:
            self.submission.result()
        except SubmitError as refusal:
            error = str(refusal)
        self.agent.poller.nudge()
        jobs = [self.agent.journal.find(key) for key in self.request.keys.values()]
        return Submitted(id=self.request.id, jobs=[job for job in jobs if job and job.job_id], error=error)
