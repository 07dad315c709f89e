"""The agent and the controller failing in the middle of a bundle on each namespaced cluster: every job
is in SLURM exactly once and in the laptop's record, and the same `milex-run` ends successfully."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from milex.records import save_bundle
from milex_common.model import Bundle
from tests.e2e.clusters import LoginNode
from tests.e2e.conftest import REMOTE, MilexHome, wait_until
from tests.e2e.test_controller_faults import chain, finished

pytestmark = pytest.mark.timeout(600)


@contextmanager
def remote_run(
    laptop: MilexHome, node: LoginNode, bundle: Bundle, sbatch_delay: float
) -> Iterator[subprocess.Popen[str]]:
    """`milex-run` of `bundle` to the login node in the background, each of its agent's sbatch
    lingering `sbatch_delay` s after SLURM accepted the job; killed if the test fails."""
    node.write("sbatch-delay", f"{sbatch_delay}\n")
    save_bundle(laptop.jobs, bundle)
    try:
        with laptop.background("milex-run", bundle.name, "--machine", REMOTE) as run:
            yield run
    finally:
        node.write("sbatch-delay", "0\n")


def submitted(node: LoginNode, bundle: Bundle) -> list[str]:
    """The bundle's jobs in SLURM, by name, one per job SLURM has (repeats included)."""
    prefix = f"milex:{bundle.stem}/"
    return [comment.split("/")[1] for comment in node.comments() if comment.startswith(prefix)]


def assert_each_job_once(laptop: MilexHome, node: LoginNode, bundle: Bundle) -> None:
    # slurmdbd learns of a job a moment after slurmctld: wait for all, then count the repeats.
    wait_until(lambda: len(submitted(node, bundle)) >= len(bundle.jobs), what="every job in accounting")
    names = submitted(node, bundle)
    assert sorted(names) == sorted(bundle.jobs), f"{len(names)} jobs in SLURM for {len(bundle.jobs)}"
    [submission] = [s for s in laptop.submissions() if s["bundle"] == bundle.stem]
    assert sorted(submission["jobs"]) == sorted(bundle.jobs)
    assert len({job["job_id"] for job in submission["jobs"].values()}) == len(bundle.jobs)


def test_an_agent_killed_mid_bundle_loses_no_job_and_doubles_none(
    laptop: MilexHome, login_node: LoginNode
) -> None:
    bundle = chain("killed")
    with remote_run(laptop, login_node, bundle, sbatch_delay=0.05) as run:
        wait_until(lambda: len(submitted(login_node, bundle)) >= 24, timeout=120, what="24 jobs in squeue")
        info = login_node.agent_info()
        assert info is not None
        login_node.kill(info["pid"])  # between SLURM's acceptance of a job and the agent's journal, likely
        wait_until(lambda: (new := login_node.agent_info()) is not None and new["pid"] != info["pid"],
                   timeout=60, what="a new agent")  # fmt: skip
        assert len(submitted(login_node, bundle)) < len(bundle.jobs)  # the kill landed mid-bundle
        finished(run)
    assert_each_job_once(laptop, login_node, bundle)


def test_a_controller_paused_mid_bundle_loses_no_job_and_doubles_none(
    laptop: MilexHome, login_node: LoginNode
) -> None:
    bundle = chain("paused")
    with remote_run(laptop, login_node, bundle, sbatch_delay=0.05) as run:
        wait_until(lambda: len(submitted(login_node, bundle)) >= 20, timeout=120, what="20 jobs in squeue")
        controller = login_node.pid_of("slurmctld")
        login_node.kill(controller, "STOP")
        try:
            time.sleep(25)  # the stall itself: what is under test is its length, nothing to wait for
        finally:
            login_node.kill(controller, "CONT")
        finished(run)
    assert_each_job_once(laptop, login_node, bundle)
    log = login_node.sh("cat ~/milex/agent/*/agent.log")
    assert "Socket timed out on send/recv operation" in log  # the stall was met


@pytest.fixture(autouse=True)
def _controller_running(login_node: LoginNode) -> Iterator[None]:
    """Whatever happens in a test, the cluster's slurmctld is left running."""
    yield
    login_node.exec("pkill", "-CONT", "-x", "slurmctld", check=False)
