"""`milex rerun` on each namespaced cluster: `--failed` submits again only what did not complete and
what depends on it, as a new run of the same record; a rerun killed after the agent accepted its
jobs is resumed by the next one, each job in SLURM once."""

from __future__ import annotations

import pytest

from tests.e2e.clusters import LoginNode
from tests.e2e.conftest import REMOTE, MilexHome, wait_until

pytestmark = pytest.mark.timeout(600)


def schedule_pipeline(laptop: MilexHome, bundle: str) -> None:
    """ok; fails (exit 3); after, waiting for fails (never runs); tail, waiting for ok."""
    laptop.milex("milex-schedule", "milex-example", "--name", bundle, "--job_name", "ok")
    laptop.milex("milex-schedule", "milex-example", "--name", bundle, "--append", "--job_name", "fails",
                 "--exit_code", "3")  # fmt: skip
    laptop.milex("milex-schedule", "milex-example", "--name", bundle, "--append", "--job_name", "after",
                 "--dependencies", "fails")  # fmt: skip
    laptop.milex("milex-schedule", "milex-example", "--name", bundle, "--append", "--job_name", "tail",
                 "--dependencies", "ok")  # fmt: skip


def runs(laptop: MilexHome, bundle: str) -> list[dict]:
    return [run for run in laptop.submissions() if run["bundle"].startswith(f"{bundle}_")]


def keys_in_slurm(node: LoginNode, stem: str) -> list[str]:
    """The keys (`STEM/JOB/RUN`) of the jobs of the bundle `stem` that SLURM has, one per job (per
    array task); of this bundle alone: accounting keeps earlier runs of these tests for hours."""
    return sorted(comment.removeprefix("milex:") for comment in node.comments()
                  if comment.startswith(f"milex:{stem}/"))  # fmt: skip


def test_rerun_failed_submits_the_failed_job_and_its_dependent_again_and_nothing_that_completed(
    laptop: MilexHome, login_node: LoginNode
) -> None:
    schedule_pipeline(laptop, "again")
    first = laptop.milex("milex-run", "again", "--machine", REMOTE, "--wait", check=False)
    assert first.returncode == 1, first.stdout + first.stderr
    [run] = runs(laptop, "again")
    assert {name: job["state"] for name, job in run["jobs"].items()} == {
        "ok": "COMPLETED", "fails": "FAILED", "after": "CANCELLED", "tail": "COMPLETED"
    }  # fmt: skip

    rerun = laptop.milex("milex", "rerun", "again", "--failed", "--wait", check=False)

    assert rerun.returncode == 1, rerun.stdout + rerun.stderr  # fails fails again: the same record
    assert f"rerun of {run['run_id']}" in rerun.stdout, rerun.stdout
    [_, second] = runs(laptop, "again")
    assert second["rerun_of"] == run["run_id"] and second["machine"] == REMOTE
    assert sorted(second["jobs"]) == ["after", "fails"]
    assert second["jobs"]["fails"]["state"] == "FAILED" and second["jobs"]["fails"]["exit_code"] == 3
    assert second["jobs"]["after"]["state"] == "CANCELLED"
    stem = run["bundle"]
    in_slurm = keys_in_slurm(login_node, stem)
    for name in ("ok", "tail"):  # completed: not submitted again
        assert [key for key in in_slurm if key.split("/")[1] == name] == [f"{stem}/{name}/{run['run_id']}"]
    assert f"{stem}/fails/{second['run_id']}" in in_slurm


def test_a_rerun_killed_after_the_agent_accepted_its_jobs_is_resumed_and_each_job_is_submitted_once(
    laptop: MilexHome, login_node: LoginNode
) -> None:
    laptop.milex("milex-schedule", "milex-example", "--name", "resume", "--job_name", "fails",
                 "--exit_code", "3")  # fmt: skip
    laptop.milex("milex-schedule", "milex-example", "--name", "resume", "--append", "--job_name", "next",
                 "--dependencies", "fails")  # fmt: skip
    laptop.milex("milex-run", "resume", "--machine", REMOTE, "--wait", check=False)
    [run] = runs(laptop, "resume")
    first = run["run_id"]
    login_node.sh("echo 6 > ~/sbatch-delay")  # each sbatch lingers after SLURM accepted its job

    with laptop.background("milex", "rerun", "resume", "--failed") as interrupted:
        wait_until(lambda: any(not key.endswith(first) for key in keys_in_slurm(login_node, run["bundle"])),
                   timeout=60, what="SLURM to accept the rerun's first job")  # fmt: skip
        interrupted.kill()
        interrupted.communicate()
    login_node.sh("echo 0 > ~/sbatch-delay")
    [_, pending] = runs(laptop, "resume")
    assert pending["pending"] is True, pending

    resumed = laptop.milex("milex", "rerun", "resume", "--failed", "--wait", check=False)

    assert "resuming it" in resumed.stderr, resumed.stderr
    [_, second] = runs(laptop, "resume")
    assert second["run_id"] == pending["run_id"] and "pending" not in second
    assert sorted(second["jobs"]) == ["fails", "next"]
    assert second["jobs"]["fails"]["job_id"], second
    in_slurm = keys_in_slurm(login_node, run["bundle"])
    assert in_slurm.count(f"{run['bundle']}/fails/{second['run_id']}") == 1, in_slurm
    # `next` waits for a job that fails: submitted once, or (fails ended first) refused by SLURM and
    # settled as never run by the agent; never twice.
    assert in_slurm.count(f"{run['bundle']}/next/{second['run_id']}") <= 1, in_slurm
    assert second["jobs"]["next"]["state"] == "CANCELLED"


def test_rerun_failed_of_an_array_submits_only_its_failed_tasks_and_lists_them(
    laptop: MilexHome, login_node: LoginNode
) -> None:
    from tests.e2e.test_array_tasks import FAILING
    from tests.e2e.test_array_tasks import schedule as schedule_array

    schedule_array(laptop, "fanout")  # 20 tasks, FAILING exit 2
    laptop.milex("milex-run", "fanout", "--machine", REMOTE, "--wait", check=False)

    rerun = laptop.milex("milex", "rerun", "fanout", "--failed", "--wait", check=False)

    assert rerun.returncode == 1, rerun.stdout + rerun.stderr  # the same tasks fail again
    [first, second] = runs(laptop, "fanout")
    assert second["rerun_of"] == first["run_id"]
    recorded = second["jobs"]["fan"]["tasks"]  # [index, state, exit code, reason]
    assert [(index, state) for index, state, *_ in recorded] == [(index, "FAILED") for index in FAILING]
    key = f"{first['bundle']}/fan/{second['run_id']}"
    assert keys_in_slurm(login_node, first["bundle"]).count(key) == len(FAILING)  # one per task: those alone
    listed = laptop.milex("milex", "status", first["bundle"], "--machine", REMOTE, "--tasks").stdout
    assert "0/2 done, 2 failed" in listed, listed
