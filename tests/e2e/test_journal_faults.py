"""The agent's journal under fault, on the real cluster: its filesystem full, its file damaged."""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

from milex_common.agent_layout import agent_dir
from tests.e2e.conftest import BIN, MilexHome


def submitted(home: MilexHome, bundle: str) -> int:
    """How many jobs SLURM has of the newest record of `bundle` (by the keys in their comments)."""
    [record] = sorted(home.jobs.glob(f"{bundle}_*[0-9].json"))[-1:]
    argv = ["squeue", "--noheader", "--states=all", "--me", "--Format=Comment:0"]
    comments = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
    return sum(comment.startswith(f"milex:{record.stem}/") for comment in comments)


def schedule_three(home: MilexHome, bundle: str) -> None:
    home.milex("milex-schedule", "milex-example", "--name", bundle, "--job_name", "a", "--count", "1")
    for job in ("b", "c"):
        home.milex("milex-schedule", "milex-example", "--name", bundle, "--append", "--job_name", job,
                   "--dependencies", "a", "--count", "2")  # fmt: skip


@contextlib.contextmanager
def small_filesystem(path: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` for the block; every agent with files there stopped first."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        for lock in path.glob("*/agent.lock"):
            subprocess.run([str(BIN / "milex-agent"), "stop", "--dir", str(lock.parent)], check=False)
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def fill(directory: Path) -> Path:
    """A file that takes every free block of `directory`'s filesystem. Unbuffered: a buffered file
    keeps what the full disk refused, and raises again when it is closed (or not, as the free space
    falls against its blocks)."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 65536)  # the last one in part: the next is refused
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
    return filler


def test_a_full_journal_filesystem_is_a_clear_error_and_nothing_is_submitted_or_lost(milex_home):
    with small_filesystem(milex_home.root / "milex" / "agent") as agents:
        schedule_three(milex_home, "before")
        milex_home.milex("milex-run", "before")  # the agent starts and journals three jobs
        schedule_three(milex_home, "full")
        filler = fill(agents)

        failed = milex_home.milex("milex-run", "full", check=False)
        assert failed.returncode == 1, failed
        assert "could not write its journal" in failed.stderr and "free space" in failed.stderr
        assert "Traceback" not in failed.stderr
        assert submitted(milex_home, "full") == 0

        filler.unlink()  # space is back: what was journaled before is all there, and work goes on
        status = milex_home.milex("milex", "status", "before", "--json")
        assert status.stdout.count('"job_id"') == 3
        milex_home.milex("milex-run", "full", "--wait", "--timeout", "120")
        assert submitted(milex_home, "full") == 3


def test_a_damaged_journal_is_refused_with_a_message_and_kept_aside(milex_home):
    schedule_three(milex_home, "kept")
    milex_home.milex("milex-run", "kept")
    directory = agent_dir(milex_home.root / "milex")
    subprocess.run([str(BIN / "milex-agent"), "stop", "--dir", str(directory)], check=True)
    journal = directory / "journal.sqlite"
    damaged = b"this is no longer a journal" + journal.read_bytes()[27:]
    journal.write_bytes(damaged)
    (directory / "journal.sqlite-wal").unlink(missing_ok=True)

    refused = milex_home.milex("milex", "status", check=False)
    assert refused.returncode == 1
    [kept] = directory.glob("journal.damaged-*.sqlite")
    assert kept.read_bytes() == damaged
    assert "is damaged" in refused.stderr and str(kept) in refused.stderr

    # The next command starts an agent on a new journal; the damaged one stays where it was put.
    schedule_three(milex_home, "after")
    milex_home.milex("milex-run", "after", "--wait", "--timeout", "120")
    assert kept.read_bytes() == damaged
