"""click's `echo` and `style` for what `milex-run` prints, without importing click (~10 ms of every run).

The same bytes as click's: a styled text is `ESC[<code>m` + text + `ESC[0m`, and codes are stripped
where the stream is not a terminal; the line is flushed at once. A stream whose encoding is ASCII
(click re-opens it as UTF-8) goes through click itself, so nothing differs there either.
"""

from __future__ import annotations

import codecs
import re
import sys
from typing import IO, Any

# click.termui._ansi_colors: the colours Milex prints in.
_COLORS = {
    "black": 30,
    "red": 31,
    "green": 32,
    "yellow": 33,
    "blue": 34,
    "magenta": 35,
    "cyan": 36,
    "white": 37,
}
_RESET = "\033[0m"
_ANSI = re.compile(r"\033\[[0-?]*[ -/]*[@-~]")  # click._compat._ansi_re


def style(text: str, fg: str) -> str:
    """`text` in the colour `fg` (one of click's eight names), as click.style(text, fg=fg) writes it."""
    return f"\033[{_COLORS[fg]}m{text}{_RESET}"


def echo(message: str = "", *, err: bool = False) -> None:
    """`message` and a newline on stdout (stderr with `err`), as click.echo writes them."""
    stream: IO[Any] | None = sys.stderr if err else sys.stdout
    if stream is None:  # no standard stream to write to (pythonw)
        return
    if _ascii(stream):
        import click  # lazy: click re-opens such a stream as UTF-8, and is the judge of how

        click.echo(message, err=err)
        return
    stream.write(message + "\n" if _isatty(stream) else _ANSI.sub("", message) + "\n")
    stream.flush()


def _isatty(stream: IO[Any]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, OSError, ValueError):  # as click's isatty: a stream that cannot tell is none
        return False


def _ascii(stream: IO[Any]) -> bool:
    """click's test of a misconfigured stream: its encoding is ASCII (or it has none)."""
    try:
        return codecs.lookup(getattr(stream, "encoding", None) or "ascii").name == "ascii"
    except LookupError:
        return False
