"""End to end through the agent on this host and the real cluster: status, watch, logs, cancel,
crashes, and how often SLURM is asked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from milex.config.file import load_config
from milex.watch import follow_events
from milex_agent.daemon import read_info
from milex_common.agent_layout import agent_dir
from milex_common.connection import AgentConnection
from milex_common.model import Bundle, Job, JobState
from milex_common.protocol import Status, StatusReply, SubmitBundle, Submitted
from tests.e2e.conftest import MilexHome, wait_until


@pytest.fixture
def in_process(milex_home: MilexHome, monkeypatch: pytest.MonkeyPatch) -> MilexHome:
    """The user's environment in this process too, for tests that use the Python API."""
    for key, value in milex_home.env.items():
        monkeypatch.setenv(key, value)
    return milex_home


def wrap_command(directory: Path, name: str, body: str) -> None:
    """A `name` first on PATH that runs `body` around the real command (`$REAL`)."""
    directory.mkdir(exist_ok=True)
    wrapper = directory / name
    wrapper.write_text(f"#!/bin/bash\nREAL=/usr/bin/{name}\n{body}\n")
    wrapper.chmod(0o755)


def kill_agent(machine_path: str) -> None:
    """SIGKILL the agent, and wait until it is gone (the kill is not instantaneous)."""
    directory = agent_dir(machine_path)
    info = read_info(directory)
    assert info is not None
    os.kill(info.pid, signal.SIGKILL)
    wait_until(lambda: read_info(directory) is None, what="the killed agent's lock to be released")


def bundle_of(count: int, name: str, **script_args: object) -> Bundle:
    jobs = {
        f"job{i}": Job(name=f"job{i}", script="milex-example", script_args={"count": i, **script_args})
        for i in range(count)
    }
    return Bundle(name=name, created=time.strftime("%Y%m%d%H%M%S"), jobs=jobs)


def test_status_watch_and_logs_follow_a_bundle_to_completion(milex_home: MilexHome) -> None:
    milex_home.milex("milex-schedule", "milex-example", "--name", "watched", "--sleep", "2",
                     "--message", "hello from the log")  # fmt: skip
    milex_home.milex("milex-run", "watched")

    watch = milex_home.milex("milex", "status", "watched", "--watch")
    assert "COMPLETED" in watch.stdout, watch.stdout

    [job] = json.loads(milex_home.milex("milex", "status", "watched", "--json").stdout)
    assert (job["state"], job["exit_code"]) == ("COMPLETED", 0)
    log = milex_home.milex("milex", "logs", job["job_id"])
    assert json.loads(log.stdout)["arguments"]["message"] == "hello from the log"
    [submission] = milex_home.submissions()
    assert submission["jobs"]["milex-example"]["state"] == "COMPLETED"  # kept for offline status


def test_logs_follow_streams_until_the_job_ends(milex_home: MilexHome) -> None:
    milex_home.milex("milex-schedule", "milex-example", "--name", "slow", "--sleep", "2", "--run-now")
    [job] = json.loads(milex_home.milex("milex", "status", "slow", "--json").stdout)

    followed = milex_home.milex("milex", "logs", job["job_id"], "--follow")

    assert json.loads(followed.stdout)["job_id"] == job["job_id"]
    [after] = json.loads(milex_home.milex("milex", "status", "slow", "--json").stdout)
    assert after["state"] == "COMPLETED"


def test_cancel_a_bundle(milex_home: MilexHome) -> None:
    milex_home.milex("milex-schedule", "milex-example", "--name", "long", "--sleep", "120", "--run-now")
    milex_home.milex("milex-schedule", "milex-example", "--name", "long", "--job_name", "next",
                     "--append", "--dependencies", "milex-example")  # fmt: skip
    milex_home.milex("milex-run", "long")

    result = milex_home.milex("milex", "cancel", "long")

    assert result.stdout.startswith("cancelled")

    def all_cancelled() -> bool:
        jobs = json.loads(milex_home.milex("milex", "status", "long", "--json").stdout)
        return {job["state"] for job in jobs} == {"CANCELLED"}

    wait_until(all_cancelled, what="every job of the bundle CANCELLED")


def test_agent_killed_mid_bundle_loses_no_job_and_doubles_none(in_process: MilexHome) -> None:
    # sbatch answers, then lingers: a SIGKILL lands between SLURM's acceptance and the journal.
    wrappers = in_process.root / "bin"
    wrap_command(wrappers, "sbatch", 'out=$("$REAL" "$@") || exit $?\necho "$out"\nsleep 0.25')
    os.environ["PATH"] = f"{wrappers}:{os.environ['PATH']}"
    machine = load_config().machine()
    bundle = bundle_of(12, "crash")
    keys = {name: f"{bundle.stem}/{name}/k" for name in bundle.jobs}
    request = SubmitBundle(bundle=bundle, settings=machine.settings, keys=keys)
    from milex.machine.endpoint import endpoint

    with AgentConnection(endpoint(machine), timeout=60) as connection:
        connection.send(request)
        time.sleep(1.2)
        kill_agent(machine.path)

    with AgentConnection(endpoint(machine), timeout=60) as connection:  # a new agent starts
        reply = connection.request(request, expect=Submitted)
        assert isinstance(reply, Submitted) and not reply.error
        assert sorted(job.name for job in reply.jobs) == sorted(bundle.jobs)

        squeue = subprocess.run(["squeue", "--noheader", "--states=all", "--me", "--Format=Comment:300"],
                                capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
        for key in keys.values():
            assert squeue.count(f"milex:{key}") == 1, key
        assert len({job.job_id for job in reply.jobs}) == 12

        def all_completed() -> bool:
            status = connection.request(Status(bundle=bundle.stem), expect=StatusReply)
            assert isinstance(status, StatusReply)
            return {job.state for job in status.jobs} == {JobState.COMPLETED}

        wait_until(all_completed, timeout=60, what="the 12 jobs COMPLETED")


def test_watcher_misses_no_event_while_the_agent_is_killed_and_restarted(in_process: MilexHome) -> None:
    in_process.milex("milex-schedule", "milex-example", "--name", "steady", "--sleep", "3", "--run-now")
    machine = load_config().machine()
    seen: list[tuple[int, str]] = []

    def watch() -> None:
        for event in follow_events(machine, 0, heartbeat=0.3):
            if event is not None:
                seen.append((event.seq, event.state.value))
                if event.state.finished:
                    return

    watcher = threading.Thread(target=watch)
    watcher.start()
    wait_until(lambda: any(state == "RUNNING" for _, state in seen), what="the job RUNNING")
    kill_agent(machine.path)
    watcher.join(timeout=60)

    assert not watcher.is_alive()
    states = [state for _, state in seen]
    assert states[0] == "SUBMITTED" and states[-2:] == ["RUNNING", "COMPLETED"], states
    assert [seq for seq, _ in seen] == list(range(seen[0][0], seen[0][0] + len(seen)))  # no gap


def test_one_squeue_per_poll_whatever_the_jobs_and_watchers(in_process: MilexHome) -> None:
    calls = in_process.root / "squeue-calls"
    wrap_command(in_process.root / "bin", "squeue", f'echo "$*" >> {calls}\nexec "$REAL" "$@"')
    os.environ["PATH"] = f"{in_process.root / 'bin'}:{os.environ['PATH']}"
    os.environ["MILEX_AGENT_MAX_INTERVAL"] = "0.5"
    from milex import api

    submissions = [api.submit(list(bundle_of(10, f"load{i}", sleep=4).jobs.values()), bundle=f"load{i}")
                   for i in range(3)]  # fmt: skip
    machine = load_config().machine()
    stop = threading.Event()

    def watcher() -> None:
        for _ in follow_events(machine, 0, heartbeat=0.2):
            if stop.is_set():
                return

    watchers = [threading.Thread(target=watcher) for _ in range(5)]
    for thread in watchers:
        thread.start()
    start, window = time.monotonic(), 3.0
    calls.write_text("")
    time.sleep(window)
    queries = [line for line in calls.read_text().splitlines() if "--jobs=" in line]
    stop.set()
    for thread in watchers:
        thread.join(timeout=10)
    elapsed = time.monotonic() - start

    # One query per 0.5 s poll, for all 30 jobs at once, however many clients watch.
    assert 1 <= len(queries) <= elapsed / 0.5 + 2, queries
    first_ids = queries[0].split("--jobs=")[1].split()[0].split(",")
    assert len(first_ids) == 30
    for submission in submissions:
        api.wait(submission, timeout=60)
