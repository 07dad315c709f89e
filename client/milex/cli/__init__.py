"""Thin click commands over the client library; each imports what it needs only when it runs."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from milex.cli.terminal import echo

F = TypeVar("F", bound=Callable[..., Any])

# `-h` as well as `--help`, on `milex` and every command (milex-schedule's own parser has its own).
HELP_OPTIONS = ["-h", "--help"]


def reports_errors(command: F) -> F:
    """Show a MilexError as `error: ...` on stderr with exit status 1, never a traceback. No click here:
    `milex-run`'s common form runs without it (milex.cli.run)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from milex_common.errors import MilexError

        try:
            return command(*args, **kwargs)
        except MilexError as error:
            echo(f"error: {error}", err=True)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            echo("interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
