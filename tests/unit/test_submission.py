"""BundleSubmission with several scheduler calls in flight: order, batching, and where it stops."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import pytest

from milex_agent.scheduler.base import SubmitCall
from milex_agent.submission import BundleSubmission, NoLedger, SubmittedJob, run_inline, submit_bundle
from milex_common.errors import SchedulerError, SubmitError
from milex_common.model import Bundle, Job, MachineSettings, SlurmOptions
from tests.unit.agent_fakes import CREATED, FakeScheduler, chain_bundle, wait_until

IN_FLIGHT = 3


class GatedScheduler:
    """A FakeScheduler whose submit calls wait at a gate: a test sees which calls are in flight together,
    and lets them through one by one (`let`) or all (`open`)."""

    name = "gated"
    parallel_submissions = IN_FLIGHT

    def __init__(self) -> None:
        self.fake = FakeScheduler()
        self.permits = threading.Semaphore(0)
        self.lock = threading.Lock()
        self.waiting = 0
        self.most_at_once = 0

    def let(self, calls: int) -> None:
        self.permits.release(calls)

    def open(self) -> None:
        self.permits.release(10_000)

    def start_submit(self, call: SubmitCall) -> Callable[[], str]:
        return functools.partial(self.submit, call)

    def submit(self, call: SubmitCall) -> str:
        with self.lock:
            self.waiting += 1
            self.most_at_once = max(self.most_at_once, self.waiting)
        assert self.permits.acquire(timeout=5), "the test never let the call through"
        with self.lock:
            self.waiting -= 1
            return self.fake.submit(call)


class CountingLedger(NoLedger):
    """A ledger that submits everything and remembers how it was called."""

    def __init__(self) -> None:
        self.begun: list[list[str]] = []
        self.accepted_batches: list[list[str]] = []
        self.refused_jobs: list[str] = []

    def known(self, job: Job) -> str | None:
        return None

    def begin(self, planned: Sequence[tuple[Job, SubmittedJob]]) -> list[str]:
        self.begun.append([job.name for job, _ in planned])
        return [f"c-{job.name}" for job, _ in planned]

    def accepted(self, submitted: Sequence[tuple[Job, SubmittedJob]]) -> None:
        self.accepted_batches.append([job.name for job, _ in submitted])

    @property
    def accepted_jobs(self) -> list[str]:
        return sorted(name for batch in self.accepted_batches for name in batch)

    def refused(self, job: Job, message: str) -> None:
        self.refused_jobs.append(job.name)


@pytest.fixture
def workers() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        yield pool


@pytest.fixture
def settings(tmp_path: Path) -> MachineSettings:
    return MachineSettings(name="cluster", path=str(tmp_path / "milex"))


def independent(count: int) -> Bundle:
    jobs = {f"j{i}": Job(name=f"j{i}", script="app") for i in range(count)}
    return Bundle(name="wide", created=CREATED, jobs=jobs)


def wait_for_calls(scheduler: GatedScheduler, count: int) -> None:
    wait_until(lambda: scheduler.waiting == count, deadline=5.0)


def first_accepted(submission: BundleSubmission, scheduler: GatedScheduler) -> None:
    """Start the submission and let its first job, which goes alone, be accepted."""
    assert not submission.step()
    wait_for_calls(scheduler, 1)
    assert len(submission.running) == 1  # the first of its kind: nothing goes beside it
    scheduler.let(1)
    wait(list(submission.running))


def test_independent_jobs_go_a_few_at_a_time_each_once(workers, settings):
    scheduler, ledger = GatedScheduler(), CountingLedger()
    submission = BundleSubmission(
        independent(8), settings, scheduler, ledger, dispatch=workers.submit, in_flight=IN_FLIGHT
    )
    first_accepted(submission, scheduler)
    assert not submission.step()
    wait_for_calls(scheduler, IN_FLIGHT)
    assert ledger.begun == [["j0"], ["j1", "j2", "j3"]]  # one journal transaction for the three
    scheduler.open()
    jobs = submission.run()
    assert [job.name for job in jobs] == [f"j{i}" for i in range(8)]
    assert sorted(name for name, _ in scheduler.fake.submitted) == sorted(f"j{i}" for i in range(8))
    assert scheduler.most_at_once == IN_FLIGHT
    assert ledger.accepted_jobs == sorted(f"j{i}" for i in range(8))


def test_a_job_starts_only_once_its_dependencies_have_ids(workers, settings):
    bundle = chain_bundle("mixed", "a", "b", "c")
    bundle.jobs["c"].dependencies = []  # a <- b; c on its own
    scheduler = GatedScheduler()
    bundle.jobs["c"].slurm = bundle.jobs["a"].slurm  # of a's kind, so it may go beside a
    submission = BundleSubmission(bundle, settings, scheduler, dispatch=workers.submit, in_flight=IN_FLIGHT)
    first_accepted(submission, scheduler)  # a
    submission.step()
    wait_for_calls(scheduler, 2)
    assert sorted(job.name for job, _ in submission.running.values()) == ["b", "c"]  # b waited for a's id
    scheduler.open()
    jobs = {job.name: job for job in submission.run()}
    [b_call] = [call for call in scheduler.fake.calls if call.job == "b"]
    assert b_call.asked.after == [jobs["a"].job_id]


def test_a_refusal_stops_new_jobs_and_records_those_in_flight(workers, settings):
    scheduler, ledger = GatedScheduler(), CountingLedger()
    scheduler.fake.refuse["j1"] = "sbatch: error: invalid partition"
    submission = BundleSubmission(
        independent(6), settings, scheduler, ledger, dispatch=workers.submit, in_flight=IN_FLIGHT
    )
    first_accepted(submission, scheduler)
    submission.step()
    wait_for_calls(scheduler, IN_FLIGHT)
    scheduler.open()
    wait(list(submission.running))
    assert submission.step()  # all three answered: nothing more starts
    assert ledger.refused_jobs == ["j1"]
    assert ledger.accepted_jobs == ["j0", "j2", "j3"]
    with pytest.raises(SubmitError) as refusal:
        submission.result()
    message = str(refusal.value)
    assert "job 'j1' of bundle 'wide_20240101000000' was not submitted: sbatch: error: invalid" in message
    assert "Not submitted: j4, j5." in message
    assert "j0 (job " in message and "j2 (job " in message


def test_the_first_job_of_a_kind_goes_alone_and_its_refusal_sends_nothing_after_it(workers, settings):
    scheduler, ledger = GatedScheduler(), CountingLedger()
    bundle = independent(6)
    for name in ("j2", "j4"):
        bundle.jobs[name].slurm = SlurmOptions(extra={"account": "biology"})
    scheduler.fake.refuse["j2"] = "sbatch: error: Invalid account or account/partition combination specified"
    submission = BundleSubmission(
        bundle, settings, scheduler, ledger, dispatch=workers.submit, in_flight=IN_FLIGHT
    )
    first_accepted(submission, scheduler)  # j0
    submission.step()
    wait_for_calls(scheduler, 1)
    assert [job.name for job, _ in submission.running.values()] == ["j1"]  # j2's kind is new: it waits
    scheduler.open()
    with pytest.raises(SubmitError, match="Invalid account") as refusal:
        submission.run()
    assert [call.job for call in scheduler.fake.calls] == ["j0", "j1", "j2"]
    assert ledger.refused_jobs == ["j2"] and ledger.accepted_jobs == ["j0", "j1"]
    assert "Not submitted: j3, j4, j5." in str(refusal.value)


def test_stop_lets_the_calls_in_flight_finish_and_starts_nothing_more(workers, settings):
    scheduler = GatedScheduler()
    submission = BundleSubmission(
        independent(5), settings, scheduler, dispatch=workers.submit, in_flight=IN_FLIGHT
    )
    first_accepted(submission, scheduler)
    submission.step()
    wait_for_calls(scheduler, IN_FLIGHT)
    submission.stop("the agent is stopping")
    scheduler.open()
    with pytest.raises(SubmitError, match="the agent is stopping"):
        submission.run()
    assert len(submission.submitted) == 1 + IN_FLIGHT
    assert len(scheduler.fake.calls) == 1 + IN_FLIGHT


def test_inline_dispatch_submits_a_chain_in_order(settings):
    fake = FakeScheduler()
    jobs = submit_bundle(chain_bundle("exp", "a", "b", "c"), settings, fake)
    assert [(job.name, job.job_id) for job in jobs] == [("a", "1000"), ("b", "1001"), ("c", "1002")]
    assert [call.asked.after for call in fake.calls] == [[], ["1000"], ["1001"]]
    assert run_inline(lambda: "7").result() == "7"


def test_the_scheduler_gets_the_script_text_and_a_copy_is_kept_in_place(settings):
    fake = FakeScheduler()
    bundle = chain_bundle("exp", "a")
    [job] = submit_bundle(bundle, settings, fake)
    script = Path(job.script)
    assert script.parent == Path(settings.path) / "slurm"
    assert script.read_text() == fake.calls[0].asked.text
    assert script.read_text().startswith("#!") and script.stat().st_mode & 0o777 == 0o755
    script.chmod(0o600)
    script.write_text("stale and longer than the script " * 100)
    submit_bundle(bundle, settings, fake)
    assert script.read_text().startswith("#!") and script.stat().st_mode & 0o777 == 0o755


def test_a_script_that_cannot_be_kept_stops_the_bundle_after_recording_its_job(settings, tmp_path):
    blocked = tmp_path / "milex"
    blocked.mkdir()
    (blocked / "slurm").write_text("a file where the scripts' directory should be")
    fake, ledger = FakeScheduler(), CountingLedger()
    submission = BundleSubmission(chain_bundle("exp", "a", "b"), settings, fake, ledger)
    with pytest.raises(SubmitError, match="job 'a' was submitted, but its script could not be kept at"):
        submission.run()
    assert [call.job for call in fake.calls] == ["a"] and ledger.accepted_jobs == ["a"]


def test_a_call_that_cannot_start_stops_the_bundle_with_its_error(workers, settings):
    """sbatch is started on the submission's thread: a start that fails (no sbatch on PATH) ends the
    bundle as a call that failed on a worker would, the job left in doubt, nothing after it sent."""

    class CannotStart(FakeScheduler):
        def start_submit(self, asked: SubmitCall) -> Callable[[], str]:
            if asked.script.stem.endswith("b"):
                raise SchedulerError("'sbatch' is not installed or not on PATH")
            return super().start_submit(asked)

    fake, ledger = CannotStart(), CountingLedger()
    bundle = chain_bundle("exp", "a", "b", "c")
    submission = BundleSubmission(bundle, settings, fake, ledger, dispatch=workers.submit)
    with pytest.raises(SchedulerError, match="not on PATH"):
        submission.run()
    assert [call.job for call in fake.calls] == ["a"] and ledger.accepted_jobs == ["a"]
    assert ledger.begun == [["a"], ["b"]]


def test_the_next_jobs_of_a_chain_are_made_while_a_call_is_out_and_submitted_as_made(workers, settings):
    """While `a` is out, `b` (which waits only for it) has its files and script made already; each job
    is still submitted with its own script, kept at its own place."""
    from milex_common.render import render_script, script_stem

    bundle = chain_bundle("exp", "a", "b", "c")
    scheduler = GatedScheduler()
    submission = BundleSubmission(bundle, settings, scheduler, dispatch=workers.submit, in_flight=1)
    submission.step()
    wait_for_calls(scheduler, 1)
    assert set(submission._ahead) == {"b"}
    scheduler.open()
    jobs = submission.run()
    for job, call in zip(jobs, scheduler.fake.calls, strict=True):
        made = render_script(bundle.jobs[job.name], settings, script_stem(bundle.stem, job.name))
        assert call.asked.text == made == Path(job.script).read_text()
        assert job.script.endswith(f"{script_stem(bundle.stem, job.name)}.sh")
    assert submission._ahead == {}
