"""The agent's poll on each namespaced cluster: it finds the version, and on SLURM 24.05+ polls
`squeue --only-job-state`, and still reports a job RUNNING then COMPLETED and a failed job's exit
code, which the states alone do not carry; on older versions (22.05) it asks every field."""

from __future__ import annotations

import time

import pytest

from milex_common.protocol import Event
from tests.e2e.clusters import LoginNode
from tests.e2e.conftest import REMOTE, MilexHome, wait_until

pytestmark = pytest.mark.timeout(600)


def events_until_finished(bundle: str, jobs: int, timeout: float) -> list[Event]:
    """The agent's events of `bundle` (from its first) until its `jobs` jobs have all finished."""
    from milex.config.file import load_config
    from milex.watch import follow_events

    deadline = time.monotonic() + timeout
    seen: list[Event] = []
    for event in follow_events(load_config().machine(REMOTE), 0, heartbeat=0.5):
        if event is not None and event.bundle.startswith(bundle):
            seen.append(event)
        if len({e.name for e in seen if e.state.finished}) == jobs:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"{bundle} did not finish within {timeout:.0f} s: {seen}")
    raise AssertionError(f"the watch ended early: {seen}")


def test_the_agent_polls_what_its_slurm_offers_and_still_reports_exit_codes(
    laptop: MilexHome, login_node: LoginNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in laptop.env.items():  # the client library's calls in the test read them too
        monkeypatch.setenv(key, value)
    laptop.milex("milex-schedule", "milex-example", "--name", "polled", "--sleep", "4")
    laptop.milex("milex-schedule", "milex-example", "--name", "polled", "--append", "--job_name", "bad",
                 "--exit_code", "5", "--sleep", "2")  # fmt: skip
    laptop.milex("milex-run", "polled", "--machine", REMOTE)

    seen = events_until_finished("polled", jobs=2, timeout=120)

    states = {
        name: [(e.state.value, e.exit_code) for e in seen if e.name == name]
        for name in ("milex-example", "bad")
    }
    assert ("RUNNING", None) in states["milex-example"], states
    assert states["milex-example"][-1] == ("COMPLETED", 0), states
    assert states["bad"][-1] == ("FAILED", 5), states
    log = login_node.sh("cat ~/milex/agent/*/agent.log")
    version = login_node.slurm_version
    if tuple(map(int, version.split(".")[:2])) >= (24, 5):
        assert (
            f"polls: squeue --only-job-state, then every field for changed jobs (slurm-wlm {version}" in log
        )
        assert "polls: squeue with every field" not in log and "refused" not in log, log
    else:
        assert f"polls: squeue with every field (slurm-wlm {version}" in log, log


def test_the_agent_on_the_hosts_22_05_polls_every_field(milex_home: MilexHome) -> None:
    milex_home.milex("milex-schedule", "milex-example", "--name", "older", "--run-now", "--machine", "local")
    [log] = (milex_home.root / "milex" / "agent").glob("*/agent.log")
    wait_until(lambda: "polls:" in log.read_text(), what="the agent's first poll")
    assert "polls: squeue with every field (slurm-wlm 22.05" in log.read_text(), log.read_text()
