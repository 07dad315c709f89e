"""The `notify` commands of runs that ended, from the agent's loop: each started once, never waited
for, killed when it runs past its timeout, reaped later, and its failure told in the agent's log.

At most once: a run is marked sent in the journal before its command starts, so a restarted agent
never starts it again; an agent killed between the mark and the start (a few microseconds) loses that
one notification. A command started runs in a session of its own: an agent killed meanwhile does not
take it down, and it ends on its own, unwatched.

The command runs as `bash -c COMMAND` in the agent's own environment, which is the user's login
environment the agent was started in, not through the machine's `env_command`: that prepares the
jobs' software (modules, a conda environment), may be slow, and is not what `mail` or `curl` need.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import msgspec

from milex_agent import run_ends
from milex_agent.journal import Journal, JournalError
from milex_agent.run_ends import EndedRun

NOTIFY_TIMEOUT = 60.0  # seconds a notify command may run before it is killed
RECHECK = 30.0  # seconds between checks of the runs when no event came (a run may end without one)
OUTPUT_SHOWN = 2000  # characters of a failed command's output told in the log
log = logging.getLogger("milex_agent")


@dataclass
class _Started:
    """A notify command running: its run, its process, where its output goes, when it must end."""

    run: str
    process: subprocess.Popen[bytes]
    output: IO[bytes]
    deadline: float
    killed: bool = False


class Notifier:
    """Tells the end of each run that asked for it; `step` from every turn of the agent's loop."""

    def __init__(
        self,
        journal: Journal,
        *,
        timeout: float = NOTIFY_TIMEOUT,
        recheck: float = RECHECK,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.journal = journal
        self.timeout = timeout
        self.recheck = recheck
        self.clock = clock
        self.running: list[_Started] = []
        # The journal's last event and count of usage writes at the last check (-1: none yet).
        self._checked: tuple[int, int] = (-1, -1)
        self._checked_at = 0.0

    def step(self) -> None:
        """Reap the commands that ended (or kill those past their timeout), then start the command of
        each run that has ended since the last check: when the journal has new events or usage (a run
        is told once its jobs' usage is there, milex_agent.run_ends), or every `recheck` seconds (the
        jobs of a run refused whole are forgotten without an event). A journal write refused (a full
        disk) raises JournalError: nothing was started, and the check is made again at the next turn.
        Nothing else of it ever reaches the loop."""
        now, seen = self.clock(), (self.journal.last_seq, self.journal.usage_writes)
        try:
            self.reap()
            if seen == self._checked and now - self._checked_at < self.recheck:
                return
            for run in list(run_ends.ended(self.journal)):
                run_ends.mark_sent(self.journal, run.run)
                self.start(run)
        except JournalError:
            raise
        except Exception:  # a defect: logged, tried again at the next check; the loop never dies of it
            log.exception("notifying the end of runs failed")
        self._checked, self._checked_at = seen, now

    def start(self, run: EndedRun) -> None:
        """Start `run`'s command with its summary on stdin; a command that cannot start is logged."""
        summary = run.summary
        cwd = run.machine_path if Path(run.machine_path).is_dir() else None
        env = {**os.environ, "MILEX_BUNDLE": summary.bundle, "MILEX_RUN_ID": summary.run_id,
               "MILEX_MACHINE": summary.machine, "MILEX_SUMMARY": summary.summary}  # fmt: skip
        output = tempfile.TemporaryFile(prefix="milex-notify-")  # noqa: SIM115 (closed once reaped)
        with tempfile.TemporaryFile(prefix="milex-notify-") as stdin:  # a file: no pipe to block on
            stdin.write(msgspec.json.encode(summary) + b"\n")
            stdin.seek(0)
            try:
                process = subprocess.Popen(
                    ["bash", "-c", run.command], stdin=stdin, stdout=output, stderr=subprocess.STDOUT,
                    cwd=cwd, env=env, start_new_session=True,
                )  # fmt: skip
            except (OSError, ValueError) as error:  # no bash, no such directory, a NUL in the command
                output.close()
                log.warning("notify command of %s could not start: %s", run.run, error)
                return
        log.info("notify: %s (pid %d)", summary.summary, process.pid)
        self.running.append(_Started(run.run, process, output, self.clock() + self.timeout))

    def reap(self) -> None:
        """Collect the commands that ended; kill those past their timeout (reaped at a later turn)."""
        for started in list(self.running):
            code = started.process.poll()
            if code is None:
                if not started.killed and self.clock() >= started.deadline:
                    started.killed = True
                    _kill(started.process)
                continue
            self.running.remove(started)
            self._report(started, code)

    def close(self) -> None:
        """The agent stops: commands still running are killed, and said so."""
        for started in self.running:
            _kill(started.process)
            started.process.wait()
            log.warning("notify command of %s was killed: the agent stopped", started.run)
            started.output.close()
        self.running.clear()

    def _report(self, started: _Started, code: int) -> None:
        started.output.seek(0)
        said = started.output.read().decode(errors="replace").strip()
        started.output.close()
        if started.killed:
            problem = f"ran past its {self.timeout:g} s and was killed"
        elif code == 0:
            log.info("notify command of %s done", started.run)
            return
        else:
            problem = f"exited {code}"
        shown = said[-OUTPUT_SHOWN:] if said else "(no output)"
        log.warning("notify command of %s %s; its output: %s", started.run, problem, shown)


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Kill the command and what it started (its session's process group)."""
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.killpg(process.pid, signal.SIGKILL)
