"""The laptop's records against a real cluster: a job recorded while it waited in the agent's queue
(no id) takes its id and final state from `milex status`, and `milex ls` shows it; a job id the agent
does not know is an error, not an empty table."""

from __future__ import annotations

import json

import pytest

from milex.records import load_submissions, save_bundle
from tests.e2e.clusters import LoginNode
from tests.e2e.conftest import REMOTE, MilexHome, wait_until
from tests.e2e.test_controller_faults import independent

pytestmark = pytest.mark.timeout(600)
LIMIT, JOBS = 2, 6


def test_jobs_recorded_while_queued_learn_their_ids_in_the_records(
    laptop: MilexHome, login_node: LoginNode
) -> None:
    bundle = independent("queued", JOBS)
    save_bundle(laptop.jobs, bundle)
    with login_node.limit(max_submit_jobs=LIMIT):
        out = laptop.milex("milex-run", bundle.name, "--machine", REMOTE).stdout
        assert "in the agent's queue" in out, out
        [run] = load_submissions(laptop.jobs, bundle.stem)
        assert any(not record.job_id for record in run.jobs.values()), out  # recorded with no id

        def all_ended() -> bool:
            status = laptop.milex("milex", "status", "--machine", REMOTE, bundle.name, "--json").stdout
            return all(job["state"] == "COMPLETED" for job in json.loads(status))

        wait_until(all_ended, timeout=480, interval=2.0, what=f"all {JOBS} jobs completed")
    [run] = load_submissions(laptop.jobs, bundle.stem)
    assert {name: (bool(r.job_id), r.state.value) for name, r in run.jobs.items()} == {
        name: (True, "COMPLETED") for name in bundle.jobs
    }
    listed = laptop.milex("milex", "ls", bundle.name).stdout
    assert "QUEUED" not in listed and listed.count(":COMPLETED") == JOBS, listed


def test_status_of_a_job_id_the_agent_does_not_know_fails_in_one_line(laptop: MilexHome) -> None:
    result = laptop.milex("milex", "status", "--machine", REMOTE, "99999", check=False)
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: the agent on {REMOTE} tracks no bundle or job '99999'")
    assert "Traceback" not in result.stderr
