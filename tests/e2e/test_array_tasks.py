"""An array task by task, on each namespaced cluster and on the local machine: a 20-task array of
the example app whose tasks 3 and 17 fail, shown by counts, listed by task (`--tasks`, `--json`),
followed live by a watch, kept in the laptop's record; on a cluster also cut in windows (the
machine's `max_submitted`), whose tasks clients see by the indices the user asked for."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.e2e.clusters import LoginNode
from tests.e2e.conftest import REMOTE, MilexHome

pytestmark = pytest.mark.timeout(600)
FAILING = (3, 17)
COUNTS = "18/20 done, 2 failed"


def schedule(user: MilexHome, name: str) -> None:
    """A bundle of one array of 20 tasks of 2 s, four at a time (a watch started after it sees it run),
    of which FAILING exit 2."""
    user.milex("milex-schedule", "milex-example", "--name", name, "--job_name", "fan", "--array", "0-19%4",
               "--fail_tasks", ",".join(map(str, FAILING)), "--sleep", "2")  # fmt: skip


def expected() -> list[tuple[str, str, str]]:
    """Each task's index, state and exit code as `--tasks` lists them."""
    return [(str(i), "FAILED", "2") if i in FAILING else (str(i), "COMPLETED", "0") for i in range(20)]


def check_tasks(user: MilexHome, bundle: str, machine: str) -> None:
    """The ended array as `milex status` shows it, lists it and gives it, and as the record keeps it."""
    shown = user.milex("milex", "status", bundle, "--machine", machine).stdout
    [line] = [line for line in shown.splitlines() if "│ fan " in line]
    assert "FAILED" in line and COUNTS in line, shown
    [job] = json.loads(user.milex("milex", "status", bundle, "--machine", machine, "--json").stdout)
    assert (job["state"], job["exit_code"]) == ("FAILED", 2)
    tasks = [(t["index"], t["state"], t["exit_code"]) for t in job["tasks"]]
    assert tasks == [(int(i), state, int(code)) for i, state, code in expected()]
    listed = user.milex("milex", "status", bundle, "--machine", machine, "--tasks").stdout
    table = listed.partition(f"tasks of {bundle} on {machine}")[2]
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in table.splitlines()]
    task_rows = [(row[2], row[3], row[4]) for row in rows if len(row) == 6 and row[1] == job["job_id"]]
    assert task_rows == expected(), listed
    [run] = [s for s in user.submissions() if s["bundle"].startswith(bundle)]
    recorded = run["jobs"]["fan"]["tasks"]  # compact: [index, state, exit code, reason]
    assert [index for index, state, *_ in recorded if state != "COMPLETED"] == list(FAILING)


def watch_to_the_end(user: MilexHome, bundle: str, machine: str) -> str:
    """What `milex status --watch` printed (no terminal: a line per change) until the array ended."""
    with user.background("milex", "status", bundle, "--machine", machine, "--watch") as watch:
        try:
            out, err = watch.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            watch.kill()
            out, err = watch.communicate()
        assert watch.returncode == 0, out + err
    return out


def check_live_counts(watched: str) -> None:
    """The watch's lines of the array: counts that changed task by task, ending with the final ones."""
    # `BUNDLE fan ID STATE: COUNTS`, not the run's summary line at the end (`bundle B done: ...`).
    counted = [line.partition(": ")[2] for line in watched.splitlines() if line.split(" ")[1:2] == ["fan"]]
    assert len(set(counted)) >= 3, watched  # not one jump from start to end: tasks as they came
    assert any("running" in said for said in counted), watched
    assert counted[-1] == COUNTS, watched


def test_an_array_on_a_cluster_task_by_task(laptop: MilexHome, login_node: LoginNode) -> None:
    schedule(laptop, "tasks")
    laptop.milex("milex-run", "tasks", "--machine", REMOTE)
    check_live_counts(watch_to_the_end(laptop, "tasks", REMOTE))
    check_tasks(laptop, "tasks", REMOTE)


def test_an_array_cut_in_windows_shows_the_tasks_by_the_users_indices(
    laptop: MilexHome, login_node: LoginNode
) -> None:
    config = json.loads(laptop.config.read_text())
    config[REMOTE]["max_submitted"] = 8  # windows [0-7], [8-15], [16-19]: task 17 is the third's 1
    laptop.config.write_text(json.dumps(config))
    schedule(laptop, "windowed")
    waited = laptop.milex(
        "milex-run", "windowed", "--machine", REMOTE, "--wait", "--timeout", "300", check=False
    )
    assert waited.returncode == 1, waited.stdout + waited.stderr  # not every task completed
    [final] = [line for line in waited.stdout.splitlines() if line.startswith("fan ") and "FAILED" in line]
    assert COUNTS in final, waited.stdout  # milex.wait() gave the tasks
    check_tasks(laptop, "windowed", REMOTE)
    [run] = [s for s in laptop.submissions() if s["bundle"].startswith("windowed_")]
    # Its own bundle's: accounting keeps the arrays of earlier runs of this test for hours.
    comments = {c for c in login_node.comments() if c.startswith(f"milex:{run['bundle']}/")}
    assert len(comments) == 3, comments  # three SLURM arrays (a comment each), one job to the user


def test_an_array_on_the_local_machine_task_by_task(milex_home: MilexHome) -> None:
    milex_home.milex("milex", "config", "set", "laptop", "path", str(milex_home.root / "laptop"))
    milex_home.milex("milex", "config", "set", "laptop", "scheduler", "local")
    schedule(milex_home, "here")
    milex_home.milex("milex-run", "here", "--machine", "laptop")
    check_live_counts(watch_to_the_end(milex_home, "here", "laptop"))
    check_tasks(milex_home, "here", "laptop")
