"""The one gateway through which scheduler commands run: argv list, no shell, timeout, stderr kept."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from milex.common.errors import SchedulerError

DEFAULT_TIMEOUT = 60.0


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


def run_command(
    argv: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT, stdin: str | None = None
) -> CommandResult:
    """Run `argv` (given `stdin`) and return what it printed; SchedulerError if it cannot start or
    times out.

    A non-zero exit is returned, not raised: callers decide which failures are errors.
    """
    try:
        completed = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise SchedulerError(
            f"{argv[0]!r} is not installed or not on PATH; this machine needs the SLURM client "
            'commands, or set "scheduler": "local" for it in the Milex configuration.'
        ) from None
    except OSError as error:  # e.g. E2BIG: the agent must survive what it cannot run
        raise SchedulerError(f"could not run {argv[0]}: {error}") from None
    except subprocess.TimeoutExpired:
        raise SchedulerError(
            f"{' '.join(argv)} did not answer within {timeout:.0f} s; is slurmctld up (try `sinfo`)?"
        ) from None
    return CommandResult(tuple(argv), completed.returncode, completed.stdout, completed.stderr)
