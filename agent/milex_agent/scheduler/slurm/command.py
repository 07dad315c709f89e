"""The one gateway through which scheduler commands run: argv list, no shell, timeout, stderr kept."""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from milex_common.errors import SchedulerError, SchedulerUnavailable

DEFAULT_TIMEOUT = 60.0
# What SLURM's commands print when the controller did not answer, so that a call may or may not have
# been done (slurm_strerror of SLURM_PROTOCOL_SOCKET_IMPL_TIMEOUT, SLURM_COMMUNICATIONS_*_ERROR,
# SLURMCTLD_COMMUNICATIONS_*, EAGAIN after sbatch's own retries). Seen on SLURM 22.05 with slurmctld
# stopped by SIGSTOP: `sbatch: error: Batch job submission failed: Socket timed out on send/recv
# operation` after MessageTimeout, and the job appeared once slurmctld resumed. With slurmctld killed
# (kill -9) mid-call, the connection is cut: `Connection reset by peer` (ECONNRESET) or `Transport
# endpoint is not connected` (ENOTCONN), strerror texts sbatch prints for the cut call, which the
# controller may have accepted before it died.
_UNANSWERED = (
    "socket timed out on send/recv operation",
    "unable to contact slurm controller",
    "zero bytes were transmitted or received",
    "communication connection failure",
    "communication send failure",
    "communication receive failure",
    "temporarily unable to accept job",
    "resource temporarily unavailable",
    "transaction in progress",
    "backup controller in standby mode",
    "connection reset by peer",
    "transport endpoint is not connected",
    "broken pipe",
)


@dataclass(frozen=True)
class CommandResult:
    """What a finished command printed and returned."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def message(self) -> str:
        """The command's own explanation of a failure: stderr, else stdout."""
        return (self.stderr.strip() or self.stdout.strip()) or f"exit status {self.returncode}"

    @property
    def unanswered(self) -> bool:
        """Whether it failed because the controller did not answer (or it was killed): its outcome
        is unknown, where any other failure is the controller's own answer."""
        if self.returncode < 0:  # killed by a signal
            return True
        text = self.message.lower()
        return self.returncode != 0 and any(marker in text for marker in _UNANSWERED)


def run_command(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
) -> CommandResult:
    """Run `argv` (given `stdin`, and `env` added to the agent's environment) and return what it
    printed; SchedulerError if it cannot start, SchedulerUnavailable (its outcome unknown) if it times out.

    A non-zero exit is returned, not raised: callers decide which failures are errors.
    """
    return start_command(argv, timeout=timeout, stdin=stdin, env=env)()


def start_command(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Callable[[], CommandResult]:
    """Start `argv` now, as `run_command` runs it (SchedulerError if it cannot start); the function
    returned waits for it and returns what it printed (SchedulerUnavailable if it times out), on
    whichever thread calls it: the caller's goes on while the command runs."""
    process = spawn(argv, reads_stdin=stdin is not None, env=env)
    return functools.partial(finish, process, argv, stdin, timeout=timeout)


def spawn(
    argv: Sequence[str], *, reads_stdin: bool = False, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    """`argv` started, its output piped (and its input, if it `reads_stdin`); SchedulerError if it
    cannot start."""
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if reads_stdin else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env} if env else None,
        )
    except FileNotFoundError:
        raise SchedulerError(
            f"{argv[0]!r} is not installed or not on PATH; this machine needs the SLURM client "
            'commands, or set "scheduler": "local" for it in the Milex configuration.'
        ) from None
    except OSError as error:  # e.g. E2BIG: the agent must survive what it cannot run
        raise SchedulerError(f"could not run {argv[0]}: {error}") from None


def finish(
    process: subprocess.Popen[str],
    argv: Sequence[str],
    stdin: str | None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> CommandResult:
    """What `process` (started as `argv`) printed, given `stdin` (if it reads it), waited for
    `timeout` seconds at most (SchedulerUnavailable past it: the process is killed)."""
    with process:  # as subprocess.run: the pipes closed and the process reaped, whatever happens
        try:
            stdout, stderr = process.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise SchedulerUnavailable(
                f"{' '.join(argv)} did not answer within {timeout:.0f} s; is slurmctld up (try `sinfo`)?"
            ) from None
        except BaseException:
            process.kill()
            raise
    return CommandResult(tuple(argv), process.returncode, stdout, stderr)
