"""The one hierarchy of errors Milex raises on purpose; each message says what to do next."""

from __future__ import annotations


class MilexError(Exception):
    """Base of every error Milex means to show to a user (exit code 1, no traceback)."""

    exit_code = 1


class ConfigError(MilexError):
    """The machine configuration file is missing, malformed or names an unknown machine."""


class InvalidValue(MilexError):
    """A value given by the user (a SLURM option, a job name...) is not acceptable."""


class CaptureError(MilexError):
    """Running `NAME-cli` to capture the app's arguments failed."""


class BundleError(MilexError):
    """A job bundle record is missing, unreadable, or inconsistent (unknown dependency, cycle)."""


class UnknownJob(MilexError):
    """A job id or bundle name that the machine's agent does not track."""


class SubmitError(MilexError):
    """The scheduler refused a job; carries the scheduler's own message."""


class DependencyRefused(SubmitError):
    """The scheduler refused a job for its dependencies ("Job dependency problem"): a job it waits for
    is unknown to it, as after a controller restarted from older state lost it."""


class LimitReached(SubmitError):
    """The scheduler refused a job only because the user has as many jobs as one of its limits allows:
    the same job goes in once some end. The message says which limit, in words for the user."""


class WaitTimedOut(MilexError, TimeoutError):
    """A wait for jobs gave up at its timeout with some still unfinished, which go on without it.
    Its own exit code, so a script can tell it from a failed job or a refusal."""

    exit_code = 4


class LocksUnreliable(MilexError):
    """File locks in a directory do not exclude a second process: the filesystem refuses them, or
    grants one lock to two processes (Lustre without `-o flock`, some NFS mounts)."""


class DiskFull(MilexError):
    """A filesystem Milex must write on has no room left; the message names the path and what is free."""


class SchedulerError(MilexError):
    """A scheduler command (sbatch, squeue, ...) could not be run or failed."""


def unknown_key(where: str, key: str, known: tuple[str, ...]) -> str:
    """The message for an unknown `key` in what the user wrote at `where`: the closest known key, or all."""
    import difflib

    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{where}: unknown key {key!r}{hint}; known keys: {', '.join(known)}."


class SchedulerUnavailable(SchedulerError):
    """The scheduler did not answer (a timeout, its controller unreachable): the call's outcome is unknown.

    A submission that ends this way may have been accepted; only a lookup can tell.
    """
