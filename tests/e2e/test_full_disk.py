"""The laptop's `jobs/`, or the agent's directory, on a full filesystem (a small tmpfs), with the real
cluster behind the agent: clear errors, nothing half-written, nothing recorded lost, and every run
recorded once space is back, without a restart of the agent."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from milex_common.agent_layout import agent_dir
from tests.e2e.conftest import BIN, MilexHome, wait_until
from tests.filling import fill


@pytest.fixture
def small_jobs_dir(milex_home: MilexHome) -> Iterator[Path]:
    """The user's `jobs/` on a 256 KiB tmpfs of its own, unmounted afterwards."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(milex_home.jobs)], check=True)
    try:
        yield milex_home.jobs
    finally:
        subprocess.run(["umount", str(milex_home.jobs)], check=True)


@pytest.fixture
def small_agent_dir(milex_home: MilexHome) -> Iterator[Path]:
    """The `local` machine's agent directory (`PATH/agent/CLUSTER`) on a 1 MiB tmpfs of its own (mounted
    on `PATH/agent`); its agent stopped and the tmpfs unmounted afterwards."""
    mount = milex_home.root / "milex" / "agent"
    mount.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    directory = agent_dir(milex_home.root / "milex")
    try:
        yield directory
    finally:
        subprocess.run([str(BIN / "milex-agent"), "stop", "--dir", str(directory)], check=False)
        subprocess.run(["umount", str(mount)], check=True)


def contents(directory: Path) -> dict[str, bytes]:
    """Every file of `directory` but the filler, by name, with its bytes."""
    return {path.name: path.read_bytes() for path in directory.iterdir() if path.name != "filler"}


def assert_fails_saying_the_disk_is_full(result: subprocess.CompletedProcess[str], path: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert re.search(rf"error: cannot write {re.escape(path)}\S*: the disk is full", result.stderr), (
        result.stderr
    )


def test_a_full_jobs_directory_fails_clearly_keeps_every_record_and_recovers(
    milex_home: MilexHome, small_jobs_dir: Path
) -> None:
    milex_home.milex("milex-schedule", "milex-example", "--name", "kept", "--job_name", "first")
    milex_home.milex("milex-schedule", "milex-example", "--name", "kept", "--job_name", "second",
                     "--append", "--dependencies", "first")  # fmt: skip
    milex_home.milex("milex-run", "kept")
    [recorded] = milex_home.submissions()
    filler = fill(small_jobs_dir)
    before = contents(small_jobs_dir)

    schedule = milex_home.milex("milex-schedule", "milex-example", "--name", "new", check=False)
    assert_fails_saying_the_disk_is_full(schedule, f"{small_jobs_dir}/new_")
    run = milex_home.milex("milex-run", "kept", check=False)
    assert_fails_saying_the_disk_is_full(run, f"{small_jobs_dir}/kept_")
    unrecorded = dict(re.findall(r"(first|second)=(\d+)", run.stderr))
    assert set(unrecorded) == {"first", "second"}, run.stderr  # submitted all the same: the ids are shown
    [run_id] = re.findall(r"run (\S+) were submitted", run.stderr)
    status = milex_home.milex("milex", "status", check=False)
    assert_fails_saying_the_disk_is_full(status, f"{small_jobs_dir}/kept_")
    assert contents(small_jobs_dir) == before  # nothing half-written, nothing recorded changed

    filler.unlink()
    milex_home.milex("milex", "status")  # records the run the full disk kept out
    [old, restored] = milex_home.submissions()
    assert old["run_id"] == recorded["run_id"]
    assert {name: job["job_id"] for name, job in old["jobs"].items()} == {
        name: job["job_id"] for name, job in recorded["jobs"].items()
    }
    assert restored["run_id"] == run_id
    assert {name: job["job_id"] for name, job in restored["jobs"].items()} == unrecorded
    milex_home.milex("milex-schedule", "milex-example", "--name", "new")
    milex_home.milex("milex-run", "kept")
    assert len(milex_home.submissions()) == 3
    for path in small_jobs_dir.glob("*.json"):
        json.loads(path.read_text())  # whole JSON, every one
    assert not [path.name for path in small_jobs_dir.iterdir() if path.name.startswith(".kept")]


def agent_pid(directory: Path) -> int:
    return int(json.loads((directory / "agent.json").read_text())["pid"])


def test_a_full_agent_directory_refuses_clearly_and_the_agent_recovers_without_a_restart(
    milex_home: MilexHome, small_agent_dir: Path
) -> None:
    milex_home.milex("milex-schedule", "milex-example", "--name", "kept", "--job_name", "first")
    milex_home.milex("milex-run", "kept")  # starts the agent, in the small directory
    pid = agent_pid(small_agent_dir)
    filler = fill(small_agent_dir.parent)

    refused = milex_home.milex("milex-run", "kept", check=False)
    assert refused.returncode == 1, refused
    assert "Traceback" not in refused.stderr
    assert f"could not write its journal {small_agent_dir}/journal.sqlite" in refused.stderr, refused.stderr
    assert "the disk is full" in refused.stderr and "free on its filesystem" in refused.stderr
    assert "locks" not in refused.stderr
    assert len(milex_home.submissions()) == 1  # the refused run was recorded nowhere

    filler.unlink()
    log = small_agent_dir / "agent.log"
    wait_until(lambda: "space is back on the filesystem of" in log.read_text(), timeout=30,
               what="the agent's log to say space is back")  # fmt: skip
    milex_home.milex("milex-run", "kept")  # accepted by the same agent: no restart
    assert agent_pid(small_agent_dir) == pid
    assert len(milex_home.submissions()) == 2
    status = milex_home.milex("milex", "status")
    assert "Traceback" not in status.stderr and "disk is full" not in status.stderr + status.stdout
    assert "Traceback" not in log.read_text()
