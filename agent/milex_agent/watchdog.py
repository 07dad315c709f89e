"""The agent's watchdog: one line in the user's crontab on this node that runs `milex-agent start
--if-work` every minute, so that an agent killed with work left starts again with no laptop there.

The line ends with a mark naming the agent's directory: found again by it, replaced rather than
added twice, removed alone. The user's other lines are written back as they were. What the line
runs is the client's to say (the agent's start in the machine's environment: milex.machine.commands).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from milex_common.agent_layout import node_name
from milex_common.errors import MilexError

SCHEDULE = "* * * * *"  # every minute
MARK = "milex-agent watchdog"
CRONTAB_TIMEOUT = 30.0


class NoCrontab(MilexError):
    """This node has no `crontab` command: no watchdog can be installed here."""


def marker(directory: Path) -> str:
    """The comment that ends the watchdog line of the agent of `directory`."""
    return f"# {MARK} {directory}"


def entry(command: str, directory: Path) -> str:
    """The crontab line that runs `command` every minute as the watchdog of `directory`. cron reads a
    `%` of the command as a newline: each is escaped."""
    if "\n" in command or "\n" in str(directory):
        raise MilexError(f"a crontab line cannot hold a newline: {command!r} for {directory}")
    return _escaped(f"{SCHEDULE} {command} {marker(directory)}")


def with_entry(crontab: str, line: str, directory: Path) -> str:
    """`crontab` with `line` as the watchdog of `directory`, where its earlier line was (or last);
    every other line as it was."""
    lines, placed = [], False
    for old in _lines(crontab):
        if not _ours(old, directory):
            lines.append(old)
        elif not placed:
            lines.append(line)
            placed = True
    return _text(lines if placed else [*lines, line])


def without_entry(crontab: str, directory: Path) -> str:
    """`crontab` without the watchdog line of `directory`; every other line as it was."""
    return _text([line for line in _lines(crontab) if not _ours(line, directory)])


def entry_in(crontab: str, directory: Path) -> str | None:
    """The watchdog line of `directory` in `crontab`, if it has one."""
    return next((line for line in _lines(crontab) if _ours(line, directory)), None)


def install(command: str, directory: Path) -> str:
    """Put the watchdog of `directory`, running `command`, in the user's crontab; what was done."""
    crontab = read_crontab()
    wanted = with_entry(crontab, entry(command, directory), directory)
    if wanted == crontab:
        return f"the watchdog was installed already in your crontab on {node_name()}"
    write_crontab(wanted)
    return (
        f"watchdog installed in your crontab on {node_name()}: every minute, cron starts the agent of "
        f"{directory} again if it is not running and has work left"
    )


def remove(directory: Path) -> str:
    """Take the watchdog of `directory` out of the user's crontab; what was done."""
    crontab = read_crontab()
    if entry_in(crontab, directory) is None:
        return f"no watchdog was installed for {directory} in your crontab on {node_name()}"
    write_crontab(without_entry(crontab, directory))
    return f"watchdog removed from your crontab on {node_name()}"


def read_crontab() -> str:
    """The user's crontab ("" when they have none)."""
    done = _crontab("-l")
    if done.returncode == 0:
        return done.stdout
    if "no crontab for" in done.stderr:
        return ""
    raise _refused("crontab -l", done)


def write_crontab(text: str) -> None:
    """Replace the user's crontab with `text` (`crontab -` checks it first: nothing half-written).

    cron (vixie's, Debian's) notices a new crontab by the mtime of its spool, in whole seconds, when
    it wakes each minute: one written in the very second cron read the spool, after another write of
    that second, goes unnoticed until the next change (seen on the test clusters: the old crontab
    ran on). So it is written again in a later second, which cron always notices.
    """
    for again in (False, True):
        if again:
            time.sleep(1.01 - time.time() % 1)
        done = _crontab("-", stdin=text)
        if done.returncode != 0:
            raise _refused("crontab -", done)


def _crontab(*arguments: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    program = shutil.which("crontab")
    if program is None:
        raise NoCrontab(
            f"{node_name()} has no `crontab` command, so no watchdog: a killed agent starts again only "
            "with the next command from the laptop (or run it as a systemd user service: "
            "deploy/README.md)"
        )
    return subprocess.run(
        [program, *arguments],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CRONTAB_TIMEOUT,
        check=False,
    )


def _refused(command: str, done: subprocess.CompletedProcess[str]) -> MilexError:
    said = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
    return MilexError(
        f"`{command}` failed on {node_name()}: {said}. Without cron for you there, a killed agent starts "
        "again only with the next command from the laptop (or run it as a systemd user service: "
        "deploy/README.md)"
    )


def _ours(line: str, directory: Path) -> bool:
    return line.rstrip().endswith(_escaped(marker(directory)))


def _escaped(text: str) -> str:
    return text.replace("%", "\\%")


def _lines(crontab: str) -> list[str]:
    """The lines of `crontab` exactly as written (a `\\r` kept where one is)."""
    return crontab.removesuffix("\n").split("\n") if crontab else []


def _text(lines: list[str]) -> str:
    return "".join(f"{line}\n" for line in lines)
