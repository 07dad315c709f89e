"""An array's tasks on the laptop and in the local scheduler: `take` and `status` carry them, the
records keep them, `milex status` counts them on the array's line, lists them with `--tasks`, gives
them in `--json`, a watch updates the counts, and the local scheduler records each task."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from milex.cli.jobs import status
from milex.cli.tasks_view import counts
from milex.records import Submission, SubmittedJobRecord, listed_submissions, save_submission
from milex_agent.scheduler.base import SubmitCall
from milex_agent.scheduler.local.scheduler import LocalScheduler
from milex_agent.scheduler.local.store import TASKS_FILE, runner_alive
from milex_common.model import JobState, JobStatus, TaskStatus
from milex_common.protocol import Event, StatusReply, TrackedJob
from tests.unit.agent_fakes import wait_until

PENDING, RUNNING, COMPLETED, FAILED = JobState.PENDING, JobState.RUNNING, JobState.COMPLETED, JobState.FAILED


def task(index: int, state: JobState, exit_code: int | None = None) -> TaskStatus:
    return TaskStatus(index=index, state=state, exit_code=exit_code)


TEN = [task(i, COMPLETED, 0) for i in range(7)] + [task(7, FAILED, 2), task(8, RUNNING), task(9, RUNNING)]


def test_take_merges_one_tasks_event_and_status_carries_the_tasks():
    record = SubmittedJobRecord(job_id="7", state=RUNNING, tasks=[task(0, RUNNING), task(1, RUNNING)])
    event = Event(seq=1, key="k", bundle="b", name="n", job_id="7", state=RUNNING, tasks=[task(1, FAILED, 2)])
    assert record.take(event)  # the state held, a task changed
    assert record.tasks == [task(0, RUNNING), task(1, FAILED, 2)]
    assert not record.take(JobStatus(job_id="7", state=RUNNING))  # no tasks: they stay as they were
    assert record.status().tasks == record.tasks and record.status().tasks is not record.tasks
    assert record.failed_tasks() == [1]


def test_the_records_keep_the_tasks_and_the_failed_indices_can_be_read_back(tmp_path):
    run = Submission(
        bundle="exp_20240101000000", machine="remote", submitted_at="t", run_id="20240101000001-0a1b2c3d"
    )
    run.jobs["fan"] = SubmittedJobRecord(job_id="14", state=FAILED, exit_code=2, tasks=TEN)
    save_submission(tmp_path, run)
    [again] = listed_submissions(tmp_path, "exp_20240101000000")
    assert again.jobs["fan"].tasks == TEN
    assert again.jobs["fan"].failed_tasks() == [7]  # what a rerun of the failed tasks narrows --array to


def test_counts_say_how_many_tasks_are_done_failed_and_running():
    assert counts(JobStatus(job_id="1", state=RUNNING, tasks=TEN)) == "7/10 done, 1 failed, 2 running"
    assert counts(JobStatus(job_id="1", state=COMPLETED)) == ""


class Agent:
    def __init__(self, jobs: list[TrackedJob]) -> None:
        self.jobs = jobs

    def tracked(self, job_ids: object = (), bundle: str = "", usage: bool = False) -> StatusReply:
        return StatusReply(jobs=self.jobs, last_seq=3)


def fan(state: JobState = RUNNING, tasks: list[TaskStatus] = TEN) -> TrackedJob:
    return TrackedJob(job_id="14", state=state, key="b_1/fan/r", bundle="b_1", name="fan", tasks=list(tasks))


@pytest.fixture
def agent(milex_config, monkeypatch: pytest.MonkeyPatch) -> Agent:
    answering = Agent(
        [
            fan(),
            TrackedJob(job_id="15", state=COMPLETED, exit_code=0, key="b_1/one/r", bundle="b_1", name="one"),
        ]
    )
    monkeypatch.setattr("milex.machine.submitter.submitter_for", lambda machine: answering)
    return answering


def test_status_shows_an_array_as_one_line_with_its_counts(agent):
    result = CliRunner().invoke(status, ["b"])
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.stdout.splitlines() if " fan " in line]
    assert "7/10 done, 1 failed, 2 running" in line
    assert "14_7" not in result.stdout


def test_status_tasks_lists_each_task_with_its_state_and_exit_code(agent):
    result = CliRunner().invoke(status, ["b", "--tasks"])
    assert result.exit_code == 0, result.output
    listed = result.stdout.partition("tasks of b on local")[2]
    rows = [
        [cell.strip() for cell in line.split("│")[1:-1]] for line in listed.splitlines() if "│ fan " in line
    ]
    assert [tuple(row[1:5]) for row in rows] == [
        ("14", str(t.index), t.state.value, "" if t.exit_code is None else str(t.exit_code)) for t in TEN
    ]


def test_status_json_carries_the_tasks_as_objects(agent):
    result = CliRunner().invoke(status, ["b", "--json"])
    assert result.exit_code == 0, result.output
    jobs = {job["name"]: job for job in json.loads(result.stdout)}
    assert jobs["fan"]["tasks"][7] == {"index": 7, "state": "FAILED", "exit_code": 2, "reason": ""}
    assert len(jobs["fan"]["tasks"]) == 10 and "tasks" not in jobs["one"]


def test_a_watch_updates_the_counts_as_task_events_come(milex_config, monkeypatch: pytest.MonkeyPatch):
    agent = Agent([fan(tasks=[task(0, RUNNING), task(1, RUNNING)])])
    monkeypatch.setattr("milex.machine.submitter.submitter_for", lambda machine: agent)

    def follow_events(machine: object, since: int) -> Iterator[Event | None]:
        def event(seq: int, state: JobState, changed: TaskStatus | None = None) -> Event:
            tasks = [changed] if changed else []
            return Event(
                seq=seq, key="b_1/fan/r", bundle="b_1", name="fan", job_id="14", state=state, tasks=tasks
            )

        yield event(4, RUNNING, task(0, COMPLETED, 0))
        yield event(5, RUNNING, task(1, RUNNING))
        yield None  # the end of a poll's batch: the array's line, once for its tasks
        yield event(6, RUNNING, task(1, FAILED, 2))  # a task's event: the array's status as it stood
        yield event(7, FAILED)  # the array's own change, its line with the tasks of the batch
        yield None

    monkeypatch.setattr("milex.watch.follow_events", follow_events)
    result = CliRunner().invoke(status, ["b", "--watch"])
    assert result.exit_code == 0, result.output
    changes = [line for line in result.stdout.splitlines() if line.startswith("b_1 fan")]
    assert changes == ["b_1 fan 14 RUNNING: 1/2 done, 1 running", "b_1 fan 14 FAILED: 1/2 done, 1 failed"]


# ---- the local scheduler -------------------------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalScheduler]:
    scheduler = LocalScheduler(tmp_path / "local-jobs")
    yield scheduler
    job_dirs = [path for path in scheduler.state_dir.glob("*") if path.name.isdigit()]
    scheduler.cancel([path.name for path in job_dirs])
    wait_until(lambda: not any(runner_alive(path) for path in job_dirs), 10.0)


def test_the_local_scheduler_records_each_task_of_an_array(local, tmp_path):
    script = tmp_path / "arr.sh"
    script.write_text(
        f"#!/bin/bash\n#SBATCH --array=0-4%2\n#SBATCH --output={tmp_path}/%A_%a.out\n"
        'case "$SLURM_ARRAY_TASK_ID" in 1|3) exit 2 ;; esac\n'
    )
    job_id = local.submit(SubmitCall(script))
    first = local.states([job_id])[job_id]
    assert [t.index for t in first.tasks] == [0, 1, 2, 3, 4]
    wait_until(lambda: local.states([job_id])[job_id].state.finished, 10.0)
    done = local.states([job_id])[job_id]
    assert (done.state, done.exit_code) == (FAILED, 2)
    assert [(t.index, t.state, t.exit_code) for t in done.tasks] == [
        (0, COMPLETED, 0), (1, FAILED, 2), (2, COMPLETED, 0), (3, FAILED, 2), (4, COMPLETED, 0)
    ]  # fmt: skip
    # Each change of a task is one line appended, not a rewrite of every task's state.
    assert len((local.state_dir / job_id / TASKS_FILE).read_text().splitlines()) == 2 * 5


def test_a_cancelled_local_array_cancels_the_tasks_not_ended(local, tmp_path):
    script = tmp_path / "arr.sh"
    script.write_text(
        f"#!/bin/bash\n#SBATCH --array=0-3%1\n#SBATCH --output={tmp_path}/%A_%a.out\nsleep 30\n"
    )
    job_id = local.submit(SubmitCall(script))
    wait_until(lambda: any(t.state is RUNNING for t in local.states([job_id])[job_id].tasks), 10.0)
    local.cancel([job_id])
    cancelled = local.states([job_id])[job_id]
    assert {t.state for t in cancelled.tasks} == {JobState.CANCELLED}


def test_wait_returns_each_tasks_state_and_the_record_keeps_them(
    milex_config, monkeypatch: pytest.MonkeyPatch
):
    from milex import api
    from milex.records import job_key

    run = Submission(
        bundle="b_20240101000000", machine="local", submitted_at="t", run_id="20240101000001-0a1b2c3d"
    )
    run.jobs["fan"] = SubmittedJobRecord(job_id="14", state=RUNNING)
    key = job_key(run.bundle, "fan", run.run_id)
    agent = Agent([TrackedJob(job_id="14", state=RUNNING, key=key, bundle=run.bundle, name="fan",
                              tasks=[task(0, RUNNING), task(1, RUNNING)])])  # fmt: skip
    monkeypatch.setattr("milex.machine.submitter.submitter_for", lambda machine: agent)

    def follow_events(machine: object, since: int, heartbeat: float = 5.0) -> Iterator[Event | None]:
        for seq, state, changed in ((4, RUNNING, [task(0, COMPLETED, 0)]), (5, RUNNING, [task(1, FAILED, 2)]),
                                    (6, FAILED, [])):  # fmt: skip
            yield Event(
                seq=seq, key=key, bundle=run.bundle, name="fan", job_id="14", state=state, tasks=changed
            )
        yield None

    monkeypatch.setattr("milex.watch.follow_events", follow_events)
    states = api.wait(run, config=None)
    assert states["fan"].state is FAILED
    assert states["fan"].tasks == [task(0, COMPLETED, 0), task(1, FAILED, 2)]
    [kept] = listed_submissions(milex_config.jobs_dir, run.bundle)
    assert kept.jobs["fan"].failed_tasks() == [1]


def test_wait_records_a_batch_of_task_events_once(milex_config, monkeypatch: pytest.MonkeyPatch):
    from milex import api
    from milex.records import job_key

    run = Submission(
        bundle="b_20240101000000", machine="local", submitted_at="t", run_id="20240101000001-0a1b2c3d"
    )
    run.jobs["fan"] = SubmittedJobRecord(job_id="14", state=RUNNING)
    key = job_key(run.bundle, "fan", run.run_id)
    agent = Agent([TrackedJob(job_id="14", state=RUNNING, key=key, bundle=run.bundle, name="fan")])
    monkeypatch.setattr("milex.machine.submitter.submitter_for", lambda machine: agent)

    def follow_events(machine: object, since: int, heartbeat: float = 5.0) -> Iterator[Event | None]:
        for index in range(100):  # one poll: a hundred tasks started
            yield Event(seq=4 + index, key=key, bundle=run.bundle, name="fan", job_id="14", state=RUNNING,
                        tasks=[task(index, RUNNING)])  # fmt: skip
        yield None
        yield Event(
            seq=200, key=key, bundle=run.bundle, name="fan", job_id="14", state=COMPLETED, exit_code=0
        )
        yield None

    seen: list[int] = []
    monkeypatch.setattr("milex.watch.follow_events", follow_events)
    states = api.wait(run, config=None, on_change=lambda states: seen.append(len(states["fan"].tasks)))
    assert seen == [100, 100]  # the batch once, then the array's end
    assert states["fan"].state is COMPLETED


def test_milex_run_prints_an_arrays_counts_beside_its_state(capsys):
    from milex.cli.output import print_submission

    run = Submission(bundle="b_20240101000000", machine="hpc", submitted_at="t")
    run.jobs["fan"] = SubmittedJobRecord(job_id="14", state=FAILED, exit_code=2, tasks=TEN)
    run.jobs["one"] = SubmittedJobRecord(job_id="15", state=COMPLETED, exit_code=0)
    print_submission(run)
    header, fan, one = capsys.readouterr().out.splitlines()[1:]
    assert header.split() == ["job", "id", "state", "exit", "reason", "tasks"]
    assert fan.split()[:4] == ["fan", "14", "FAILED", "2"] and fan.endswith("7/10 done, 1 failed, 2 running")
    assert one.split() == ["one", "15", "COMPLETED", "0"]
