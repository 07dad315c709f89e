"""The agent's own queue on the namespaced clusters, under a per-user MaxSubmitJobs set with sacctmgr:
a bundle six times bigger than the limit runs whole and exactly once while the laptop is away and
the agent is killed; a partly queued bundle is cancelled; a limit the agent cannot read is learnt
from SLURM's refusal, and shown to the user."""

from __future__ import annotations

import json
import re
import time

import pytest

from milex.records import save_bundle
from milex_common.model import Bundle, Job, SlurmOptions
from tests.e2e.clusters import LoginNode
from tests.e2e.conftest import REMOTE, MilexHome, wait_until
from tests.e2e.test_controller_faults import chain, independent
from tests.e2e.test_remote_faults import submitted

pytestmark = pytest.mark.timeout(900)
LIMIT, BUNDLE = 50, 300
# Each cluster runs one shape of the big bundle (a chain of 300 runs one job at a time: minutes).
SHAPES = {"cluster1": "independent", "cluster2": "chain"}


def ended(node: LoginNode, bundle: Bundle) -> dict[str, list[str]]:
    """The final states accounting has for the bundle's jobs, by job name (one entry per SLURM job)."""
    sacct = ["sacct", "--noheader", "--parsable2", "--allocations", f"--user={node.user}",
             "--starttime=now-6hours", "--format=Comment,State"]  # fmt: skip
    prefix = f"milex:{bundle.stem}/"
    states: dict[str, list[str]] = {}
    for line in node.exec(*sacct).stdout.splitlines():
        comment, _, state = line.partition("|")
        if comment.startswith(prefix) and state.split()[0] not in ("PENDING", "RUNNING", "COMPLETING"):
            states.setdefault(comment.split("/")[1], []).append(state)
    return states


def run(laptop: MilexHome, bundle: Bundle) -> str:
    save_bundle(laptop.jobs, bundle)
    return laptop.milex("milex-run", bundle.name, "--machine", REMOTE).stdout


def away(laptop: MilexHome) -> None:
    """The laptop leaves: its tunnel to the login node is closed."""
    laptop.milex("milex", "tunnel", "down", "--machine", REMOTE)


def test_a_bundle_bigger_than_the_users_limit_runs_whole_and_once(
    laptop: MilexHome, login_node: LoginNode
) -> None:
    shape = SHAPES[login_node.cluster]
    bundle = independent("sweep", BUNDLE) if shape == "independent" else chain("chain", BUNDLE)
    with login_node.limit(max_submit_jobs=LIMIT):
        out = run(laptop, bundle)
        # The limit's worth at once, and more as the first end during the submission (an idle cluster
        # runs 8 at a time and a job takes a second): never fewer, and the rest in the agent's queue.
        counts = re.search(r"(\d+) job\(s\) submitted, (\d+) in the agent's queue", out)
        assert counts is not None, out
        submitted_at_once, queued = int(counts[1]), int(counts[2])
        assert submitted_at_once >= LIMIT and submitted_at_once + queued == BUNDLE, out
        assert f"MaxSubmitJobs={LIMIT}" in out, out
        away(laptop)
        wait_until(lambda: len(submitted(login_node, bundle)) >= 2 * LIMIT, timeout=600,
                   what=f"{2 * LIMIT} jobs in SLURM, released by the agent alone")  # fmt: skip
        info = login_node.agent_info()
        assert info is not None
        login_node.kill(info["pid"])
        # The laptop comes back: its next command starts the agent again, which goes on; then it leaves.
        laptop.milex("milex", "status", "--machine", REMOTE)
        away(laptop)
        wait_until(lambda: len(ended(login_node, bundle)) == BUNDLE, timeout=780, interval=2.0,
                   what=f"all {BUNDLE} jobs ended")  # fmt: skip
    states = ended(login_node, bundle)
    assert {name: runs for name, runs in states.items() if runs != ["COMPLETED"]} == {}  # each once, done
    assert sorted(submitted(login_node, bundle)) == sorted(bundle.jobs)
    log = login_node.sh("cat ~/milex/agent/*/agent.log")
    assert "job submit limit" not in log  # the agent kept within the limit it read: SLURM refused nothing

    # The agent's view is its last poll's: the chain's last jobs end within a second of each other,
    # and accounting may list them before the agent's next poll (seen once: s298 and s299 PENDING).
    def shown() -> str:
        return laptop.milex("milex", "status", "--machine", REMOTE, bundle.name).stdout

    wait_until(lambda: shown().count("COMPLETED") >= BUNDLE, timeout=30, what="the agent to see all end")


def test_cancel_of_a_partly_queued_bundle_submits_nothing_more(
    laptop: MilexHome, login_node: LoginNode
) -> None:
    bundle = independent("halted", 30)
    for job in bundle.jobs.values():  # held in SLURM: the limit stays full until the cancel
        job.slurm.extra = {"hold": True}
    with login_node.limit(max_submit_jobs=5):
        out = run(laptop, bundle)
        assert "5 job(s) submitted, 25 in the agent's queue" in out, out
        cancelled = laptop.milex("milex", "cancel", bundle.name, "--machine", REMOTE).stdout
        assert "took 25 job(s) out of the agent's queue" in cancelled, cancelled
        time.sleep(5)  # several polls of the agent (0.5 s apart): what is under test is that none releases
        assert len(submitted(login_node, bundle)) == 5
    status = laptop.milex("milex", "status", "--machine", REMOTE, bundle.name).stdout
    assert status.count("CANCELLED") == 30, status


def test_a_limit_the_agent_cannot_read_is_learnt_from_slurms_refusal(
    laptop: MilexHome, login_node: LoginNode
) -> None:
    # Jobs of the user that Milex does not know fill most of the limit: the agent's count is wrong,
    # and SLURM refuses the job past the limit; the job waits in the queue, with SLURM's reason.
    with login_node.limit(max_submit_jobs=6):
        login_node.sh("for i in 1 2 3 4; do sbatch --hold --wrap=true -A physics >/dev/null; done")
        bundle = independent("crowded", 4)
        for job in bundle.jobs.values():  # held too: none ends and makes room before the reply
            job.slurm.extra = {"hold": True}
        out = run(laptop, bundle)
        assert "2 job(s) submitted, 2 in the agent's queue" in out, out
        assert "the cluster refused more jobs" in out, out
        status = laptop.milex("milex", "status", "--machine", REMOTE, bundle.name).stdout
        assert status.count("QUEUED") == 2, status
        login_node.sh("scancel --user=$USER --state=PENDING --name=wrap")
        wait_until(lambda: len(submitted(login_node, bundle)) == 4, timeout=180, what="the rest released")
    laptop.milex("milex", "cancel", bundle.name, "--machine", REMOTE)


@pytest.mark.parametrize("login_node", ["cluster1"], indirect=True)
def test_an_array_past_max_array_size_runs_every_task_once_as_one_array(
    laptop: MilexHome, login_node: LoginNode
) -> None:
    tasks = 2050  # the cluster's MaxArraySize is 1000: three windows, at 0, 1000 and 2000 (of 50)
    record = 'echo "$SLURM_ARRAY_TASK_ID" >> ~/array-tasks.txt; echo "task $SLURM_ARRAY_TASK_ID"'
    job = Job(name="tasks", script="true", pre_commands=[record], slurm=SlurmOptions(array=f"0-{tasks - 1}"))
    bundle = Bundle(name="wide", created=time.strftime("%Y%m%d%H%M%S"), jobs={"tasks": job})
    login_node.sh("rm -f ~/array-tasks.txt")
    out = run(laptop, bundle)
    [job_id] = [line.split()[1] for line in out.splitlines() if line.startswith("tasks ")]
    # In SLURM: three array jobs, one per window (each task listed once), each with its own key.
    comments = [c for c in login_node.comments() if c.startswith(f"milex:{bundle.stem}/tasks/")]
    assert len(comments) == tasks
    assert sorted({comment.rpartition("~")[2] for comment in comments}) == ["0", "1000", "2000"]
    wait_until(lambda: login_node.sh("wc -l < ~/array-tasks.txt 2>/dev/null || echo 0").strip() == str(tasks),
               timeout=600, interval=2.0, what=f"{tasks} tasks run")  # fmt: skip
    seen = sorted(int(line) for line in login_node.sh("cat ~/array-tasks.txt").split())
    assert seen == list(range(tasks))  # every index the user asked for, each once
    watched = laptop.milex("milex", "status", "--machine", REMOTE, bundle.name, "--watch").stdout
    final = watched.rpartition(f"{bundle.name} on {REMOTE}\n")[2]  # (a table, maybe changes, the table)
    assert final.count("│ tasks ") == 1 and f"│ tasks │ {job_id} │ COMPLETED" in final, watched  # one array
    log = laptop.milex("milex", "logs", job_id, "--task", "1500", "--machine", REMOTE).stdout
    assert log.strip() == "task 1500", log


@pytest.mark.parametrize("login_node", ["cluster2"], indirect=True)
def test_wait_follows_queued_jobs_and_a_failed_dependency_leaves_its_dependent_unrun(
    laptop: MilexHome, login_node: LoginNode
) -> None:
    # The machine's own cap (max_submitted), no cluster limit: one job in SLURM at a time.
    config = json.loads(laptop.config.read_text())
    config[REMOTE]["max_submitted"] = 1
    laptop.config.write_text(json.dumps(config))
    fails = Job(name="fails", script="milex-example", script_args={"exit_code": 3})
    never = Job(name="never", script="milex-example", dependencies=["fails"])  # afterok
    anyway = Job(name="anyway", script="milex-example", dependencies=["never"],
                 slurm=SlurmOptions(dependency_type="afterany"))  # fmt: skip
    alone = Job(name="alone", script="milex-example")
    jobs = {job.name: job for job in (fails, never, anyway, alone)}
    bundle = Bundle(name="mixed", created=time.strftime("%Y%m%d%H%M%S"), jobs=jobs)
    save_bundle(laptop.jobs, bundle)
    waited = laptop.milex("milex-run", bundle.name, "--machine", REMOTE, "--wait", check=False)
    assert waited.returncode == 1, waited.stdout + waited.stderr  # not every job completed
    rows = {line.split()[0]: line for line in waited.stdout.splitlines()[2:] if line.split()}
    assert "FAILED" in rows["fails"] and "3" in rows["fails"].split()
    assert "CANCELLED" in rows["never"] and "never run: its dependency 'fails' ended FAILED" in rows["never"]
    assert "COMPLETED" in rows["anyway"] and "COMPLETED" in rows["alone"]
    assert sorted(submitted(login_node, bundle)) == ["alone", "anyway", "fails"]  # never: not in SLURM
