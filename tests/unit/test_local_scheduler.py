"""The `local` scheduler with real runner processes: records, dependencies, arrays, cancel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from milex_agent import daemon
from milex_agent.scheduler.base import SubmitCall
from milex_agent.scheduler.local.runner import expand_pattern
from milex_agent.scheduler.local.scheduler import LocalScheduler, parse_header
from milex_agent.scheduler.local.store import (
    STATE_FILE,
    VANISHED,
    LocalJobRecord,
    LocalJobSpec,
    read_record,
    read_status,
    runner_alive,
    write_record,
)
from milex_common.errors import SchedulerError, SubmitError
from milex_common.model import JobState, JobStatus, dependency_verdict
from tests.unit.agent_fakes import wait_until as wait_for

DEADLINE = 10.0
COMPLETED, FAILED, CANCELLED = JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED
PENDING, RUNNING = JobState.PENDING, JobState.RUNNING


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[LocalScheduler]:
    local = LocalScheduler(tmp_path / "local-jobs")
    yield local
    # Leave no runner behind: cancel what is still going and wait for the runners to be gone.
    job_dirs = [path for path in local.state_dir.glob("*") if path.name.isdigit()]
    local.cancel([path.name for path in job_dirs])
    wait_until(lambda: not any(runner_alive(path) for path in job_dirs))


def wait_until(condition: Callable[[], object]) -> None:
    """agent_fakes.wait_until with this module's longer deadline: jobs run real processes."""
    wait_for(condition, DEADLINE)


def wait_for_state(local: LocalScheduler, job_id: str, *states: JobState) -> JobStatus:
    """Poll until `job_id` reaches one of `states` (by default, any final state)."""
    found: list[JobStatus] = []

    def reached() -> bool:
        found[:] = [local.states([job_id])[job_id]]
        return found[0].state in states if states else found[0].state.finished

    wait_until(reached)
    return found[0]


def write_script(directory: Path, name: str, body: str, *options: str) -> Path:
    """A job script like the renderer's: logs under `directory/logs`, then `body`."""
    pattern = "%A_%a" if any(option.startswith("--array") for option in options) else "%j"
    header = [
        "#!/bin/bash",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --output={directory}/logs/{name}-{pattern}.out",
        f"#SBATCH --error={directory}/logs/{name}-{pattern}.err",
        *(f"#SBATCH {option}" for option in options),
    ]
    script = directory / f"{name}.sh"
    script.write_text("\n".join([*header, "", body, ""]))
    return script


def test_a_job_completes_and_its_logs_hold_what_it_printed(scheduler, tmp_path):
    script = write_script(tmp_path, "hello", 'echo "hello $SLURM_JOB_ID"\necho oops >&2')
    job_id = scheduler.submit(SubmitCall(script))
    status = wait_for_state(scheduler, job_id)
    assert (status.state, status.exit_code) == (COMPLETED, 0)
    assert (tmp_path / f"logs/hello-{job_id}.out").read_text() == f"hello {job_id}\n"
    assert (tmp_path / f"logs/hello-{job_id}.err").read_text() == "oops\n"


def test_a_failing_job_is_failed_with_its_exit_code(scheduler, tmp_path):
    job_id = scheduler.submit(SubmitCall(write_script(tmp_path, "bad", "exit 3")))
    status = wait_for_state(scheduler, job_id)
    assert (status.state, status.exit_code, status.reason) == (FAILED, 3, "NonZeroExitCode")


def test_a_job_killed_by_a_signal_fails_with_128_plus_the_signal(scheduler, tmp_path):
    """The convention of the SLURM scheduler (milex_agent.scheduler.slurm.output): as a shell reports it."""
    job_id = scheduler.submit(SubmitCall(write_script(tmp_path, "selfkill", "kill -9 $$")))
    status = wait_for_state(scheduler, job_id)
    assert (status.state, status.exit_code) == (FAILED, 137)


def test_afterok_on_a_failing_job_is_cancelled_and_never_runs(scheduler, tmp_path):
    failing = scheduler.submit(SubmitCall(write_script(tmp_path, "bad", "exit 1")))
    child = scheduler.submit(
        SubmitCall(write_script(tmp_path, "child", f"touch {tmp_path}/ran"), after=[failing])
    )
    status = wait_for_state(scheduler, child)
    assert (status.state, status.reason) == (CANCELLED, "DependencyNeverSatisfied")
    assert not (tmp_path / "ran").exists()


def test_an_afterok_chain_runs_in_order(scheduler, tmp_path):
    order = tmp_path / "order"
    first = scheduler.submit(SubmitCall(write_script(tmp_path, "a", f"sleep 0.5; echo a >> {order}")))
    second = scheduler.submit(SubmitCall(write_script(tmp_path, "b", f"echo b >> {order}"), after=[first]))
    third = scheduler.submit(SubmitCall(write_script(tmp_path, "c", f"echo c >> {order}"), after=[second]))
    assert scheduler.states([second])[second].reason == "Dependency"
    assert wait_for_state(scheduler, third).state is COMPLETED
    assert order.read_text() == "a\nb\nc\n"


@pytest.mark.parametrize(
    ("kind", "parent_body", "runs"),
    [("afterany", "exit 1", True), ("afternotok", "exit 1", True), ("afternotok", "true", False)],
)
def test_other_dependency_types(scheduler, tmp_path, kind, parent_body, runs):
    parent = scheduler.submit(SubmitCall(write_script(tmp_path, "parent", parent_body)))
    child_script = write_script(tmp_path, "child", f"touch {tmp_path}/ran")
    child = scheduler.submit(SubmitCall(child_script, after=[parent], dependency_type=kind))
    assert wait_for_state(scheduler, child).state is (COMPLETED if runs else CANCELLED)
    assert (tmp_path / "ran").exists() is runs


def test_after_starts_once_the_dependency_runs(scheduler, tmp_path):
    parent = scheduler.submit(SubmitCall(write_script(tmp_path, "parent", "sleep 30")))
    child = scheduler.submit(
        SubmitCall(write_script(tmp_path, "child", "true"), after=[parent], dependency_type="after")
    )
    assert wait_for_state(scheduler, child).state is COMPLETED
    assert scheduler.states([parent])[parent].state is RUNNING


def test_an_array_runs_every_task_with_its_index(scheduler, tmp_path):
    body = 'echo "$SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID $SLURM_ARRAY_TASK_COUNT"'
    job_id = scheduler.submit(SubmitCall(write_script(tmp_path, "arr", body, "--array=1-3")))
    assert wait_for_state(scheduler, job_id).state is COMPLETED
    logs = sorted(path.name for path in (tmp_path / "logs").glob("arr-*.out"))
    assert logs == [f"arr-{job_id}_{index}.out" for index in (1, 2, 3)]
    for index in (1, 2, 3):
        text = (tmp_path / f"logs/arr-{job_id}_{index}.out").read_text()
        assert text == f"{job_id} {index} 3\n"


def test_an_array_fails_with_the_highest_exit_code(scheduler, tmp_path):
    body = 'exit "$SLURM_ARRAY_TASK_ID"'
    job_id = scheduler.submit(SubmitCall(write_script(tmp_path, "arr", body, "--array=0,2,5%2")))
    status = wait_for_state(scheduler, job_id)
    assert (status.state, status.exit_code) == (FAILED, 5)


def test_cancel_stops_a_running_job_and_its_pending_dependent(scheduler, tmp_path):
    body = f"echo $$ > {tmp_path}/pid; sleep 30; touch {tmp_path}/finished"
    running = scheduler.submit(SubmitCall(write_script(tmp_path, "long", body)))
    pending = scheduler.submit(
        SubmitCall(write_script(tmp_path, "next", f"touch {tmp_path}/ran"), after=[running])
    )
    wait_for_state(scheduler, running, RUNNING)
    wait_until((tmp_path / "pid").exists)
    scheduler.cancel([pending, running])
    states = scheduler.states([running, pending])
    assert [states[job].state for job in (running, pending)] == [CANCELLED, CANCELLED]
    script_pid = int((tmp_path / "pid").read_text())
    wait_until(lambda: not daemon.running(script_pid))
    wait_until(lambda: not runner_alive(scheduler.state_dir / running))
    final = scheduler.states([running])[running]
    assert (final.state, final.exit_code) == (CANCELLED, None)  # as SLURM's cancelled jobs: no exit code
    assert not (tmp_path / "ran").exists()


def test_a_job_cancelled_right_after_submission_never_starts(scheduler, tmp_path):
    job_id = scheduler.submit(SubmitCall(write_script(tmp_path, "early", f"touch {tmp_path}/ran")))
    scheduler.cancel([job_id])
    wait_until(lambda: not runner_alive(scheduler.state_dir / job_id))
    assert scheduler.states([job_id])[job_id].state is CANCELLED
    assert not (tmp_path / "ran").exists()


def test_cancelling_a_finished_job_changes_nothing(scheduler, tmp_path):
    job_id = scheduler.submit(SubmitCall(write_script(tmp_path, "quick", "true")))
    wait_for_state(scheduler, job_id)
    scheduler.cancel([job_id])
    assert scheduler.states([job_id])[job_id].state is COMPLETED


def test_the_job_outlives_the_process_that_submitted_it(scheduler, tmp_path):
    script = write_script(tmp_path, "orphan", "sleep 0.5; echo done")
    code = (
        "import sys; from pathlib import Path; "
        "from milex_agent.scheduler.base import SubmitCall; "
        "from milex_agent.scheduler.local.scheduler import LocalScheduler; "
        "print(LocalScheduler(Path(sys.argv[1])).submit(SubmitCall(Path(sys.argv[2]))))"
    )
    argv = [sys.executable, "-c", code, str(scheduler.state_dir), str(script)]
    submitted = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=DEADLINE)
    job_id = submitted.stdout.strip()
    assert scheduler.states([job_id])[job_id].state in (PENDING, RUNNING)
    assert wait_for_state(scheduler, job_id).state is COMPLETED
    assert (tmp_path / f"logs/orphan-{job_id}.out").read_text() == "done\n"


def test_a_runner_that_dies_leaves_its_job_failed(scheduler, tmp_path):
    job_id = scheduler.submit(SubmitCall(write_script(tmp_path, "doomed", "sleep 30")))
    wait_for_state(scheduler, job_id, RUNNING)
    pid = read_record(scheduler.state_dir / job_id).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    status = wait_for_state(scheduler, job_id, FAILED)
    assert status.reason == VANISHED
    os.killpg(pid, signal.SIGKILL)  # the orphaned `sleep`


def test_unknown_ids(scheduler, tmp_path):
    status = scheduler.states(["12345", "../etc"])
    assert {job: s.state for job, s in status.items()} == {
        "12345": JobState.UNKNOWN,
        "../etc": JobState.UNKNOWN,
    }
    with pytest.raises(SubmitError, match="12345"):
        scheduler.submit(SubmitCall(write_script(tmp_path, "orphan", "true"), after=["12345"]))
    with pytest.raises(SchedulerError, match="12345"):
        scheduler.cancel(["12345"])


# A state file as the previous release wrote it: flat, every field, and no job_id.
PREVIOUS_STATE = (
    b'{"state":"FAILED","exit_code":3,"reason":"NonZeroExitCode","pid":4242,"updated":1700000000.5}'
)


class PreviousRecord(msgspec.Struct, kw_only=True):
    """LocalJobRecord as the previous release had it, for its own copy of the job state."""

    state: JobState = JobState.PENDING
    exit_code: int | None = None
    reason: str = ""
    pid: int | None = None
    updated: float = 0.0


def test_a_state_file_of_the_previous_release_still_reads(tmp_path: Path) -> None:
    job_dir = tmp_path / "7"
    job_dir.mkdir()
    (job_dir / STATE_FILE).write_bytes(PREVIOUS_STATE)
    record = read_record(job_dir)
    assert (record.job_id, record.pid, record.updated) == ("7", 4242, 1700000000.5)
    expected = JobStatus(job_id="7", state=FAILED, exit_code=3, reason="NonZeroExitCode")
    assert read_status(tmp_path, "7") == expected


def test_the_previous_release_reads_the_state_files_written_now(tmp_path: Path) -> None:
    write_record(tmp_path, LocalJobRecord(job_id="7", state=RUNNING, pid=4242))
    previous = msgspec.json.decode((tmp_path / STATE_FILE).read_bytes(), type=PreviousRecord)
    assert (previous.state, previous.exit_code, previous.reason, previous.pid) == (RUNNING, None, "", 4242)


def test_submit_refuses_a_missing_script_and_a_bad_dependency_type(scheduler, tmp_path):
    with pytest.raises(SubmitError, match=r"missing\.sh"):
        scheduler.submit(SubmitCall(tmp_path / "missing.sh"))
    parent = scheduler.submit(SubmitCall(write_script(tmp_path, "parent", "true")))
    with pytest.raises(SubmitError, match="afterok"):
        scheduler.submit(
            SubmitCall(write_script(tmp_path, "child", "true"), after=[parent], dependency_type="afterwards")
        )
    with pytest.raises(SubmitError, match="--array"):
        scheduler.submit(SubmitCall(write_script(tmp_path, "arr", "true", "--array=3-1")))


def test_ids_are_unique_and_increasing_across_concurrent_submitters(scheduler, tmp_path):
    script = write_script(tmp_path, "many", "true")
    ids: list[list[int]] = [[] for _ in range(4)]

    def submit_three(slot: list[int]) -> None:
        slot.extend(int(scheduler.submit(SubmitCall(script))) for _ in range(3))

    threads = [threading.Thread(target=submit_three, args=(slot,)) for slot in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(job for slot in ids for job in slot) == list(range(1, 13))
    assert all(slot == sorted(slot) for slot in ids)
    for job_id in range(1, 13):
        assert wait_for_state(scheduler, str(job_id)).state is COMPLETED


def test_parse_header_reads_sbatch_options_up_to_the_first_command():
    text = (
        "#!/bin/bash\n#SBATCH --output=o-%j.out\n#SBATCH -e e.err\n\n# note\n"
        "#SBATCH --array 1-4\necho\n#SBATCH --job-name=late\n"
    )
    assert parse_header(text) == {"output": "o-%j.out", "error": "e.err", "array": "1-4"}


def test_expand_pattern(tmp_path):
    spec = LocalJobSpec(job_id="42", script="s.sh", submit_dir=str(tmp_path), job_name="fit")
    assert expand_pattern("x-%A_%a.out", spec, 7) == "x-42_7.out"
    assert expand_pattern("%x-%j-%3a-%%-%q.out", spec, 7) == "fit-42-007-%-%q.out"
    assert expand_pattern("%a", spec, None) == "4294967294"


@pytest.mark.parametrize(
    ("kind", "states", "verdict"),
    [
        ("afterok", [COMPLETED, RUNNING], None),
        ("afterok", [COMPLETED, COMPLETED], True),
        ("afterok", [FAILED, PENDING], False),
        ("afterany", [FAILED, CANCELLED], True),
        ("afternotok", [COMPLETED, COMPLETED], False),
        ("afternotok", [COMPLETED, FAILED], False),
        ("afternotok", [FAILED, CANCELLED], True),
        ("after", [RUNNING, COMPLETED], True),
        ("after", [PENDING, COMPLETED], None),
        ("afterok", [], True),
    ],
)
def test_dependency_verdict(kind, states, verdict):
    assert dependency_verdict(kind, states) is verdict
