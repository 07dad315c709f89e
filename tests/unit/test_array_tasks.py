"""An array's tasks one by one: decoded from SLURM's captured rows (22.05 and 24.11), mapped back
from windows, kept in the journal (an old journal migrated) with an event per task change."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from milex_agent import array_tasks
from milex_agent.array_windows import tasks_of_windows, window_name
from milex_agent.journal import SCHEMA_VERSION, Journal
from milex_agent.scheduler.slurm.history import JobCompLog
from milex_agent.scheduler.slurm.output import combine, sacct_rows, squeue_rows, statuses
from milex_agent.scheduler.slurm.poll import SqueuePoll
from milex_common.model import JobState, JobStatus, TaskStatus
from milex_common.protocol import Event, TrackedJob, watched

CAPTURED = Path(__file__).parent / "slurm_captured" / "tasks"
JOURNALS = Path(__file__).parent / "journals"
PENDING, RUNNING, COMPLETED, FAILED = JobState.PENDING, JobState.RUNNING, JobState.COMPLETED, JobState.FAILED
CANCELLED, SUBMITTED = JobState.CANCELLED, JobState.SUBMITTED


def task(index: int, state: JobState, exit_code: int | None = None, reason: str = "") -> TaskStatus:
    return TaskStatus(index=index, state=state, exit_code=exit_code, reason=reason)


def states(status: JobStatus) -> dict[int, tuple[JobState, int | None]]:
    return {t.index: (t.state, t.exit_code) for t in status.tasks}


def polled(version: str, name: str, array: str = "") -> JobStatus:
    """The status of the captured array (by default the one of ids.txt) from one captured squeue output."""
    array = array or (CAPTURED / version / "ids.txt").read_text().split()[1]
    return statuses([array], squeue_rows((CAPTURED / version / name).read_text()))[array]


# ---- SLURM's rows, task by task ------------------------------------------------------------------


@pytest.mark.parametrize("version", ["2205acct", "2411"])
def test_squeue_rows_of_an_array_give_each_task_by_index_and_the_array_its_combined_state(version):
    active = polled(version, "squeue_active.txt")
    assert active.state is RUNNING  # the array's own state: its tasks together, as before
    assert [t.index for t in active.tasks] == list(range(10))
    # Tasks not started yet print the array's own id: each is pending under its own index.
    assert {t.index for t in active.tasks if t.state is PENDING} >= {7, 8, 9}
    assert all(t.reason == "JobArrayTaskLimit" for t in active.tasks if t.state is PENDING)
    assert all(t.exit_code is None for t in active.tasks if t.state in (PENDING, RUNNING))


def test_squeue_rows_of_a_finished_array_give_each_task_its_exit_code():  # 24.11's `code:signal`
    finished = polled("2411", "squeue_finished.txt")
    assert (finished.state, finished.exit_code) == (FAILED, 2)
    assert states(finished) == {i: (FAILED, 2) if i in (3, 7) else (COMPLETED, 0) for i in range(10)}
    assert finished.failed_tasks() == [3, 7]


def test_a_22_05_wait_status_is_a_task_exit_code_and_its_cancelled_pending_tasks_have_no_index():
    # Captured while another test's scancel ended the array: 22.05 printed its tasks not started
    # as one row of the array's own id, ArrayTaskID N/A.
    cancelled = polled("2205acct", "squeue_cancelled.txt", array="1306")
    assert cancelled.state is FAILED
    assert states(cancelled) == {0: (COMPLETED, 0), 1: (COMPLETED, 0), 2: (COMPLETED, 0), 3: (FAILED, 2),
                                 4: (CANCELLED, None), 5: (CANCELLED, None)}  # fmt: skip
    # The journal knew 6-9 pending: they were cancelled with the array.
    known = [task(i, PENDING, reason="JobArrayTaskLimit") for i in range(6, 10)]
    merged = array_tasks.polled(known, cancelled)
    assert {t.index: t.state for t in merged.tasks if t.index >= 6} == dict.fromkeys(range(6, 10), CANCELLED)
    assert merged.state is FAILED


@pytest.mark.parametrize("version", ["2205acct", "2411"])
def test_a_row_of_tasks_not_started_counts_pending_for_each_of_its_indices(version):
    squeue = polled(version, "squeue_active_no_array.txt")  # `14|14|PENDING|...|6-9%3|` without --array
    assert states(squeue) == states(polled(version, "squeue_active.txt"))
    array = (CAPTURED / version / "ids.txt").read_text().split()[1]
    sacct = combine(array, sacct_rows((CAPTURED / version / "sacct_active.txt").read_text()))
    pending = [t.index for t in sacct.tasks if t.state is PENDING]  # `14_[7-9%3]`
    assert pending and pending == list(range(pending[0], 10))
    assert [t.index for t in sacct.tasks if t.state is not PENDING] == list(
        range(pending[0])
    ) or version == "2205acct"


def test_sacct_gives_an_array_forgotten_by_squeue_its_tasks():
    sacct = combine("14", sacct_rows((CAPTURED / "2411" / "sacct_finished.txt").read_text()))
    assert states(sacct) == states(polled("2411", "squeue_finished.txt"))


def test_the_24_11_state_poll_asks_every_field_again_when_a_task_changes_under_a_steady_array(monkeypatch):
    calls: list[list[str]] = []
    outputs = {"state": (CAPTURED / "2411" / "squeue_only_job_state.txt").read_text(),
               "full": (CAPTURED / "2411" / "squeue_active.txt").read_text()}  # fmt: skip

    class Result:
        def __init__(self, stdout: str) -> None:
            self.stdout, self.stderr, self.returncode, self.unanswered, self.message = (
                stdout,
                "",
                0,
                False,
                "",
            )

    def run(argv: list[str]) -> Result:
        calls.append(argv)
        return Result(outputs["state" if "--only-job-state" in argv else "full"])

    monkeypatch.setattr("milex_agent.scheduler.slurm.poll.run_command", run)
    poll = SqueuePoll()
    poll.state_only = True
    poll.known = {"14": polled("2411", "squeue_active.txt")}  # RUNNING, as the state poll says
    found = poll.states(["14"])
    assert len(calls) == 2  # task 6 started: its every field asked, although the array still runs
    assert found["14"].state is RUNNING
    calls.clear()
    poll.known = {"14": polled("2411", "squeue_active.txt")}
    outputs["state"] = outputs["full"]
    poll.states(["14"])
    assert len(calls) == 1  # nothing changed: the state poll alone


# ---- windows -------------------------------------------------------------------------------------


def test_the_tasks_of_windows_are_shifted_back_to_the_indices_the_user_asked_for():
    windows = [
        (window_name("b/scan/r", 5), [task(0, RUNNING), task(4, FAILED, 2)]),
        (window_name("b/scan/r", 0), [task(3, COMPLETED, 0)]),
    ]
    assert tasks_of_windows(windows) == [task(3, COMPLETED, 0), task(5, RUNNING), task(9, FAILED, 2)]


# ---- the journal ---------------------------------------------------------------------------------


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal(tmp_path / "agent" / "journal.sqlite")
    yield journal
    journal.close()


def submit(journal: Journal, key: str, job_id: str) -> None:
    job = TrackedJob(
        key=key, bundle="b_20240101000000", name=key.split("/")[1], job_id="", state=JobState.SUBMITTED
    )
    journal.begin(job, scheduler="slurm", machine_path="/m")
    journal.submitted(key, job_id)


def array(job_id: str, state: JobState, *tasks: TaskStatus, exit_code: int | None = None) -> JobStatus:
    return JobStatus(job_id=job_id, state=state, exit_code=exit_code, tasks=list(tasks))


def test_each_task_change_is_an_event_carrying_that_task_then_the_array_its_own(journal):
    submit(journal, "b/fan/r", "7")
    first = journal.update([("b/fan/r", array("7", PENDING, task(0, PENDING), task(1, PENDING)))])
    assert [(e.state, e.tasks) for e in first] == [
        (SUBMITTED, [task(0, PENDING)]),  # the array's status as it stood
        (SUBMITTED, [task(1, PENDING)]),
        (PENDING, []),  # the array's own change, after its tasks'
    ]
    # A new reason alone makes no event; one task's change makes one.
    steady = journal.update(
        [("b/fan/r", array("7", PENDING, task(0, PENDING, reason="Priority"), task(1, PENDING)))]
    )
    assert steady == []
    started = journal.update([("b/fan/r", array("7", RUNNING, task(0, RUNNING), task(1, PENDING)))])
    assert [(e.state, e.tasks) for e in started] == [(PENDING, [task(0, RUNNING)]), (RUNNING, [])]
    # squeue forgets task 0 (MinJobAge) after it failed; task 1 ends last: the array failed.
    journal.update([("b/fan/r", array("7", RUNNING, task(0, FAILED, 3), task(1, RUNNING)))])
    ended = journal.update([("b/fan/r", array("7", COMPLETED, task(1, COMPLETED, 0), exit_code=0))])
    assert [(e.state, e.exit_code, e.tasks) for e in ended] == [
        (RUNNING, None, [task(1, COMPLETED, 0)]),
        (FAILED, 3, []),
    ]
    # A client that stops at the array's end (wait) has taken every task by then.
    seen = JobStatus(job_id="7", state=JobState.SUBMITTED)
    for event in journal.events_since(0):
        if seen.state.finished:
            break
        seen.take(event)
    assert seen.tasks == [task(0, FAILED, 3), task(1, COMPLETED, 0)]
    [job] = journal.jobs()
    assert (job.state, job.exit_code, job.tasks) == (FAILED, 3, [task(0, FAILED, 3), task(1, COMPLETED, 0)])
    assert job.failed_tasks() == [0]
    # A watch that did not ask for tasks (an older client) sees the array's own events alone.
    replay = journal.events_since(0)
    assert [e.state for e in watched(replay, tasks=False)] == [SUBMITTED, PENDING, RUNNING, FAILED]
    assert len(watched(replay, tasks=True)) == len(replay) == 4 + 6


def test_a_job_that_is_no_array_keeps_no_tasks(journal):
    submit(journal, "b/one/r", "8")
    journal.update([("b/one/r", JobStatus(job_id="8", state=COMPLETED, exit_code=0))])
    assert journal.db.execute("SELECT task_states FROM jobs").fetchone()[0] is None
    assert all(not e.tasks for e in journal.events_since(0))


def test_tasks_are_written_only_when_one_changed(journal):
    submit(journal, "b/fan/r", "7")
    journal.update([("b/fan/r", array("7", RUNNING, task(0, RUNNING)))])
    before = journal.db.total_changes
    journal.update([("b/fan/r", array("7", RUNNING, task(0, RUNNING)))])
    assert journal.db.total_changes == before


def test_an_array_cut_in_windows_has_its_tasks_by_the_users_indices(journal):
    job = TrackedJob(key="b/scan/r", bundle="b_20240101000000", name="scan", job_id="", state=JobState.QUEUED)
    journal.enqueue("b_20240101000000", b"{}", [(job, 10)], scheduler="slurm", machine_path="/m")
    journal.split("b/scan/r", 5, [(window_name("b/scan/r", 0), 5), (window_name("b/scan/r", 5), 5)])
    journal.submitted_many([(window_name("b/scan/r", 0), "20"), (window_name("b/scan/r", 5), "21")])
    events = journal.update([
        (window_name("b/scan/r", 0), array("20", COMPLETED, *(task(i, COMPLETED, 0) for i in range(5)),
                                           exit_code=0)),
        (window_name("b/scan/r", 5), array("21", RUNNING, task(0, RUNNING), task(1, FAILED, 2),
                                           *(task(i, PENDING) for i in (2, 3, 4)))),
    ])  # fmt: skip
    shown = [e.tasks[0].index for e in events if e.tasks]
    assert shown == list(range(10)) and all(e.key == "b/scan/r" for e in events)
    [scan] = journal.jobs(bundle="b")
    assert (scan.job_id, scan.state) == ("20", RUNNING)
    assert [(t.index, t.state) for t in scan.tasks][5:7] == [(5, RUNNING), (6, FAILED)]


def test_a_journal_of_an_earlier_release_migrates_and_its_windowed_array_gets_tasks(tmp_path):
    path = tmp_path / "agent" / "journal.sqlite"
    path.parent.mkdir()
    db = sqlite3.connect(path)
    db.executescript((JOURNALS / "release-690690e.sql").read_text())
    db.close()
    journal = Journal(path)
    try:
        assert journal.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        old_events = journal.events_since(0)
        assert old_events and all(not e.tasks for e in old_events)  # every old event kept, none a task's
        [scan] = [job for job in journal.jobs() if job.name == "scan"]
        assert scan.tasks == []
        size, windows = journal.windows(scan.key)
        assert size == 5 and len(windows) == 2
        second = next(w for w in windows if w.key.endswith("~5"))
        events = journal.update(
            [(second.key, array(second.job_id, RUNNING, task(0, RUNNING), task(4, PENDING)))]
        )
        assert {e.tasks[0].index for e in events if e.tasks} == {5, 9}
        assert [t.index for t in journal.find(scan.key).tasks] == [5, 9]  # type: ignore[union-attr]
    finally:
        journal.close()


def test_an_event_of_a_task_decodes_on_the_wire_as_it_was_sent():
    event = Event(seq=3, key="k", bundle="b", name="n", job_id="7", state=RUNNING, tasks=[task(4, FAILED, 2)])
    wire = msgspec.msgpack.encode(event)
    assert msgspec.msgpack.decode(wire, type=Event) == event
    assert b"index" not in wire  # a task travels as a short array


def test_the_job_completion_log_gives_a_forgotten_array_its_tasks(tmp_path):
    log = tmp_path / "jobcomp.log"
    shutil.copy(Path(__file__).parent / "slurm_captured" / "2205" / "jobcomp.log", log)
    found = JobCompLog(log, uid=0).states(["189"])["189"]  # the 22.05 capture's array (its jobs ran as root)
    assert (found.state, found.exit_code) == (FAILED, 137)
    assert states(found) == {0: (COMPLETED, 0), 1: (FAILED, 5), 2: (FAILED, 137), 3: (CANCELLED, None)}


# ---- the wire: who gets task events ------------------------------------------------------------


def test_a_watch_gets_task_events_only_when_it_asks_and_the_agent_says_it_has_them(agent, fake, settings):
    from milex_agent.handlers import handle
    from milex_common.protocol import TASK_EVENTS, Events, Hello, HelloReply, Watch
    from tests.unit.agent_fakes import PEER, chain_bundle, submit_request, submitted

    hello = handle(agent, PEER, Hello(id="h"))
    assert isinstance(hello, HelloReply) and TASK_EVENTS in hello.features
    submitted(agent, submit_request(chain_bundle(), settings))
    job = agent.journal.jobs()[0]
    since = agent.journal.last_seq
    agent.journal.update([(job.key, array(job.job_id, RUNNING, task(0, RUNNING), task(1, PENDING)))])
    plain = handle(agent, PEER, Watch(id="w1", since=since))
    with_tasks = handle(agent, PEER, Watch(id="w2", since=since, tasks=True))
    assert isinstance(plain, Events) and isinstance(with_tasks, Events)
    assert [e.tasks for e in plain.events] == [[]]  # the array's own change alone
    assert [e.tasks for e in with_tasks.events] == [[task(0, RUNNING)], [task(1, PENDING)], []]
    assert plain.last_seq == with_tasks.last_seq  # both resume from the same point
    assert (agent.watches[(PEER, "w1")].tasks, agent.watches[(PEER, "w2")].tasks) == (False, True)


def test_the_agent_pushes_task_events_to_the_watches_that_asked_alone(running):
    from milex_common.protocol import Events, Watch
    from tests.unit.served import DEADLINE

    def watching(tasks: bool) -> Iterator[object]:
        stream = running.connect().stream(Watch(since=0, heartbeat=1.0, tasks=tasks), idle_timeout=DEADLINE,
                                          expect=Events)  # fmt: skip
        next(stream)
        return stream

    plain, with_tasks = watching(False), watching(True)
    running.submit(running.connect(), "a")
    running.fake.jobs["1000"] = array("1000", RUNNING, task(0, RUNNING), task(1, COMPLETED, 0))

    def until_running(stream: Iterator[object]) -> list[Event]:
        seen: list[Event] = []
        while not any(e.state is RUNNING and not e.tasks for e in seen):
            reply = next(stream)
            assert isinstance(reply, Events)
            seen += reply.events
        return seen

    seen = until_running(plain)  # SUBMITTED, (PENDING,) RUNNING: the array's own events alone
    assert seen[0].state is JobState.SUBMITTED and all(not e.tasks for e in seen)
    tasks = [e.tasks for e in until_running(with_tasks) if e.tasks]
    assert tasks == [[task(0, RUNNING)], [task(1, COMPLETED, 0)]]
