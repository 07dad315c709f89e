"""`milex rerun`: which jobs a `--failed` rerun chooses, and a rerun interrupted then resumed submits
each job once. An agent stand-in that knows jobs by key, as the real one (e2e: tests/e2e/test_rerun.py)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

import milex.machine.submitter
from milex import api
from milex.records import SubmittedJobRecord, load_submissions
from milex.reruns import NothingToRerun, rerun, select_failed
from milex_common.errors import BundleError
from milex_common.model import Bundle, Job, JobState
from milex_common.protocol import StatusReply, TrackedJob


def job(name: str, *dependencies: str) -> Job:
    return Job(name=name, script="app", dependencies=list(dependencies))


def bundle(*jobs: Job) -> Bundle:
    return Bundle(name="pipe", created="20261207010203", jobs={job.name: job for job in jobs})


def ended(**states: str) -> dict[str, SubmittedJobRecord]:
    return {name: SubmittedJobRecord(job_id=str(i), state=JobState(state)) for i, (name, state) in
            enumerate(states.items())}  # fmt: skip


def test_failed_jobs_and_every_job_after_them_are_chosen_with_completed_dependencies_dropped() -> None:
    record = bundle(job("prep"), job("a", "prep"), job("b", "a"), job("c", "b", "prep"), job("side", "prep"))
    states = ended(prep="COMPLETED", a="FAILED", b="CANCELLED", c="CANCELLED", side="COMPLETED")

    chosen = select_failed(record, states)

    assert list(chosen.jobs) == ["a", "b", "c"]
    assert chosen.jobs["a"].dependencies == []  # prep completed: satisfied
    assert chosen.jobs["c"].dependencies == ["b"]
    assert chosen.stem == record.stem


@pytest.mark.parametrize("state", ["TIMEOUT", "OUT_OF_MEMORY", "CANCELLED", "NODE_FAIL", "PREEMPTED"])
def test_every_end_but_completed_is_rerun(state: str) -> None:
    chosen = select_failed(bundle(job("ok"), job("bad")), ended(ok="COMPLETED", bad=state))
    assert list(chosen.jobs) == ["bad"]


def test_a_job_no_run_has_is_rerun() -> None:
    """A job appended after the run, or one a refusal left unsubmitted, never ran."""
    chosen = select_failed(bundle(job("ok"), job("late", "ok")), ended(ok="COMPLETED"))
    assert list(chosen.jobs) == ["late"]
    assert chosen.jobs["late"].dependencies == []


def test_nothing_failed_is_nothing_to_rerun() -> None:
    with pytest.raises(NothingToRerun, match="every job of bundle pipe_20261207010203 completed"):
        select_failed(bundle(job("a"), job("b", "a")), ended(a="COMPLETED", b="COMPLETED"))


def test_a_chosen_job_still_running_is_refused_by_name() -> None:
    states = ended(a="FAILED", b="RUNNING")  # b: afterany, say, and running
    with pytest.raises(BundleError, match=r"cannot rerun what has not ended: b \(RUNNING\)"):
        select_failed(bundle(job("a"), job("b", "a")), states)


class KeyedAgent:
    """As the agent: a job whose key it has seen is not submitted again; its id is returned."""

    agent_host = "login1"

    def __init__(self) -> None:
        self.jobs: dict[str, TrackedJob] = {}
        self.submitted: list[str] = []  # keys, each time a job was really submitted
        self.interrupt_after_accepting = False
        self.ids = itertools.count(100)

    def submit(
        self,
        bundle: Bundle,
        settings: object,
        on_submitted: Callable[[TrackedJob], None],
        while_waiting: Callable[[], None] = lambda: None,
        run_id: str = "",
        on_progress: object = None,
        versions: object = None,
    ) -> list[TrackedJob]:
        from milex.records import job_key

        replies = []
        for name in bundle.jobs:
            key = job_key(bundle.stem, name, run_id)
            if key not in self.jobs:
                self.submitted.append(key)
                self.jobs[key] = TrackedJob(key=key, bundle=bundle.stem, name=name,
                                            job_id=str(next(self.ids)), state=JobState.PENDING)  # fmt: skip
            replies.append(self.jobs[key])
        if self.interrupt_after_accepting:
            self.interrupt_after_accepting = False
            raise KeyboardInterrupt  # the laptop's command stopped before it recorded the answer
        for reply in replies:
            on_submitted(reply)
        return replies

    def tracked(self, job_ids: object = (), bundle: str = "", usage: bool = False) -> StatusReply:
        return StatusReply(jobs=[job for job in self.jobs.values() if job.bundle == bundle])

    def end(self, name: str, state: JobState) -> None:
        for job in self.jobs.values():
            if job.name == name:
                job.state = state


@pytest.fixture
def agent(monkeypatch: pytest.MonkeyPatch, milex_config: object) -> KeyedAgent:
    keyed = KeyedAgent()
    monkeypatch.setattr(milex.machine.submitter, "submitter_for", lambda machine: keyed)
    return keyed


def names(keys: list[str]) -> list[str]:
    return [key.split("/")[1] for key in keys]


def test_rerun_failed_asks_the_agent_then_submits_what_failed_as_a_new_run(
    agent: KeyedAgent, milex_config
) -> None:
    first = api.submit([job("prep"), job("train", "prep"), job("report", "train")], bundle="pipe")
    agent.end("prep", JobState.COMPLETED)
    agent.end("train", JobState.FAILED)
    agent.end("report", JobState.CANCELLED)
    agent.submitted.clear()

    again = rerun("pipe", failed=True)

    assert names(agent.submitted) == ["train", "report"]
    assert again.rerun_of == first.run_id and again.run_id != first.run_id
    assert not again.pending
    runs = load_submissions(milex_config.jobs_dir, first.bundle)
    assert [run.run_id for run in runs] == [first.run_id, again.run_id]
    assert runs[0].jobs["train"].state is JobState.FAILED  # the states the rerun asked the agent for

    agent.end("train", JobState.COMPLETED)  # the rerun's own jobs, newer, count next
    agent.end("report", JobState.COMPLETED)
    with pytest.raises(NothingToRerun):
        rerun("pipe", failed=True)


def test_a_rerun_interrupted_after_the_agent_accepted_is_resumed_with_each_job_once(
    agent: KeyedAgent, milex_config
) -> None:
    first = api.submit([job("a"), job("b", "a")], bundle="pipe")
    agent.end("a", JobState.FAILED)
    agent.end("b", JobState.CANCELLED)
    agent.submitted.clear()
    agent.interrupt_after_accepting = True

    with pytest.raises(KeyboardInterrupt):
        rerun("pipe", failed=True)
    [_, interrupted] = load_submissions(milex_config.jobs_dir, first.bundle)
    assert interrupted.pending and set(interrupted.jobs) == {"a", "b"}

    resumed = rerun("pipe", failed=True)

    assert resumed.run_id == interrupted.run_id
    assert names(agent.submitted) == ["a", "b"]  # once each, though sent twice
    assert {name: record.job_id for name, record in resumed.jobs.items()} == {"a": "102", "b": "103"}
    [_, recorded] = load_submissions(milex_config.jobs_dir, first.bundle)
    assert not recorded.pending and recorded.jobs["b"].job_id == "103"


def test_a_whole_rerun_submits_every_job_again_on_the_runs_machine(agent: KeyedAgent, milex_config) -> None:
    first = api.submit([job("a"), job("b", "a")], bundle="pipe")
    agent.submitted.clear()

    again = rerun(first.bundle)

    assert names(agent.submitted) == ["a", "b"]
    assert again.machine == first.machine and again.rerun_of == first.run_id


def test_a_named_run_that_does_not_exist_is_refused_with_the_runs_there_are(
    agent: KeyedAgent, milex_config
) -> None:
    first = api.submit([job("a")], bundle="pipe")
    with pytest.raises(BundleError, match=f"has no run 'nope' \\(its runs: {first.run_id}\\)"):
        rerun("pipe", run="nope")


def test_a_bundle_never_run_is_refused(agent: KeyedAgent, milex_config, tmp_path: Path) -> None:
    api.schedule("app", bundle="fresh", script_args={})
    with pytest.raises(BundleError, match="has no run to rerun; `milex-run` runs it"):
        rerun("fresh")
    assert agent.submitted == []


def test_an_array_that_failed_in_part_is_narrowed_to_the_tasks_that_did_not_complete() -> None:
    from milex_common.model import SlurmOptions, TaskStatus

    fan = Job(name="fan", script="app", slurm=SlurmOptions(array="0-9%4"))
    record = Bundle(name="pipe", created="20261207010203", jobs={"fan": fan, "sum": job("sum", "fan")})
    tasks = [TaskStatus(index=i, state=JobState.COMPLETED, exit_code=0) for i in range(10)]
    tasks[3] = TaskStatus(index=3, state=JobState.FAILED, exit_code=2)
    tasks[4] = TaskStatus(index=4, state=JobState.TIMEOUT)
    tasks[7] = TaskStatus(index=7, state=JobState.FAILED, exit_code=2)
    states = {"fan": SubmittedJobRecord(job_id="5", state=JobState.FAILED, exit_code=2, tasks=tasks),
              "sum": SubmittedJobRecord(job_id="6", state=JobState.CANCELLED)}  # fmt: skip

    chosen = select_failed(record, states)

    assert chosen.jobs["fan"].slurm.array == "3-4,7%4"
    assert chosen.jobs["sum"].dependencies == ["fan"]  # after the narrowed array, whole
    assert record.jobs["fan"].slurm.array == "0-9%4"  # the record itself is left as it was


def test_an_array_whose_tasks_are_not_known_is_rerun_whole() -> None:
    from milex_common.model import SlurmOptions

    fan = Job(name="fan", script="app", slurm=SlurmOptions(array="1-5"))
    chosen = select_failed(Bundle(name="pipe", created="20261207010203", jobs={"fan": fan}),
                           {"fan": SubmittedJobRecord(job_id="5", state=JobState.FAILED)})  # fmt: skip
    assert chosen.jobs["fan"].slurm.array == "1-5"


def test_an_interrupted_rerun_of_an_array_narrowed_to_its_failed_tasks_is_resumed_narrowed(
    agent: KeyedAgent, milex_config
) -> None:
    from milex_common.model import SlurmOptions, TaskStatus

    sent: list[Bundle] = []
    submit = agent.submit

    def noting(bundle: Bundle, *args: object, **options: object) -> list[TrackedJob]:
        sent.append(bundle)
        return submit(bundle, *args, **options)  # type: ignore[arg-type]

    agent.submit = noting  # type: ignore[method-assign]
    first = api.submit(Job(name="fan", script="app", slurm=SlurmOptions(array="0-3")), bundle="pipe")
    [fan] = agent.jobs.values()
    fan.state, fan.tasks = (
        JobState.FAILED,
        [TaskStatus(index=i, state=JobState.FAILED if i == 2 else JobState.COMPLETED) for i in range(4)],
    )
    agent.interrupt_after_accepting = True
    with pytest.raises(KeyboardInterrupt):
        rerun("pipe", failed=True)

    resumed = rerun("pipe", failed=True)

    assert [bundle.jobs["fan"].slurm.array for bundle in sent] == ["0-3", "2", "2"]
    assert resumed.arrays == {"fan": "2"} and resumed.rerun_of == first.run_id
