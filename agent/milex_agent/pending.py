"""A submit request in progress: stepped by the server between other requests, answered when done."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from milex_agent.array_windows import WINDOW_MARK
from milex_agent.state import Agent
from milex_agent.submission import BundleSubmission
from milex_common.errors import MilexError
from milex_common.model import JobState
from milex_common.protocol import SubmitBundle, SubmitProgress, Submitted, TrackedJob

# Progress is sent at least this often to a client that asked for it, even when nothing moved: a
# client that hears nothing for a few seconds knows the agent is gone.
PROGRESS_INTERVAL = 0.5
log = logging.getLogger("milex_agent")


@dataclass
class PendingSubmit:
    """The bundle of one SubmitBundle request on its way to the scheduler."""

    agent: Agent
    request: SubmitBundle
    submission: BundleSubmission
    progress_sent: float = field(default_factory=time.monotonic)
    # Why the apps' versions the request asked to check were not checked (milex_agent.checked_submit).
    unchecked: str = ""

    @functools.cached_property
    def keys(self) -> frozenset[str]:
        """The idempotency keys of this request (asked at every turn of the server's loop)."""
        return frozenset(self.request.keys.values())

    def step(self) -> Submitted | None:
        """The reply once every job is submitted (or the submission stopped); None until then."""
        return self._reply() if self.submission.step() else None

    def wait(self) -> Submitted:
        """The reply, after submitting the whole bundle here and now."""
        with contextlib.suppress(Exception):  # the reply carries it
            self.submission.run()
        return self._reply()

    def in_flight(self) -> set[str]:
        """The keys of the jobs whose submit call is out now (for a window, its array's: clients see
        the array)."""
        names = (job.name.partition(WINDOW_MARK)[0] for job, _ in self.submission.running.values())
        return {self.request.keys[name] for name in names if name in self.request.keys}

    def stop(self, reason: str) -> None:
        self.submission.stop(reason)

    def depends_on_lost(self, keys: list[str]) -> bool:
        """Whether any of the jobs with these keys (or windows of them) is one of this request's."""
        return any(key.partition(WINDOW_MARK)[0] in self.keys for key in keys)

    def progress(self) -> SubmitProgress | None:
        """How far the submission is, when the client asked for progress and is due some."""
        now = time.monotonic()
        if not self.request.progress or now - self.progress_sent < PROGRESS_INTERVAL:
            return None
        self.progress_sent = now
        submission = self.submission
        return SubmitProgress(
            id=self.request.id,
            submitted=len(submission.submitted),
            total=len(submission.ordered),
            in_doubt=len(submission.in_doubt),
            waiting_for_controller=submission.waiting_for_controller,
        )

    def next_event_in(self) -> float:
        """Seconds until this submission has something to do that no finished call announces."""
        progress = math.inf
        if self.request.progress:
            progress = self.progress_sent + PROGRESS_INTERVAL - time.monotonic()
        return max(0.0, min(progress, self.submission.next_event_in()))

    def _reply(self) -> Submitted:
        """Every job accepted so far, and what stopped the rest (a refusal, a silent controller, a bug)."""
        error = ""
        try:
            self.submission.result()
        except MilexError as failure:
            error = str(failure)
        except Exception as failure:  # the jobs accepted so far are still answered
            log.exception("submission of %s failed", self.request.bundle.stem)
            error = f"the agent failed during the submission: {failure!r}; its log has the traceback."
        self.agent.poller.nudge()
        jobs = [self.agent.journal.find(key) for key in self.request.keys.values()]
        # Those the scheduler has, those in the agent's queue, and those settled without running.
        known = [
            job for job in jobs if job is not None and (job.job_id or job.state is not JobState.SUBMITTED)
        ]
        for job in known:
            job.script_sha256 = self.submission.script_sha256.get(job.name) or kept_script_sha256(job)
        return Submitted(id=self.request.id, jobs=known, error=error, unchecked=self.unchecked)


def kept_script_sha256(job: TrackedJob) -> str:
    """The sha256 of the script kept for `job` under `slurm/` (the text an earlier attempt submitted:
    a retried request renders nothing); "" for a job not submitted, or a copy that cannot be read."""
    if not job.job_id or not job.script:
        return ""
    try:
        return hashlib.sha256(Path(job.script).read_bytes()).hexdigest()
    except OSError:
        return ""
