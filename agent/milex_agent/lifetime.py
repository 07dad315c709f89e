"""When the agent has no reason to run any more: idle for too long, its directory gone or replaced, or
asked to leave for another login node."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from milex_common.intervals import HOME_CHECK_INTERVAL, IDLE_EXIT, LEAVE_CHECK_INTERVAL


class Lifetime:
    """Says why the agent should stop, or None; the server calls `busy` whenever it has work or a client.

    `idle_exit` seconds (0: never) without work, client or request, and with no unfinished job
    (asked through `unfinished`, at most every `check_every` seconds), end the agent; so do the
    removal or replacement of any of `home` (its directory, its journal), seen by one stat each
    every `check_every` seconds (when `beat` also says the agent lives); so does `leave`
    (milex_agent.handover.leave_reason), asked every `leave_every` seconds: a command waits on
    another login node for the agent to move there.
    """

    def __init__(
        self,
        *,
        idle_exit: float = IDLE_EXIT,
        home: Sequence[Path] = (),
        check_every: float = HOME_CHECK_INTERVAL,
        leave: Callable[[], str | None] = lambda: None,
        beat: Callable[[], None] = lambda: None,
        leave_every: float = LEAVE_CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_exit = idle_exit
        self.check_every, self.leave, self.leave_every, self.beat = check_every, leave, leave_every, beat
        self.clock = clock
        self.home = {path: identity(path) for path in home}
        self.last_busy = clock()
        self.next_check = self.last_busy + check_every
        self.next_leave_check = self.last_busy + leave_every

    def busy(self) -> None:
        self.last_busy = self.clock()

    def reason_to_stop(self, unfinished: Callable[[], bool]) -> str | None:
        """Why the agent should stop now; None while it has a reason to run."""
        now = self.clock()
        if now >= self.next_leave_check:
            self.next_leave_check = now + self.leave_every
            asked = self.leave()
            if asked:
                return asked
        if now >= self.next_check:
            self.next_check = now + self.check_every
            self.beat()
            gone = self._home_gone()
            if gone:
                return gone
            if self.idle_exit and unfinished():
                self.last_busy = now
        if self.idle_exit and now - self.last_busy >= self.idle_exit:
            if unfinished():
                self.last_busy = now
                return None
            return (
                f"idle for {now - self.last_busy:.0f} s (--idle-exit {self.idle_exit:g}): no unfinished "
                "job, submission, client or request; the next command starts the agent again"
            )
        return None

    def _home_gone(self) -> str | None:
        for path, known in self.home.items():
            now = identity(path)
            if now is None:
                return f"{path} was removed; an agent without its journal has nothing to watch"
            if now != known:
                return f"{path} was replaced by another file; this agent's journal is no longer there"
        return None


def identity(path: Path) -> tuple[int, int] | None:
    """The (device, inode) of `path`, None when it is gone."""
    try:
        status = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return status.st_dev, status.st_ino
