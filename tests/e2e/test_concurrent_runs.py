"""Runs of one bundle started together on the real cluster: each is recorded, with its own id and jobs."""

from __future__ import annotations

import re
import subprocess

from tests.e2e.conftest import BIN, MilexHome

RUNS = 5


def test_runs_started_together_are_all_recorded_each_with_its_own_id(milex_home: MilexHome) -> None:
    milex_home.milex("milex-schedule", "milex-example", "--name", "together", "--job_name", "first")
    milex_home.milex("milex-schedule", "milex-example", "--name", "together", "--job_name", "second",
                     "--append", "--dependencies", "first")  # fmt: skip

    command = [str(BIN / "milex-run"), "together"]
    options: dict = {"env": milex_home.env, "cwd": milex_home.root, "text": True}
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **options)
            for _ in range(RUNS)]  # fmt: skip
    outputs = [run.communicate(timeout=180) for run in runs]
    assert [run.returncode for run in runs] == [0] * RUNS, outputs

    submissions = milex_home.submissions()
    assert len(submissions) == RUNS
    run_ids = {submission["run_id"] for submission in submissions}
    assert len(run_ids) == RUNS
    job_ids = [job["job_id"] for submission in submissions for job in submission["jobs"].values()]
    assert len(set(job_ids)) == 2 * RUNS
    printed = {match for stdout, _ in outputs for match in re.findall(r"\(run (\S+)\)", stdout)}
    assert printed == run_ids  # each run names its id
    listed = milex_home.milex("milex", "ls", "together").stdout
    assert all(f"run {run_id}" in listed for run_id in run_ids), listed
