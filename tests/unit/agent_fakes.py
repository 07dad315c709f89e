"""Test doubles and builders for the agent's unit tests: an in-memory scheduler, bundles, an Agent."""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from milex_agent.controller import ControllerWatch
from milex_agent.journal import Journal
from milex_agent.poller import Poller
from milex_agent.scheduler.base import Limits, SubmitCall
from milex_agent.state import Agent
from milex_common.errors import DependencyRefused, LimitReached, SchedulerUnavailable, SubmitError
from milex_common.model import Bundle, Job, JobState, JobStatus, MachineSettings, SlurmOptions
from milex_common.protocol import Reply, Request, SubmitBundle, Submitted
from milex_common.usage import Usage

CREATED = "20240101000000"
PEER = b"peer-1"
NO_ANSWER = "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation"


def wait_until(condition: Callable[[], object], deadline: float = 3.0) -> None:
    """Poll `condition` until it holds; AssertionError after `deadline` seconds."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {deadline} s")
        time.sleep(0.01)


class SchedulerCrash(BaseException):
    """The agent "died" in the middle of a submission (raised by FakeScheduler where told to): a
    BaseException, so that nothing meant to survive an ordinary error catches it."""


@dataclass
class Received:
    """One `submit` the fake received: what it was `asked`, and the id it gave (empty if it never
    accepted the job)."""

    asked: SubmitCall
    job_id: str = ""

    @property
    def job(self) -> str:
        """The job's name in its bundle, read back from the script name `BUNDLE_DATE_JOB.sh`."""
        return self.asked.script.stem.rsplit("_", 1)[-1]


@dataclass
class FakeScheduler:
    """The Scheduler protocol in memory: records every call, and does what the test sets up.

    `refuse[job]` makes the submission of that job (by its name in the bundle) fail with the
    given message, as sbatch would; `crash_after` jobs are accepted (they get an id and can be
    looked up by comment) and then SchedulerCrash is raised, as if the agent died before the
    journal write; `crash_before` jobs raise SchedulerCrash without being accepted. `errors[op]`
    makes `states`, `cancel`, `lookup` or `usage` raise that exception, `broken[job]` the submit of that job.

    A restarted controller: `restart_at[job]` makes the submit of that job restart it (`restart`,
    forgetting that many of its latest jobs) and get no answer; `waited_through[job]` too, but the
    call waits `retry_delay` s, as sbatch retries to connect, and is then accepted, after `taken_meanwhile`
    jobs of others took the first ids given out again. With `check_dependencies`, a job that waits
    for an id the fake does not have is refused, as SLURM does ("Job dependency problem").

    A stalled controller: the next `silent` submit or lookup calls get no answer (SchedulerUnavailable,
    nothing done); `accepted_silently` jobs are accepted but their answer is lost; `queued` jobs get
    no answer and are accepted only after the next lookup that is answered, as a request left in a
    stopped controller's queue is processed once it resumes.
    """

    name: str = "fake"
    parallel_submissions: int = 1
    first_id: int = 1000
    calls: list[Received] = field(default_factory=list)
    jobs: dict[str, JobStatus] = field(default_factory=dict)
    comments: dict[str, str] = field(default_factory=dict)  # comment -> job id
    state_calls: list[list[str]] = field(default_factory=list)
    cancelled: list[list[str]] = field(default_factory=list)
    lookups: list[list[str]] = field(default_factory=list)
    confirms: list[dict[str, str]] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    crash_after: set[str] = field(default_factory=set)
    crash_before: set[str] = field(default_factory=set)
    errors: dict[str, Exception] = field(default_factory=dict)
    broken: dict[str, Exception] = field(default_factory=dict)
    silent: int = 0
    accepted_silently: set[str] = field(default_factory=set)
    queued: set[str] = field(default_factory=set)
    waiting: list[Received] = field(default_factory=list)  # queued calls not yet accepted
    restart_at: dict[str, int] = field(default_factory=dict)  # job -> jobs forgotten (see `restart`)
    waited_through: dict[str, int] = field(default_factory=dict)
    retry_delay: float = 0.0
    taken_meanwhile: int = 0
    check_dependencies: bool = False
    booted: float = field(default_factory=lambda: time.time() - 3600)  # when its controller started
    max_submitted: int | None = None  # the limit `limits` reports
    max_array_size: int | None = None  # the MaxArraySize `limits` reports
    limit: int | None = None  # the limit it enforces: unfinished tasks beyond it are refused (LimitReached)
    # What `usage` reports of ended jobs, by id (those absent: not in its accounting yet).
    used: dict[str, Usage] = field(default_factory=dict)
    usage_calls: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ids = itertools.count(self.first_id)

    # ---- the Scheduler protocol ---------------------------------------------------------------

    def start_submit(self, asked: SubmitCall) -> Callable[[], str]:
        return functools.partial(self.submit, asked)

    def submit(self, asked: SubmitCall) -> str:
        call = Received(asked)
        self.calls.append(call)
        if call.job in self.refuse:
            raise SubmitError(self.refuse[call.job])
        if call.job in self.crash_before:
            raise SchedulerCrash(f"crashed before submitting {call.job}")
        if call.job in self.broken:
            raise self.broken[call.job]
        self._restart_under(call)
        if self.check_dependencies and any(job_id not in self.jobs for job_id in asked.after):
            raise DependencyRefused("sbatch: error: Batch job submission failed: Job dependency problem")
        self._answer()
        if self.limit is not None and self.in_queue >= self.limit:
            raise LimitReached(f"sbatch refused {call.job}: job submit limit (fake, {self.limit})")
        if call.job in self.queued:
            self.queued.discard(call.job)
            self.waiting.append(call)
            raise SchedulerUnavailable(NO_ANSWER)
        call.job_id = self.add(state=JobState.PENDING, comment=asked.comment)
        if call.job in self.crash_after:
            raise SchedulerCrash(f"crashed after {call.job} was accepted as {call.job_id}")
        if call.job in self.accepted_silently:
            self.accepted_silently.discard(call.job)
            raise SchedulerUnavailable(NO_ANSWER)
        return call.job_id

    def states(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        self._fail("states")
        self.state_calls.append(list(job_ids))
        return {job_id: self.jobs[job_id] for job_id in job_ids if job_id in self.jobs}

    def usage(self, job_ids: Sequence[str]) -> dict[str, Usage]:
        self._fail("usage")
        self.usage_calls.append(list(job_ids))
        return {job_id: self.used[job_id] for job_id in job_ids if job_id in self.used}

    def cancel(self, job_ids: Sequence[str]) -> None:
        self._fail("cancel")
        self.cancelled.append(list(job_ids))
        for job_id in job_ids:
            if job_id in self.jobs and not self.jobs[job_id].state.finished:
                self.set_state(job_id, JobState.CANCELLED)

    def close(self) -> None:
        """Nothing is kept between calls."""

    def limits(self, account: str, qos: str | None) -> Limits:
        self._fail("limits")
        return Limits(
            max_submitted=self.max_submitted,
            max_array_size=self.max_array_size,
            held_by=f"MaxSubmitJobs={self.max_submitted} (fake)",
        )

    def lookup(self, comments: Sequence[str]) -> dict[str, str]:
        self._fail("lookup")
        self._answer()
        self.lookups.append(list(comments))
        found = {comment: self.comments[comment] for comment in comments if comment in self.comments}
        for call in self.waiting:  # processed just after this answer: the next lookup sees them
            call.job_id = self.add(state=JobState.PENDING, comment=call.asked.comment)
        self.waiting.clear()
        return found

    def boot_time(self) -> float | None:
        self._fail("lookup")  # a query of the controller, as a lookup: a silent controller fails both
        self._answer()
        return self.booted

    def confirm(self, accepted: Mapping[str, str], booted: float) -> set[str]:
        self._fail("lookup")  # one squeue in SLURM, as a lookup: a silent controller fails both
        self._answer()
        self.confirms.append(dict(accepted))
        return {comment for comment, job_id in accepted.items() if self.comments.get(comment) != job_id}

    # ---- for tests ----------------------------------------------------------------------------

    def restart(self, forget: int) -> list[str]:
        """A controller killed and started again from state saved before its last `forget` jobs: it
        forgets them and gives their ids out again. The ids forgotten."""
        self.booted = float(int(time.time()))  # as SLURM prints BOOT_TIME: to the second
        lost = sorted(self.jobs, key=int)[-forget:] if forget else []
        for job_id in lost:
            del self.jobs[job_id]
        self.comments = {comment: job_id for comment, job_id in self.comments.items() if job_id not in lost}
        if lost:
            self._ids = itertools.count(int(lost[0]))
        return lost

    def add(self, state: JobState = JobState.PENDING, comment: str = "") -> str:
        """A job the scheduler has, as if submitted by someone; its new id."""
        job_id = str(next(self._ids))
        self.jobs[job_id] = JobStatus(job_id=job_id, state=state)
        if comment:
            self.comments[comment] = job_id
        return job_id

    def set_state(self, job_id: str, state: JobState, exit_code: int | None = None, reason: str = "") -> None:
        self.jobs[job_id] = JobStatus(job_id=job_id, state=state, exit_code=exit_code, reason=reason)

    @property
    def in_queue(self) -> int:
        """Jobs the fake has that have not finished (each counts one, arrays too)."""
        return sum(1 for status in self.jobs.values() if not status.state.finished)

    @property
    def submitted(self) -> list[tuple[str, str]]:
        """(job name, id) of every job the fake accepted, in order."""
        return [(call.job, call.job_id) for call in self.calls if call.job_id]

    def _restart_under(self, call: Received) -> None:
        """Restart the controller under `call`, as `restart_at` or `waited_through` say."""
        if call.job in self.restart_at:  # it dies under this call, and comes back
            self.restart(self.restart_at.pop(call.job))
            raise SchedulerUnavailable("sbatch: error: Batch job submission failed: Connection reset by peer")
        if call.job in self.waited_through:  # sbatch retries until it is back, others get ids first
            self.restart(self.waited_through.pop(call.job))
            for _ in range(self.taken_meanwhile):
                self.add()
            time.sleep(self.retry_delay)

    def _answer(self) -> None:
        """Raise as a call to a silent controller does."""
        if self.silent > 0:
            self.silent -= 1
            raise SchedulerUnavailable(NO_ANSWER)

    def _fail(self, operation: str) -> None:
        if operation in self.errors:
            raise self.errors[operation]


def chain_bundle(name: str = "exp", *jobs: str, created: str = CREATED, array: str | None = None) -> Bundle:
    """A bundle of `jobs` (default a, b, c), each depending on the one before."""
    names = jobs or ("a", "b", "c")
    return Bundle(
        name=name,
        created=created,
        jobs={
            job: Job(
                name=job,
                script=f"{job}.py",
                dependencies=[names[i - 1]] if i else [],
                slurm=SlurmOptions(dependency_type="afterany" if i == 2 else "afterok", array=array),
            )
            for i, job in enumerate(names)
        },
    )


def submit_request(
    bundle: Bundle, settings: MachineSettings, keys: dict[str, str] | None = None
) -> SubmitBundle:
    """A SubmitBundle with a key per job (`BUNDLE_DATE/JOB`) unless `keys` are given."""
    if keys is None:
        keys = {job: f"{bundle.stem}/{job}" for job in bundle.jobs}
    return SubmitBundle(id="r-submit", bundle=bundle, settings=settings, keys=keys)


def make_agent(
    journal: Journal,
    scheduler: FakeScheduler,
    *,
    interval: float = 2.0,
    max_interval: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
    settle: float = 0.0,
    retry_for: float = 60.0,
) -> Agent:
    """An Agent on `journal` whose every scheduler is `scheduler`; a lookup proves a job absent
    `settle` seconds after the controller answers again (at once by default)."""

    def schedulers(kind: str, machine_path: str) -> FakeScheduler:
        return scheduler

    poller = Poller(journal, schedulers, interval=interval, max_interval=max_interval, clock=clock)
    controller = ControllerWatch(settle=settle, retry_for=retry_for, clock=clock)
    return Agent(
        journal=journal, poller=poller, schedulers=schedulers, version="9.9.9-test", controller=controller
    )


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def answer(agent: Agent, request: Request) -> Reply:
    """The reply to `request` from PEER, a submission driven to its end here."""
    from milex_agent.handlers import handle
    from milex_agent.pending import PendingSubmit

    reply = handle(agent, PEER, request)
    return reply.wait() if isinstance(reply, PendingSubmit) else reply


def submitted(agent: Agent, request: Request) -> Submitted:
    reply = answer(agent, request)
    assert isinstance(reply, Submitted), reply
    return reply


def poll_and_release(agent: Agent) -> list[Submitted]:
    """One poll, then the releases of queued jobs it starts, each driven to its end: their replies."""
    from milex_agent.job_queue import release

    agent.poller.poll()
    return [pending.wait() for pending in release(agent, set())]
