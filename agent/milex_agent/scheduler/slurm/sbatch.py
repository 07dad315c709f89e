"""sbatch started ahead of its call: the next submission finds one waiting for its script.

sbatch spends much of its time before it reads its script: the process's start, SLURM's libraries and
slurm.conf (about 2.5 of 7 ms on the test cluster). One started ahead leaves the next submission
little more than the part that talks to the controller. A spare is started whenever at most one call
is in flight: a chain's next sbatch starts while the one before talks to the controller (each job
waits for the id of the one before), and a lone submission's is ready for the next. While several
are in flight (a bundle's independent jobs) none is started: on a login node of few cores the
spare's start-up would only take the CPU from the calls in flight and the controller. What argv
would carry for the call (the dependency, the comment) goes into the script's header as `#SBATCH`
lines instead: sbatch reads options there from a script given on stdin, as it does from a file.

Nothing is submitted before the script is written: the ledger records the intent first, and a spare
whose stdin closes empty (the agent stopped) exits refusing an empty script. A spare older than
`SPARE_FOR` seconds is replaced rather than used, so that the configuration it read is never older
than that (the maker replaces it then; a call that finds one older stops it); the scheduler's
`close` (the agent's exit) stops the one waiting.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from milex_agent.scheduler.slurm.command import CommandResult, finish, spawn, start_command
from milex_common.errors import SchedulerError

SBATCH = ("sbatch", "--parsable")
# What a pipe holds before its writer waits (Linux: 64 KiB): a script this size is written at once.
PIPE_TAKES = 60 * 1024
SPARE_FOR = 300.0  # seconds a spare may wait for its script; an older one is replaced, not used
# An option a header line carries as argv does: sbatch splits header lines on blanks and quotes.
_PLAIN_OPTION = re.compile(r"--[a-z-]+=[^\s'\"\\#]+")


class Sbatch:
    """Runs sbatch for each submission, given its script as text or by path, with one started ahead
    while at most one call is in flight: the next call (of a chain, or after a pause) finds an sbatch
    ready, and calls made together (a bundle's) keep the cores of the login node to themselves."""

    def __init__(self) -> None:
        # Submissions start from the agent's loop and end on workers; the spare's maker waits here.
        self._idle = threading.Condition()
        self._spare: tuple[float, subprocess.Popen[str]] | None = None
        self._calls = 0  # in flight
        self._maker: threading.Thread | None = None
        self._closed = False
        self._failed = False  # the last spare could not start: none until the next call

    def start(self, options: Sequence[str], script: Path, text: str | None) -> Callable[[], CommandResult]:
        """sbatch started now with `options` for `text` (None: read from `script`); the function
        returned waits for it (see `start_command`)."""
        headed = None if text is None else with_directives(text, options)
        if headed is None:  # sbatch reads the file, or the script has no header to add lines to
            argv = [*SBATCH, *options, *(() if text is not None else (str(script),))]
            return start_command(argv, stdin=text)
        process = self._take() or self._spawn_or_end()
        given = _give(process, headed)
        with self._idle:  # the next call's spare is started while this one runs: after it is given
            self._idle.notify_all()  # its script, as the spawn holds this process's GIL a moment

        def answer() -> CommandResult:
            try:
                return finish(process, SBATCH, None if given else headed)
            finally:
                self._ended()

        return answer

    @property
    def waiting(self) -> int | None:
        """The pid of the spare sbatch waiting for a script; None when none waits."""
        with self._idle:
            return None if self._spare is None else self._spare[1].pid

    def close(self) -> None:
        """Stop the spare, if one waits, and start no other."""
        with self._idle:
            self._closed = True
            spare, self._spare = self._spare, None
            self._idle.notify_all()
        if self._maker is not None:
            self._maker.join()
        if spare is not None:
            _stop(spare[1])

    def _take(self) -> subprocess.Popen[str] | None:
        """The spare, if one waits and is fresh (None to start one now); the call counted as started."""
        with self._idle:
            spare, self._spare = self._spare, None
            self._calls += 1
            self._failed = False
            if self._maker is None and not self._closed:
                self._maker = threading.Thread(target=self._make_spares, name="milex-sbatch", daemon=True)
                self._maker.start()
        if spare is None:
            return None
        started, process = spare
        if time.monotonic() - started < SPARE_FOR and process.poll() is None:
            return process
        _stop(process)  # old, or it exited (a spare that failed to start): a new one says why
        return None

    def _spawn_or_end(self) -> subprocess.Popen[str]:
        try:
            return spawn(SBATCH, reads_stdin=True)
        except BaseException:
            self._ended()
            raise

    def _ended(self) -> None:
        with self._idle:
            self._calls -= 1
            self._idle.notify_all()

    def _make_spares(self) -> None:
        """Start a spare whenever none waits and at most one call is in flight; replace one that has
        waited SPARE_FOR, so that a call after a long pause finds a fresh one."""
        with self._idle:
            while not self._closed:
                due_in = self._spare_due_in()
                if due_in is None or due_in > 0:
                    self._idle.wait(due_in)
                    continue
                old, self._spare = self._spare, None
                self._idle.release()
                try:
                    if old is not None:
                        _stop(old[1])
                    process: subprocess.Popen[str] | None = spawn(SBATCH, reads_stdin=True)
                except SchedulerError:  # the next call starts its own, and says why it cannot
                    process = None
                finally:
                    self._idle.acquire()
                self._keep(process)

    def _spare_due_in(self) -> float | None:
        """Seconds until a spare is to be started (or the waiting one replaced), the lock held; None
        while several calls are in flight or the last spare could not start (until the next call)."""
        if self._calls > 1 or self._failed:
            return None
        if self._spare is not None:
            return self._spare[0] + SPARE_FOR - time.monotonic()
        return 0.0

    def _keep(self, process: subprocess.Popen[str] | None) -> None:
        """Keep the spare just started (the lock held), unless calls came together or `close` did
        meanwhile."""
        if process is None:
            self._failed = True
        elif self._closed or self._calls > 1:
            _stop(process)
        else:
            self._spare = (time.monotonic(), process)


def with_directives(text: str, options: Sequence[str]) -> str | None:
    """`text` with `options` as `#SBATCH` lines at the end of its header, where they override the
    script's own as argv would; None if that cannot be said there (no `#!` line, or an option that a
    header line would split)."""
    if not text.startswith("#!") or not all(_PLAIN_OPTION.fullmatch(option) for option in options):
        return None
    if not options:
        return text
    lines = text.splitlines(keepends=True)
    end = next(
        (at for at, line in enumerate(lines[1:], 1) if line.strip() and not line.lstrip().startswith("#")),
        len(lines),
    )  # sbatch reads #SBATCH lines up to the first command
    if end == len(lines) and lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    added = "".join(f"#SBATCH {option}\n" for option in options)
    return "".join(lines[:end]) + added + "".join(lines[end:])


def _give(process: subprocess.Popen[str], text: str) -> bool:
    """Write `text` to `process` and close its stdin now, if the pipe takes it whole at once (the
    caller's thread must not wait on a reader); False to leave it to `finish`."""
    if len(text.encode()) > PIPE_TAKES or process.stdin is None:
        return False
    try:
        process.stdin.write(text)
        process.stdin.close()
    except BrokenPipeError:  # it exited: `finish` reports what it printed
        with contextlib.suppress(OSError):
            process.stdin.close()
    process.stdin = None  # given: `finish` has nothing more to write
    return True


def _stop(process: subprocess.Popen[str]) -> None:
    """End a spare that will not be given a script: with its stdin closed empty it submits nothing."""
    with process:
        process.kill()
        process.communicate()
