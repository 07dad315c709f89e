"""`milex-run`: its common form `milex-run BUNDLE [--machine M]` read and run without click.

A warm `milex-run` is a new process whose own work is a few milliseconds: importing click to read two
words would cost it more than the request. Any other form (another option, `--help`, an error in
the words) goes to the click command, milex.cli.run_command, which does the same for this form:
one behaviour, and one set of messages, whichever reads the command line.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Sequence

from milex.cli import reports_errors
from milex.cli.submitting import run_bundle


def common_form(argv: Sequence[str]) -> tuple[str, str | None] | None:
    """(BUNDLE, machine) when `argv` is `BUNDLE`, `BUNDLE --machine M` or `--machine M BUNDLE` (also
    `--machine=M`); None for anything else, which the click command reads."""
    words = list(argv)
    machine = None
    for at, word in enumerate(words):
        if word == "--machine" and at + 1 < len(words):
            machine, rest = words[at + 1], words[:at] + words[at + 2 :]
            break
        if word.startswith("--machine="):
            machine, rest = word.partition("=")[2], words[:at] + words[at + 1 :]
            break
    else:
        rest = words
    if len(rest) != 1 or rest[0].startswith("-") or (machine is not None and machine.startswith("-")):
        return None
    return rest[0], machine


def main() -> None:
    """The `milex-run` script: the common form here, any other through click."""
    words = common_form(sys.argv[1:])
    if words is None:
        from milex.cli.run_command import run

        run.main(prog_name="milex-run")  # exits
    bundle, machine = words
    # A process of ~0.1 s whose objects (~200 modules' worth) live until it exits: no collection
    # while it imports (~40 young ones, ~5 ms), and none of them traversed again by the interpreter's
    # collections at exit (~9 ms); what it drops is still freed by reference counting.
    gc.disable()
    try:
        reports_errors(run_bundle)(bundle, machine=machine)
    except BrokenPipeError:  # as click's main: the reader went (`| head`): status 1, and no traceback
        _quiet_standard_streams()
        sys.exit(1)
    finally:
        gc.freeze()
        gc.enable()


def _quiet_standard_streams() -> None:
    """stdout and stderr to /dev/null, so that the interpreter's last flush of a broken pipe is silent."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            os.dup2(devnull, stream.fileno())
    os.close(devnull)
