"""The SLURM controller and the agent failing in the middle of a bundle, on the real cluster: every job
is in SLURM exactly once and in the laptop's record, and the same `milex-run` ends successfully."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from milex.records import save_bundle
from milex_agent.daemon import read_info
from milex_common.agent_layout import agent_dir
from milex_common.model import Bundle, Job, SlurmOptions
from tests.e2e.conftest import REPO, MilexHome, wait_until

CHAIN = 200


def chain(name: str, count: int = CHAIN) -> Bundle:
    """`count` jobs, each after the one before, each printing its number and ending at once."""
    names = [f"s{i:03d}" for i in range(count)]
    jobs = {
        job: Job(name=job, script="milex-example", script_args={"count": i},
                 dependencies=[names[i - 1]] if i else [], slurm=SlurmOptions(dependency_type="afterany"))
        for i, job in enumerate(names)
    }  # fmt: skip
    return Bundle(name=name, created=time.strftime("%Y%m%d%H%M%S"), jobs=jobs)


def independent(name: str, count: int) -> Bundle:
    jobs = {f"j{i:03d}": Job(name=f"j{i:03d}", script="milex-example") for i in range(count)}
    return Bundle(name=name, created=time.strftime("%Y%m%d%H%M%S"), jobs=jobs)


def comments(stem: str) -> list[str]:
    """The Milex comments of the bundle's jobs in SLURM, one per job SLURM has (repeats included)."""
    squeue = subprocess.run(["squeue", "--me", "--noheader", "--states=all", "--Format=Comment:0"],
                            capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    return [line.strip() for line in squeue.stdout.splitlines() if line.strip().startswith(f"milex:{stem}/")]


CLUSTER_STATE = Path(os.environ.get("MILEX_CLUSTER_STATE", "/var/run/milex-test-cluster"))


def slurmctld() -> int:
    """The test cluster's slurmctld, as deploy/slurm-up.sh recorded it (`pidof` would also name the
    slurmctld of a container running on this host)."""
    return int((CLUSTER_STATE / "pids" / "slurmctld.pid").read_text())


def deploy(script: str) -> None:
    """Run one of deploy/'s cluster scripts (they stop and start slurmctld without systemd)."""
    subprocess.run([str(REPO / "deploy" / script)], check=True, capture_output=True, timeout=300)


@contextmanager
def milex_run(home: MilexHome, bundle: Bundle, sbatch_delay: float) -> Iterator[subprocess.Popen[str]]:
    """`milex-run` of `bundle` (saved first) running in the background, its agent's every sbatch
    `sbatch_delay` s slower (so that a fault lands in the middle); killed if the test fails."""
    wrappers = home.root / "bin"
    wrappers.mkdir(exist_ok=True)
    (wrappers / "sbatch").write_text(f'#!/bin/sh\nsleep {sbatch_delay}\nexec /usr/bin/sbatch "$@"\n')
    (wrappers / "sbatch").chmod(0o755)
    home.env["PATH"] = f"{wrappers}{os.pathsep}{home.env['PATH']}"
    save_bundle(home.jobs, bundle)
    try:
        with home.background("milex-run", bundle.name) as run:
            yield run
    finally:
        home.milex("milex", "cancel", bundle.name, check=False)  # free the cluster for the next tests


def finished(run: subprocess.Popen[str], timeout: float = 300) -> str:
    """What `run` printed, once it has exited 0."""
    stdout, stderr = run.communicate(timeout=timeout)
    assert run.returncode == 0, f"milex-run exited {run.returncode}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    return stdout


def assert_each_job_once(home: MilexHome, bundle: Bundle) -> None:
    """In SLURM exactly once (by its idempotency comment), and in the laptop's record of the run."""
    found = comments(bundle.stem)
    names = sorted(comment.split("/")[1] for comment in found)
    assert names == sorted(bundle.jobs), f"{len(found)} comments for {len(bundle.jobs)} jobs"
    [submission] = [s for s in home.submissions() if s["bundle"] == bundle.stem]
    assert sorted(submission["jobs"]) == sorted(bundle.jobs)
    assert len({job["job_id"] for job in submission["jobs"].values()}) == len(bundle.jobs)


def agent_log(home: MilexHome) -> str:
    return (agent_dir(str(home.root / "milex")) / "agent.log").read_text(errors="replace")


def when_submitted(bundle: Bundle, count: int) -> Callable[[], bool]:
    return lambda: len(comments(bundle.stem)) >= count


def test_a_controller_paused_mid_bundle_loses_no_job_and_doubles_none(milex_home: MilexHome) -> None:
    bundle = chain("paused")
    with milex_run(milex_home, bundle, sbatch_delay=0.05) as run:
        wait_until(when_submitted(bundle, 20), timeout=120, what="20 jobs in squeue")
        controller = slurmctld()
        os.kill(controller, signal.SIGSTOP)
        try:
            time.sleep(25)  # the stall itself: what is under test is its length, nothing to wait for
        finally:
            os.kill(controller, signal.SIGCONT)
        finished(run)
    assert_each_job_once(milex_home, bundle)
    assert "Socket timed out on send/recv operation" in agent_log(milex_home)  # the stall was met


def test_a_controller_restarted_mid_bundle_loses_no_job_and_doubles_none(milex_home: MilexHome) -> None:
    bundle = chain("restarted")
    with milex_run(milex_home, bundle, sbatch_delay=0.1) as run:
        wait_until(when_submitted(bundle, 20), timeout=120, what="20 jobs in squeue")
        assert len(comments(bundle.stem)) < CHAIN  # the restart lands in the middle of the bundle
        try:
            deploy("slurm-down.sh")
        finally:
            deploy("slurm-up.sh")
        finished(run)
    # sbatch itself retries while the controller is down: only calls cut at the stop are in doubt.
    assert_each_job_once(milex_home, bundle)


@contextmanager
def state_not_saved() -> Iterator[None]:
    """slurmctld cannot replace its job state file meanwhile (a read-only file mounted on it): it
    accepts jobs (their scripts are written beside it), but a restart finds the jobs of before, as
    one killed between two of its periodic saves does, only with more jobs accepted since."""
    saved = CLUSTER_STATE / "slurmctld" / "job_state"
    subprocess.run(["mount", "--bind", "-o", "ro", str(saved), str(saved)], check=True, timeout=30)
    try:
        yield
    finally:
        subprocess.run(["umount", str(saved)], check=True, timeout=30)


def ended(workdir: Path) -> dict[str, list[dict[str, str]]]:
    """The jobs run from `workdir` that slurmctld logged the end of (repeats included), by name: the
    job-completion log keeps them whatever a restart forgot."""
    log = CLUSTER_STATE / "jobcomp.log"
    found: dict[str, list[dict[str, str]]] = {}
    for line in log.read_text().splitlines():
        fields = dict(field.partition("=")[::2] for field in line.split())
        if fields.get("WorkDir") == str(workdir):
            found.setdefault(fields["Name"], []).append(fields)
    return found


@pytest.mark.timeout(900)
def test_a_controller_killed_mid_chain_loses_no_job_and_runs_each_once_in_order(
    milex_home: MilexHome,
) -> None:
    bundle = chain("killed", 80)
    # None runs across the kill: slurmd refuses a job given the id of one it still runs ("Duplicate
    # jobid") and drains the node. So ids the restarted controller hands out again name jobs that have
    # not run: one of them may be deploy/slurm-up.sh's own test job, which ends at once (and must not
    # be taken for the lost job's end).
    bundle.jobs["s000"].slurm.extra = {"begin": "now+30"}

    def all_ran() -> bool:
        jobs = ended(milex_home.root)
        return all(any(job["JobState"] == "COMPLETED" for job in jobs.get(name, ())) for name in bundle.jobs)

    with milex_run(milex_home, bundle, sbatch_delay=0.05) as run:
        wait_until(when_submitted(bundle, 20), timeout=120, what="20 jobs in squeue")
        with state_not_saved():
            wait_until(when_submitted(bundle, 40), timeout=120, what="20 jobs more in squeue")
            os.kill(slurmctld(), signal.SIGKILL)  # it comes back without the jobs of the last 20 or more
        deploy("slurm-up.sh")
        finished(run)
        wait_until(all_ran, timeout=600, what="every job of the chain to complete")
    assert "are gone (its controller restarted from older state)" in agent_log(milex_home)
    completed = {}
    for name, runs in ended(milex_home.root).items():
        # One SLURM job (id and submit time) that completed: the restarted controller may run a job it
        # had already run once more (its saved state had it pending), but Milex submitted it once.
        done = {(run["JobId"], run["SubmitTime"]) for run in runs if run["JobState"] == "COMPLETED"}
        assert len(done) == 1, f"{name} was submitted and completed {len(done)} times: {runs}"
        # Any other was cancelled before it ran (it waited for a lost job's id, which may name another).
        assert all(run["NodeCnt"] == "0" for run in runs if run["JobState"] != "COMPLETED"), runs
        # Its first run: the one its dependent waited for (a run again by the restarted controller
        # may come after the dependent's, which had no reason to wait for it: seen once).
        completed[name] = min(
            (run for run in runs if run["JobState"] == "COMPLETED"), key=lambda r: r["StartTime"]
        )
    runs = ended(milex_home.root)
    for before, after in itertools.pairwise(sorted(completed)):
        assert completed[after]["StartTime"] >= completed[before]["EndTime"], (
            f"{after} ran before {before}: {before} {runs[before]}, {after} {runs[after]}\n"
            f"{agent_log(milex_home)}"
        )
    milex_home.milex("milex", "status", bundle.name)  # the laptop's record learns the last ids
    [submission] = [s for s in milex_home.submissions() if s["bundle"] == bundle.stem]
    recorded = {name: job["job_id"] for name, job in submission["jobs"].items()}
    assert recorded == {name: job["JobId"] for name, job in completed.items()}


def test_clients_are_answered_while_a_big_bundle_is_submitted(milex_home: MilexHome) -> None:
    bundle = independent("wide", 500)
    asker = (
        "import sys, time\n"
        "from milex.machine.endpoint import connect\n"
        "from milex.config.file import load_config\n"
        "from milex_common.protocol import Status, StatusReply\n"
        "connection = connect(load_config().machine(), timeout=10)\n"
        "slowest = 0.0\n"
        "for _ in range(40):\n"
        "    started = time.monotonic()\n"
        "    connection.hello('0')\n"
        "    connection.request(Status(bundle=sys.argv[1]), expect=StatusReply)\n"
        "    slowest = max(slowest, time.monotonic() - started)\n"
        "    time.sleep(0.1)\n"
        "print(slowest)\n"
    )
    with milex_run(milex_home, bundle, sbatch_delay=0.05) as run:
        wait_until(when_submitted(bundle, 10), timeout=120, what="10 jobs in squeue")
        askers = [subprocess.Popen([sys.executable, "-c", asker, bundle.stem], env=milex_home.env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for _ in range(8)]  # fmt: skip
        answers = [asker.communicate(timeout=120) for asker in askers]
        submitting = run.poll() is None
        finished(run)
    assert all(asker.returncode == 0 for asker in askers), answers
    slowest = max(float(stdout) for stdout, _ in answers)
    assert slowest < 2.0, f"a client waited {slowest:.1f} s for an answer"
    assert submitting, "the bundle was submitted before the clients were done: make it bigger"
    assert_each_job_once(milex_home, bundle)


def test_an_agent_killed_mid_bundle_is_noticed_in_seconds(milex_home: MilexHome) -> None:
    bundle = chain("killed")
    directory = agent_dir(str(milex_home.root / "milex"))
    with milex_run(milex_home, bundle, sbatch_delay=0.05) as run:
        wait_until(when_submitted(bundle, 24), timeout=120, what="24 jobs in squeue")
        info = read_info(directory)
        assert info is not None
        os.kill(info.pid, signal.SIGKILL)
        killed = time.time()
        wait_until(lambda: (new := read_info(directory)) is not None and new.pid != info.pid,
                   timeout=30, what="milex-run to start a new agent")  # fmt: skip
        restarted = read_info(directory)
        assert restarted is not None and restarted.started_at - killed < 15
        finished(run)
    assert_each_job_once(milex_home, bundle)


@pytest.fixture(autouse=True)
def _controller_running() -> Iterator[None]:
    """Whatever happens in a test, slurmctld is left running and answering."""
    yield
    with contextlib.suppress(OSError, ValueError):
        os.kill(slurmctld(), signal.SIGCONT)
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, check=False)
    if "is UP" not in ping.stdout:
        deploy("slurm-up.sh")
