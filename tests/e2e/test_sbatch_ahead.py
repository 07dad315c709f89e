"""sbatch started ahead of its call, on the test clusters with accounting (22.05 and 24.11): the
dependency and comment a submission carries, written into the script's header, are what SLURM
records, and override the script's own as argv did; a spare left by an agent that dies submits
nothing. (Every submission of the other end-to-end tests goes through it too.)

The scheduler code runs on the login node as the login user, in the venv `milex agent deploy` made."""

from __future__ import annotations

import itertools
import json
import shlex
from collections.abc import Iterator

import pytest

from tests.e2e.clusters import LoginNode
from tests.e2e.conftest import wait_until

pytestmark = pytest.mark.timeout(300)

# A chain of four held jobs through one scheduler, each with its comment and after the one before;
# the third's script sets a comment of its own; the fourth, sent after a pause, goes to an sbatch
# started ahead. Once another waits, the agent dies (SIGKILL): printed first, the ids and its pid.
CHAIN = """
import json, os, signal, sys, time
from pathlib import Path
from milex_agent.scheduler.base import SubmitCall
from milex_agent.scheduler.slurm.scheduler import SlurmScheduler
held = "#!/bin/sh\\n#SBATCH --hold\\n#SBATCH --output=/dev/null\\n"
scheduler, ids = SlurmScheduler(), []

def spare():
    while scheduler.sbatch.waiting is None:  # started while at most one call is in flight
        time.sleep(0.05)
    return scheduler.sbatch.waiting

for n, own in enumerate(["", "", "#SBATCH --comment=the-scripts-own\\n", ""]):
    if n == 3:
        spare()  # the fourth is given to the sbatch started ahead
    after = ids[-1:]
    text = held + own + "true\\n"
    call = SubmitCall(Path(f"s{n}.sh"), text=text, after=after, comment=f"milex:ahead{n}")
    ids.append(scheduler.submit(call))
print(json.dumps({"ids": ids, "spare": spare()}), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture
def node(login_node: LoginNode) -> Iterator[LoginNode]:
    """The login node, with none of the user's jobs before and after the test."""
    login_node.exec("scancel", f"--user={login_node.user}")
    yield login_node
    login_node.exec("scancel", f"--user={login_node.user}")


def test_the_header_carries_the_dependency_and_comment_and_a_dead_agents_spare_submits_nothing(
    node: LoginNode,
) -> None:
    listed = "squeue -h --me --states=all -o %i"  # with jobs of earlier tests, until MinJobAge
    earlier = set(node.sh(listed).split())
    chain = f"cd && ~/venv/bin/python -c {shlex.quote(CHAIN)}"
    done = node.exec("bash", "-c", chain, user=node.user, check=False)  # it dies by SIGKILL
    printed = json.loads(done.stdout.splitlines()[0])
    ids, spare = printed["ids"], printed["spare"]
    jobs = {}
    for job_id in ids:
        shown = node.exec("scontrol", "show", "job", "-o", job_id, user=node.user).stdout
        jobs[job_id] = dict(field.split("=", 1) for field in shown.split() if "=" in field)
    assert [jobs[i]["Comment"] for i in ids] == [f"milex:ahead{n}" for n in range(4)]
    assert jobs[ids[0]]["Dependency"] == "(null)"
    for before, job_id in itertools.pairwise(ids):
        assert jobs[job_id]["Dependency"].startswith(f"afterok:{before}")
    # The spare read an empty script when its agent died, and refused it.
    wait_until(
        lambda: node.exec("kill", "-0", str(spare), user=node.user, check=False).returncode != 0,
        timeout=30,
        what=f"the dead agent's spare sbatch (pid {spare}) to exit",
    )
    assert set(node.sh(listed).split()) - earlier == set(ids)
