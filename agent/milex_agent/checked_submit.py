"""A SubmitBundle whose apps' versions are checked first (`check_versions`), in the same request.

The check (milex_agent.app_versions, the machine's env_command) runs on a worker; the server keeps
this meanwhile, sends the client progress if it asked for some, and once the check is done takes its
`outcome`: the check's reply when it refuses (nothing queued, journaled or submitted), or the
submission, started then, as any other.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from milex_agent.pending import PROGRESS_INTERVAL, PendingSubmit
from milex_common.protocol import AppVersionsReply, SubmitBundle, SubmitProgress
from milex_common.version_check import Wanted, first_difference


@dataclass
class CheckedSubmit:
    """`request` waiting for the versions of `wanted`'s apps (`check`, on a worker); `start` starts
    its submission."""

    request: SubmitBundle
    wanted: Wanted
    check: Future[AppVersionsReply]
    start: Callable[[], PendingSubmit]
    progress_sent: float = field(default_factory=time.monotonic)

    def done(self) -> bool:
        return self.check.done()

    def outcome(self) -> AppVersionsReply | PendingSubmit:
        """The check's reply if it refuses the submission (it failed, or an app's version differs);
        else the submission started (carrying the reason an agent that cannot check gave)."""
        reply = self.check.result()
        if not reply.unchecked and (reply.error or first_difference(self.wanted, reply.versions)):
            reply.id = self.request.id
            return reply
        started = self.start()
        started.unchecked = reply.unchecked
        return started

    def progress(self) -> SubmitProgress | None:
        """Nothing submitted yet, when the client asked for progress and is due some: it hears that
        the agent is alive while the check runs."""
        now = time.monotonic()
        if not self.request.progress or now - self.progress_sent < PROGRESS_INTERVAL:
            return None
        self.progress_sent = now
        return SubmitProgress(id=self.request.id, total=len(self.request.bundle.jobs))

    def next_event_in(self) -> float:
        """Seconds until progress is due (the check's end wakes the loop by itself)."""
        if not self.request.progress:
            return math.inf
        return max(0.0, self.progress_sent + PROGRESS_INTERVAL - time.monotonic())
