"""The agent's SLURM scheduler on the test clusters with accounting (22.05 and 24.11), limits set by the
administrator with sacctmgr: the limits it reads (`SlurmScheduler.limits`), how SLURM counts the
user's jobs against them, and which of sbatch's refusals it takes for a limit (`limit_refusal`).

The scheduler code runs on the login node as the login user, in the venv `milex agent deploy` made."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator

import msgspec
import pytest

from milex_agent.scheduler.base import Limits
from tests.e2e.clusters import LoginNode

pytestmark = pytest.mark.timeout(300)

NO_CAP = Limits(
    max_submitted=10000, max_array_size=1000, held_by="MaxJobCount=10000 of the cluster (all users' jobs)"
)
ASSOC = "MaxSubmitJobs={} of user milex-login's association (account physics)"

READ = """
import sys, msgspec
from milex_agent.scheduler.slurm.scheduler import SlurmScheduler
print(msgspec.json.encode(SlurmScheduler().limits(sys.argv[1], sys.argv[2] or None)).decode())
"""
# Submits each script of the JSON list on stdin through the agent's scheduler; prints, for each, its
# job id or the refusal and what limit_refusal makes of it.
SUBMIT = """
import json, sys
from pathlib import Path
from milex_agent.scheduler.slurm.scheduler import SlurmScheduler
from milex_agent.scheduler.slurm.limits import limit_refusal
from milex_agent.scheduler.base import SubmitCall
from milex_common.errors import SubmitError
out, scheduler = [], SlurmScheduler()
for text in json.load(sys.stdin):
    try:
        out.append({"id": scheduler.submit(SubmitCall(Path("limits.sh"), text=text))})
    except SubmitError as error:
        out.append({"refused": str(error), "limit": limit_refusal(str(error))})
scheduler.close()
print(json.dumps(out))
"""
HELD = "#!/bin/sh\n#SBATCH --hold\n#SBATCH --output=/dev/null\ntrue\n"


def held(*options: str) -> str:
    """A job script that stays pending (held) until cancelled, with more #SBATCH `options`."""
    return HELD.replace("#SBATCH --hold\n", "#SBATCH --hold\n" + "".join(f"#SBATCH {o}\n" for o in options))


def read_limits(node: LoginNode, account: str = "", qos: str = "") -> Limits:
    out = node.sh(f"~/venv/bin/python -c {shlex.quote(READ)} {shlex.quote(account)} {shlex.quote(qos)}")
    return msgspec.json.decode(out, type=Limits)


def submit(node: LoginNode, *scripts: str) -> list[dict[str, str | None]]:
    command = ["bash", "-c", f"cd && ~/venv/bin/python -c {shlex.quote(SUBMIT)}"]
    done = node.exec(*command, user=node.user, input=json.dumps(scripts))
    result: list[dict[str, str | None]] = json.loads(done.stdout)
    return result


@pytest.fixture
def node(login_node: LoginNode) -> Iterator[LoginNode]:
    """The login node, with none of the user's jobs before and after the test."""
    login_node.exec("scancel", f"--user={login_node.user}")
    yield login_node
    login_node.exec("scancel", f"--user={login_node.user}")


def test_the_limits_follow_what_the_administrator_sets(node: LoginNode) -> None:
    assert read_limits(node) == NO_CAP
    with node.limit(max_submit_jobs=50):
        mine = Limits(max_submitted=50, max_array_size=1000, held_by=ASSOC.format(50))
        assert read_limits(node) == mine
        assert read_limits(node, "physics") == mine
        assert read_limits(node, "chemistry") == NO_CAP  # the user's other association
        with node.limit(grp_submit_jobs=20):
            found = read_limits(node)
            assert (found.max_submitted, found.held_by) == (
                20,
                "GrpSubmitJobs=20 of account physics (jobs of all its users)",
            )
        # SLURM looks no further than the QOS's limit of this kind: larger than the association's, it holds.
        with node.limit(qos_max_submit_jobs_per_user=70):
            found = read_limits(node)
            assert (found.max_submitted, found.held_by) == (70, "MaxSubmitJobsPerUser=70 of QOS normal")
    assert read_limits(node) == NO_CAP


def test_a_limit_is_restored_when_the_test_fails(node: LoginNode) -> None:
    with pytest.raises(RuntimeError), node.limit(max_submit_jobs=5, qos_max_submit_jobs_per_user=6):
        assert read_limits(node).max_submitted == 6
        raise RuntimeError("the test failed")
    assert read_limits(node) == NO_CAP


def test_a_full_queue_is_refused_as_a_limit(node: LoginNode) -> None:
    with node.limit(max_submit_jobs=1):
        first, second = submit(node, held(), held())
        assert first.get("id"), first
        assert second.get("limit") and "Job violates accounting/QOS policy" in str(second["limit"]), second
        node.exec("scancel", str(first["id"]), user=node.user)
        # The QOS's per-user limit, once set, is the one SLURM applies (and so does read_limits).
        with node.limit(qos_max_submit_jobs_per_user=2):
            outcomes = submit(node, held(), held(), held())
            assert [bool(o.get("id")) for o in outcomes] == [True, True, False], outcomes
            assert outcomes[2]["limit"], outcomes


def test_a_bad_job_is_not_refused_as_a_limit(node: LoginNode) -> None:
    outcomes = submit(
        node, held("--account=nosuchaccount"), held("--partition=nosuch"), held("--array=0-1000")
    )
    assert all(o.get("refused") and o["limit"] is None for o in outcomes), outcomes
    # Index 999 is the largest MaxArraySize=1000 allows.
    [largest] = submit(node, held("--array=999"))
    assert largest.get("id"), largest


def test_slurm_counts_every_array_task_and_running_jobs(node: LoginNode) -> None:
    """What the agent's queue counts as the user's jobs in SLURM: pending and running jobs, and each
    task of an array (slurm_limits' docstring)."""
    with node.limit(max_submit_jobs=3):
        [running] = submit(node, "#!/bin/sh\n#SBATCH --output=/dev/null\nsleep 300\n")
        node.exec(
            "bash", "-c", f"until squeue -h -j {running['id']} -o %T | grep -q RUNNING; do sleep 0.2; done"
        )
        [pending] = submit(node, held())
        [array] = submit(node, held("--array=0-1"))  # 2 tasks: 4 with the two jobs in
        assert array.get("limit"), array
        node.exec("scancel", str(running["id"]), user=node.user)
        [array] = submit(node, held("--array=0-1"))  # now 3
        assert array.get("id"), array
        [fourth] = submit(node, held())
        assert fourth.get("limit"), fourth
        assert pending.get("id")


def test_the_node_runs_eight_small_jobs_at_once(node: LoginNode) -> None:
    """The agent's queue tests run hundreds of short jobs: the node takes 8 one-CPU jobs at a time."""
    sleeper = "#!/bin/sh\n#SBATCH --output=/dev/null\nsleep 120\n"
    outcomes = submit(node, *[sleeper] * 9)
    assert all(o.get("id") for o in outcomes), outcomes
    running = "squeue -h --me -t RUNNING -o %i | wc -l"
    node.sh(f"for i in $(seq 150); do [ $({running}) -ge 8 ] && break; sleep 0.2; done")
    assert node.sh(running).strip() == "8"  # and the ninth waits for a CPU
    assert node.sh("squeue -h --me -t PENDING -o %i | wc -l").strip() == "1"
