"""What accounting brings on each namespaced cluster: SLURM refuses a job with an account the user
lacks (and Milex submits nothing after it), and a job the controller forgot is reported from sacct
with the state and exit code squeue gave its twin."""

from __future__ import annotations

import re

import pytest

from tests.e2e.clusters import LoginNode
from tests.e2e.conftest import REMOTE, MilexHome, wait_until
from tests.e2e.test_remote import status

pytestmark = pytest.mark.timeout(600)
UNFINISHED = {"SUBMITTED", "PENDING", "RUNNING"}


def bundle_in_slurm(node: LoginNode, stem: str) -> list[str]:
    """The names of the jobs of bundle `stem` SLURM has, one per job (repeats included)."""
    return [comment.split("/")[1] for comment in node.comments() if comment.startswith(f"milex:{stem}/")]


def test_an_account_the_user_lacks_is_refused_by_slurm_and_nothing_after_it_is_submitted(
    laptop: MilexHome, login_node: LoginNode
) -> None:
    laptop.milex("milex-schedule", "milex-example", "--name", "acct", "--job_name", "first")
    laptop.milex("milex-schedule", "milex-example", "--name", "acct", "--append", "--job_name", "wrong",
                 "--sbatch", "account=biology")  # fmt: skip
    laptop.milex("milex-schedule", "milex-example", "--name", "acct", "--append", "--job_name", "after")

    refused = laptop.milex("milex-run", "acct", "--machine", REMOTE, check=False)

    assert refused.returncode != 0, refused.stdout
    assert "Invalid account or account/partition combination specified" in refused.stderr, refused.stderr
    assert "wrong" in refused.stderr, refused.stderr
    [submission] = laptop.submissions()
    assert sorted(submission["jobs"]) == ["first"]
    assert bundle_in_slurm(login_node, submission["bundle"]) == ["first"]


def min_job_age(node: LoginNode) -> int:
    config = node.exec("scontrol", "show", "config").stdout
    found = re.search(r"^MinJobAge\s*=\s*(\d+)", config, re.MULTILINE)
    assert found, config
    return int(found.group(1))


def schedule_twin(laptop: MilexHome, bundle: str, *options: str) -> None:
    """A job that succeeds, one that fails with 3, an array, and one that runs until cancelled."""
    laptop.milex("milex-schedule", "milex-example", "--name", bundle, "--job_name", "ok", *options)
    laptop.milex("milex-schedule", "milex-example", "--name", bundle, "--append", "--job_name", "fails",
                 "--exit_code", "3", *options)  # fmt: skip
    laptop.milex("milex-schedule", "milex-example", "--name", bundle, "--append", "--job_name", "fan",
                 "--array", "1-2", *options)  # fmt: skip
    laptop.milex("milex-schedule", "milex-example", "--name", bundle, "--append", "--job_name", "long",
                 "--sleep", "600", *options)  # fmt: skip


def outcomes(jobs: dict[str, dict]) -> dict[str, tuple[str, int | None]]:
    return {name: (job["state"], job.get("exit_code")) for name, job in jobs.items()}


def test_a_job_the_controller_forgot_is_reported_from_accounting_as_squeue_reported_its_twin(
    laptop: MilexHome, login_node: LoginNode
) -> None:
    node = login_node
    # "seen" ends under the agent's eyes: its final states come from squeue.
    schedule_twin(laptop, "seen")
    laptop.milex("milex-run", "seen", "--machine", REMOTE)
    wait_until(
        lambda: status(laptop, "seen")["long"]["state"] == "RUNNING", timeout=60, what="seen's long job"
    )
    laptop.milex("milex", "cancel", "seen", "--machine", REMOTE)
    wait_until(
        lambda: not UNFINISHED & {job["state"] for job in status(laptop, "seen").values()},
        timeout=90,
        what="seen's end",
    )
    seen = outcomes(status(laptop, "seen"))
    assert seen == {
        "ok": ("COMPLETED", 0),
        "fails": ("FAILED", 3),
        "fan": ("COMPLETED", 0),
        "long": ("CANCELLED", None),
    }

    # "unseen" is held until no agent runs, then ends and is forgotten by slurmctld before the next
    # agent asks: that one finds its jobs in sacct only.
    schedule_twin(laptop, "unseen", "--sbatch", "hold")
    laptop.milex("milex-run", "unseen", "--machine", REMOTE)
    laptop.milex("milex", "agent", "stop", "--machine", REMOTE)
    [submission] = [s for s in laptop.submissions() if s["bundle"].startswith("unseen")]
    ids = {name: job["job_id"] for name, job in submission["jobs"].items()}
    node.sh(f"scontrol release {','.join(ids.values())}")
    wait_until(lambda: node.slurm_state(ids["long"]) == "RUNNING", timeout=60, what="unseen's long job")
    node.sh(f"scancel {ids['long']}")
    wait_until(lambda: all(node.slurm_state(job_id) == "GONE" for job_id in ids.values()),
               timeout=min_job_age(node) + 180, what="slurmctld to forget the jobs")  # fmt: skip
    # The next command starts an agent: its first answer is its journal's (held, PENDING), the next
    # ones what its polls found in sacct.
    wait_until(lambda: not UNFINISHED & {job["state"] for job in status(laptop, "unseen").values()},
               timeout=30, what="the agent to find the jobs' ends")  # fmt: skip
    assert outcomes(status(laptop, "unseen")) == seen
    sacct = node.sh(f"sacct --noheader --parsable2 --allocations --jobs={ids['fails']} --format=ExitCode")
    assert sacct.split() == ["3:0"]
