"""Submit a bundle: render each job's script, write it under `slurm/`, submit in dependency order.

A job goes to the scheduler as soon as the jobs it depends on have ids, a few at a time where the
scheduler takes that (several sbatch calls in flight); everything the ledger records is recorded
by the caller's thread, which drives the submission with `step()` between its other work.

A call that got no answer leaves its job in doubt: the submission starts nothing new while
`milex_agent.in_doubt` looks the job up, records it if found and submits it again (same key, same
comment) once a lookup proves it absent.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from contextlib import AbstractContextManager, nullcontext
from hashlib import sha256
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgspec

from milex_agent.array_windows import (
    ArrayWindow,
    array_windows,
    window_dependencies,
    window_job,
    window_name,
    window_script,
)
from milex_agent.controller import ControllerWatch
from milex_agent.in_doubt import InDoubt
from milex_agent.scheduler.base import Scheduler, SubmitCall
from milex_common.errors import (
    DependencyRefused,
    LimitReached,
    MilexError,
    SchedulerUnavailable,
    SubmitError,
)
from milex_common.model import Bundle, Job, JobState, MachineSettings, dependency_verdict
from milex_common.render import log_paths, render_script, script_stem
from milex_common.slurm_values import array_indices

SchedulerCall = Callable[[], str]
T = TypeVar("T")
# `known` of a job whose submission was started by an earlier attempt that never learnt its outcome.
IN_DOUBT = ""
# An sbatch answered this slowly may have waited for a controller that restarted meanwhile (it retries
# to connect for up to MessageTimeout): the accepted jobs are confirmed (milex_agent.confirmation).
SLOW_ANSWER = 2.0
# `known` of a job that ended without being submitted (cancelled while queued, or its dependency failed).
NOT_RUN = "-"


class Dispatch(Protocol):
    """Runs a scheduler call now, or on a worker."""

    def __call__(self, call: Callable[[], T], /) -> Future[T]: ...


class SubmittedJob(msgspec.Struct, kw_only=True):
    """A job the scheduler accepted: its name in the bundle, its scheduler id, and its files."""

    name: str
    job_id: str
    script: str
    stdout: str = ""
    stderr: str = ""


# A call to make for a job once its intent is recorded: the job, its files, and what to submit.
Call = tuple[Job, SubmittedJob, SubmitCall]


class Ledger(Protocol):
    """Where submissions are remembered, so that a job is submitted at most once."""

    def known(self, job: Job) -> str | None:
        """The id `job` already has (from an earlier attempt), None to submit it, IN_DOUBT or NOT_RUN."""
        ...

    def ended(self, job: Job) -> JobState | None:
        """The final state of `job` if it has ended (run, or settled unsubmitted); None otherwise."""
        ...

    def comment(self, job: Job) -> str:
        """The sbatch comment `job` is submitted with: how a lookup finds it ('' for none)."""
        ...

    def begin(self, planned: Sequence[tuple[Job, SubmittedJob]]) -> list[str]:
        """Note the intent to submit these jobs before asking the scheduler; their sbatch comments."""
        ...

    def batch(self) -> AbstractContextManager[None]:
        """The ledger's writes made inside recorded together, in one commit, when it ends."""
        ...

    def accepted(self, submitted: Sequence[tuple[Job, SubmittedJob]]) -> None: ...

    def refused(self, job: Job, message: str) -> None:
        """The scheduler refused `job` (`message`: its answer)."""
        ...

    def held(self, jobs: Sequence[Job], reason: str) -> None:
        """These jobs, never begun, wait in the agent's queue, for `reason` (no room in the scheduler)."""
        ...

    def requeued(self, jobs: Sequence[Job], reason: str) -> None:
        """These jobs are known not to be in the scheduler (refused for a limit, proven absent): they
        wait in the agent's queue again, for `reason`."""
        ...

    def not_run(self, job: Job, reason: str) -> None:
        """`job` will never be submitted: its dependencies can no longer be satisfied."""
        ...

    def dropped(self, jobs: Sequence[Job], failure: BaseException) -> None:
        """The submission stopped (`failure`: a refusal, an error) before these jobs."""
        ...

    def window_size(self, job: Job) -> int:
        """The size `job`'s array was cut at by an earlier submission (0: none)."""
        ...

    def split(self, job: Job, size: int, windows: Sequence[tuple[Job, int]]) -> None:
        """`job`'s array goes to the scheduler as these window jobs (each with its tasks), cut at `size`."""
        ...


class Room(Protocol):
    """How many more tasks the scheduler may be given now; the agent's queue keeps the rest."""

    held_by: str  # why there is no room, in words for the user

    @property
    def ready(self) -> bool:
        """Whether the scheduler's limits are known (read once, on a worker): nothing goes until then."""
        ...

    @property
    def array_window(self) -> int | None:
        """The size arrays are cut at for this scheduler (MaxArraySize, and the room's cap); None: whole."""
        ...

    def take(self, tasks: int) -> bool:
        """Count `tasks` more in the scheduler if they fit; whether they did."""
        ...

    def refused(self, reason: str) -> None:
        """The scheduler refused a job for a limit on the user's jobs (LimitReached): it is full."""
        ...


class NoLedger:
    """Remembers nothing: every call submits every job."""

    def known(self, job: Job) -> str | None:
        return None

    def comment(self, job: Job) -> str:
        return ""

    def begin(self, planned: Sequence[tuple[Job, SubmittedJob]]) -> list[str]:
        return [""] * len(planned)

    def batch(self) -> AbstractContextManager[None]:
        return nullcontext()

    def accepted(self, submitted: Sequence[tuple[Job, SubmittedJob]]) -> None:
        pass

    def refused(self, job: Job, message: str) -> None:
        pass

    def ended(self, job: Job) -> JobState | None:
        return None

    def held(self, jobs: Sequence[Job], reason: str) -> None:
        pass

    def requeued(self, jobs: Sequence[Job], reason: str) -> None:
        pass

    def not_run(self, job: Job, reason: str) -> None:
        pass

    def dropped(self, jobs: Sequence[Job], failure: BaseException) -> None:
        pass

    def window_size(self, job: Job) -> int:
        return 0

    def split(self, job: Job, size: int, windows: Sequence[tuple[Job, int]]) -> None:
        pass


def run_inline(call: Callable[[], T], /) -> Future[T]:
    """Dispatch that runs the scheduler call at once, in this thread."""
    future: Future[T] = Future()
    try:
        future.set_result(call())
    except BaseException as error:  # handed to the submission, which decides what it means
        future.set_exception(error)
    return future


class BundleSubmission:
    """One bundle on its way to the scheduler, advanced by `step()` until `done`.

    Stops starting jobs at the first refusal, so no job whose dependency failed to submit is
    submitted; calls already in flight finish and are recorded. Independent jobs go several at once,
    but the first job of each kind (its SLURM options: account, partition, resources...) goes alone:
    a refusal of the kind (an account the user lacks) then stops the bundle with nothing after it
    sent. The SubmitError names the jobs submitted and those not. A call without answer is looked up
    until the controller answers or `watch` gives up; giving up (or any other scheduler error) ends
    the submission the same way.

    With a `room` (the agent's queue), a job goes only while the scheduler has room for its tasks:
    once it has none, or refuses a job for a limit on the user's jobs (LimitReached), the submission
    is done and the jobs not submitted wait in the queue (the ledger holds them), to go with a later
    submission of the same bundle. A job whose dependency has already ended is submitted without it
    if the ending satisfies it, and settled as never run if it cannot (`dependency_verdict`).
    """

    def __init__(
        self,
        bundle: Bundle,
        settings: MachineSettings,
        scheduler: Scheduler,
        ledger: Ledger | None = None,
        *,
        dispatch: Dispatch = run_inline,
        in_flight: int = 1,
        watch: ControllerWatch | None = None,
        room: Room | None = None,
    ) -> None:
        self.bundle, self.settings, self.scheduler = bundle, settings, scheduler
        self.ledger = ledger or NoLedger()
        self.dispatch, self.in_flight = dispatch, max(1, in_flight)
        self.watch = watch or ControllerWatch(settle=0.0, retry_for=0.0)
        self.ordered = bundle.ordered_jobs()  # raises before anything is submitted
        self.submitted: dict[str, SubmittedJob] = {}
        self.script_sha256: dict[str, str] = {}  # by job name: of each script this submission rendered
        self.running: dict[Future[str], tuple[Job, SubmittedJob]] = {}
        self.failure: BaseException | None = None
        self._refused: tuple[Job, str] | None = None
        # Jobs whose call got no answer: looked up until found or proven absent.
        self.in_doubt = InDoubt(scheduler, self.watch, dispatch, bundle.stem)
        self._absent: set[str] = set()  # proven absent: submitted again without asking the ledger
        self._rechecked: set[str] = set()  # refused for a dependency once (see `_recheck`)
        self._unmet = {job.name: len(set(job.dependencies)) for job in self.ordered}
        self._dependents: dict[str, list[Job]] = {}
        for job in self.ordered:
            for dependency in set(job.dependencies):
                self._dependents.setdefault(dependency, []).append(job)
        self._ready = deque(job for job in self.ordered if not job.dependencies)
        self._kinds = {job.name: job_kind(job) for job in self.ordered}
        self._accepted_kinds: set[bytes] = set()
        self.room = room
        self.held = False  # no room left: the rest waits in the queue
        self.hold_reason = ""  # why it is held, when not for room (see `pause`)
        self._tasks = {job.name: job_tasks(job) for job in self.ordered}
        self._ended: dict[str, JobState] = {}  # jobs of this submission settled unsubmitted
        # Arrays cut in windows (agent/array_windows.py): the window jobs of each, and each one's window.
        self._windows: dict[str, list[Job]] = {}
        self._window_of: dict[str, tuple[str, ArrayWindow]] = {}
        self._closed = False
        # The files and script of jobs about to go, made while calls were out (see `_look_ahead`).
        self._ahead: dict[str, tuple[SubmittedJob, str]] = {}

    @property
    def done(self) -> bool:
        if self.running or self.in_doubt.looking is not None:
            return False
        if self.failure is not None or (self.held and not self.in_doubt):
            return True
        return all(job.name in self.submitted for job in self.ordered)

    @property
    def waiting(self) -> list[Job]:
        """The jobs (and windows) neither submitted, in doubt, settled nor in flight: the queue keeps them."""
        busy = {job.name for job, _ in self.running.values()} | set(self.in_doubt) | set(self.submitted)
        every = [*self.ordered, *(window for windows in self._windows.values() for window in windows)]
        return [job for job in every if job.name not in busy]

    @property
    def waiting_for_controller(self) -> bool:
        """Whether jobs are in doubt while the controller does not answer."""
        return self.in_doubt.waiting_for_controller

    def step(self) -> bool:
        """Record the calls that finished and start the jobs now ready; whether all is done.

        The ids that came back and the intent for the jobs they free are recorded in one commit (the
        ledger's `batch`), and those jobs go only once it is made: a job's intent is recorded before its
        call, and the id of each job it waits for before it too."""
        while True:
            with self.ledger.batch():
                self._collect()
                self._resolve()
                stopped = self.failure is not None or bool(self.in_doubt)
                changed, begun = (False, []) if stopped else self._begin_ready()
            self._send(begun)
            if stopped or not changed or self.in_doubt:
                if self.done:
                    return self._close()
                self._look_ahead()
                return False

    def _close(self) -> bool:
        """Once done: a stopped submission does not keep the jobs it never began; a held one queues them."""
        if not self._closed:
            self._closed = True
            left = self.waiting
            if self.failure is not None:
                self.ledger.dropped(left, self.failure)
            elif left and self.room is not None:
                reason = self.hold_reason or self.room.held_by
                self.ledger.requeued([job for job in left if job.name in self._absent], reason)
                self.ledger.held(left, reason)
        return True

    def stop(self, reason: str) -> None:
        """Start no more jobs; the calls in flight still finish and are recorded."""
        if self.failure is None:
            self.failure = SubmitError(reason)

    def pause(self, reason: str) -> None:
        """Start no more jobs, and leave those not begun in the agent's queue (for `reason`): some it
        depends on must be submitted again (milex_agent.confirmation), and a later submission of the
        bundle gives them and the rest to the scheduler, wired by the ids the journal then has."""
        self.held, self.hold_reason = True, reason

    def run(self) -> list[SubmittedJob]:
        """Submit the whole bundle, waiting for the scheduler's answers here."""
        while not self.step():
            futures: list[Future[Any]] = [*self.running]
            if self.in_doubt.looking is not None:
                futures.append(self.in_doubt.looking[0])
            if futures:
                wait(futures, return_when=FIRST_COMPLETED)
            else:  # only waiting for the next lookup: this blocking variant may sleep
                time.sleep(max(0.0, min(self.next_event_in(), 1.0)))
        return self.result()

    def next_event_in(self) -> float:
        """Seconds until the submission has something to do without a call finishing."""
        if self.failure is not None and self.in_doubt.looking is None:
            return math.inf  # no lookup is started once stopped
        return self.in_doubt.next_event_in()

    def result(self) -> list[SubmittedJob]:
        """The submitted jobs in dependency order; raises what stopped the submission, if anything."""
        if self._refused is not None:
            job, message = self._refused
            raise SubmitError(self._refusal(job, message))
        if self.failure is not None:
            if isinstance(self.failure, MilexError):
                raise type(self.failure)(f"{self.failure}\n{self._summary()}")
            raise self.failure
        return [s for job in self.ordered if (s := self.submitted.get(job.name)) is not None and s.job_id]

    def _begin_ready(self) -> tuple[bool, list[Call]]:
        """Take as many ready jobs as may be in flight, and note the intent to submit them (whether any
        job was taken off the ready list, and the calls to make once the intent is recorded)."""
        if self.room is not None and not self.room.ready:
            return False, []  # the scheduler's limits are being read: the loop is woken when they are
        changed, batch = self._take_ready()
        if not batch:
            return changed, []
        texts = [script or self._script(job) for job, _, script in batch]
        comments = self.ledger.begin([(job, planned) for job, planned, _ in batch])
        calls: list[Call] = []
        for (job, planned, _), text, comment in zip(batch, texts, comments, strict=True):
            after, kind = self._after(job)
            call = SubmitCall(
                Path(planned.script), text=text, after=after, dependency_type=kind, comment=comment
            )
            calls.append((job, planned, call))
        return changed, calls

    def _look_ahead(self) -> None:
        """While calls are out, the files and script of the next jobs (those ready, and those that wait
        only for a call out), so that none of that work waits for an answer (a chain's next job)."""
        upcoming = list(itertools.islice(self._ready, self.in_flight))
        for job, _ in self.running.values():
            upcoming += [dependent for dependent in self._dependents.get(job.name, ())
                         if self._unmet[dependent.name] == 1]  # fmt: skip
        for job in upcoming[: self.in_flight]:
            if job.name not in self._ahead and not job.slurm.array:  # it may yet be cut in windows
                self._ahead[job.name] = (self._planned(job), self._script(job))

    def _send(self, begun: list[Call]) -> None:
        """Make the calls whose intent is recorded, each started here and waited for on a worker; keep
        each script's copy meanwhile."""
        for job, planned, call in begun:
            self.running[self.dispatch(self._start(call))] = (job, planned)
            self.in_doubt.sent(job, call.comment)
        # The scheduler gets the text itself: the copy kept for reproducibility is written meanwhile.
        for job, planned, call in begun:
            text = call.text or ""  # always given: the scheduler does not read the script
            self.script_sha256[job.name] = sha256(text.encode()).hexdigest()
            self._keep_script(job, planned, text)

    def _take_ready(self) -> tuple[bool, list[tuple[Job, SubmittedJob, str]]]:
        """Settle the ready jobs an earlier attempt has seen; the next batch to submit (whether any
        job was taken off the ready list, and the batch: each job's files, and its script if made
        ahead, else "")."""
        batch: list[tuple[Job, SubmittedJob, str]] = []
        changed = False
        while (
            self._ready
            and len(self.running) + len(batch) < self.in_flight
            and not self.held
            and not self.watch.confirm_due  # nothing new until the accepted jobs are confirmed
            and not self._trying_a_kind()
        ):
            job = self._ready[0]
            new_kind = self._kinds[job.name] not in self._accepted_kinds
            if new_kind and (self.running or batch):
                break  # it goes alone, once the calls before it are answered
            self._ready.popleft()
            changed = True
            ahead = self._ahead.pop(job.name, None)
            planned, script = ahead if ahead is not None else (self._planned(job), "")
            job_id = None if job.name in self._absent else self.ledger.known(job)
            if job_id is not None:
                self._settle_known(job, planned, job_id)
            elif not self._may_run(job, planned) or self._split(job):
                continue
            elif self.room is not None and not self.room.take(self._tasks[job.name]):
                self._ready.appendleft(job)
                self.held = True
            else:
                batch.append((job, planned, script))
                if new_kind:
                    break
        return changed, batch

    def _settle_known(self, job: Job, planned: SubmittedJob, job_id: str) -> None:
        """A job an earlier attempt has seen: submitted, in doubt, or ended without running."""
        if job_id == IN_DOUBT:  # that attempt never learnt whether it was accepted
            self.in_doubt.recall(job, self.ledger.comment(job))
            return
        if job_id == NOT_RUN:
            self._ended[job.name] = self.ledger.ended(job) or JobState.CANCELLED
        else:
            planned.job_id = job_id
            self._accepted_kinds.add(self._kinds[job.name])
        self._release(job, planned)

    def _trying_a_kind(self) -> bool:
        """Whether a job of a kind not accepted yet is out: nothing else starts until it is answered."""
        return any(self._kinds[job.name] not in self._accepted_kinds for job, _ in self.running.values())

    def _may_run(self, job: Job, planned: SubmittedJob) -> bool:
        """Whether `job` may still run, given how its dependencies that have already ended ended; one
        that cannot is settled as never run (`ledger.not_run`), as SLURM would leave it pending forever."""
        for dependency in job.dependencies:
            state = self._end_of(self.bundle.jobs[dependency])
            if state is not None and dependency_verdict(job.slurm.dependency_type, [state]) is False:
                reason = (
                    f"never run: its dependency {dependency!r} ended {state.value}, and it runs "
                    f"{job.slurm.dependency_type}"
                )
                self.ledger.not_run(job, reason)
                self._ended[job.name] = JobState.CANCELLED
                self._release(job, planned)
                return False
        return True

    def _after(self, job: Job) -> tuple[list[str], str]:
        """The ids `job` waits for (its dependencies, but those that have ended in a way it accepts; an
        array cut in windows, its windows), and the dependency type to give them."""
        after, kind = [], job.slurm.dependency_type
        window = self._window_of.get(job.name)
        for dependency in job.dependencies:
            if dependency in self._windows:
                windows = self._windows[dependency]
                wanted = window_dependencies(
                    window[1] if window else None, [self._window_of[w.name][1] for w in windows], kind
                )
                chosen = {w.offset: w_kind for w, w_kind in wanted}
                parts = [w for w in windows if self._window_of[w.name][1].offset in chosen]
                kind = next(iter(chosen.values()), kind)
            else:
                parts = [self.bundle.jobs[dependency]]
            after += [self.submitted[part.name].job_id for part in parts if self._end_of(part) is None]
        return after, kind

    def _end_of(self, job: Job) -> JobState | None:
        """How `job` ended (settled unsubmitted here, or known to the ledger); None while it has not."""
        return self._ended.get(job.name) or self.ledger.ended(job)

    def _split(self, job: Job) -> bool:
        """Cut `job`'s array in windows when the scheduler cannot take it whole (or an earlier submission
        did): its windows go first, each as a job; `job` is settled when they are. Whether it was cut."""
        if not job.slurm.array:
            return False
        cut_before = self.ledger.window_size(job)
        size = cut_before or (self.room.array_window if self.room is not None else None)
        if not size:
            return False
        windows = array_windows(job.slurm.array, size)
        if len(windows) == 1 and windows[0].offset == 0 and not cut_before:
            return False
        jobs = []
        for window in windows:
            part = msgspec.structs.replace(window_job(job, window), name=window_name(job.name, window.offset))
            self._window_of[part.name] = (job.name, window)
            self._tasks[part.name] = window.tasks
            self._kinds[part.name] = self._kinds[job.name]
            jobs.append(part)
        self.ledger.split(job, size, [(part, self._tasks[part.name]) for part in jobs])
        self._windows[job.name] = jobs
        self._ready.extendleft(reversed(jobs))
        return True

    def _script(self, job: Job) -> str:
        """The sbatch script of `job`, or of a window of an array (whose indices it shifts back)."""
        stem = script_stem(self.bundle.stem, job.name)
        window = self._window_of.get(job.name)
        if window is None:
            return render_script(job, self.settings, stem)
        return window_script(job, self.settings, stem, window[1])

    def _start(self, call: SubmitCall) -> SchedulerCall:
        """Start the scheduler's call for a job (SLURM: sbatch runs from here on); what waits for its
        answer, on a worker. A call that cannot start fails there, as one that failed would."""
        started = time.monotonic()
        try:
            answer = self.scheduler.start_submit(call)
        except Exception as error:
            return functools.partial(_raise, error)

        def wait() -> str:
            job_id = answer()
            if time.monotonic() - started >= SLOW_ANSWER:  # sbatch may have waited through a restart
                self.watch.suspect()
            return job_id

        return wait

    def _collect(self) -> None:
        accepted = []
        for future in [future for future in self.running if future.done()]:
            job, planned = self.running.pop(future)
            try:
                planned.job_id = future.result()
            except SubmitError as refusal:
                self.watch.answered()
                if isinstance(refusal, DependencyRefused) and self._recheck(job):
                    continue
                if isinstance(refusal, LimitReached) and self.room is not None:  # it goes in later
                    self.room.refused(str(refusal))
                    self.ledger.requeued([job], self.room.held_by)
                    self.held = True
                    continue
                self.ledger.refused(job, str(refusal))
                if self._refused is None:
                    self._refused = (job, str(refusal))
                self.stop(str(refusal))
                continue
            except SchedulerUnavailable as error:  # accepted or not: a lookup will tell
                if not self.in_doubt.unanswered(job, error):
                    self.failure = self.failure or error  # nothing to look it up by
                continue
            except BaseException as error:  # the call's outcome is unknown: the ledger keeps it in doubt
                self.failure = self.failure or error
                continue
            accepted.append((job, planned))
        if accepted:
            self.watch.answered()
            self._accept(accepted)

    def _recheck(self, job: Job) -> bool:
        """`job` was refused for a dependency the scheduler does not know: once, have the accepted jobs
        confirmed (one lost to a restart is submitted again, and this one after it), then try it
        again. Whether it is tried again; a second such refusal stands."""
        if not self.watch.confirms or job.name in self._rechecked:
            return False
        self._rechecked.add(job.name)
        self.watch.suspect()
        self._absent.add(job.name)
        self._ready.appendleft(job)
        return True

    def _accept(self, accepted: list[tuple[Job, SubmittedJob]]) -> None:
        self.watch.accepted(self.scheduler.name, [planned.job_id for _, planned in accepted])
        self.ledger.accepted(accepted)  # recorded before any job that depends on them starts
        self._accepted_kinds.update(self._kinds[job.name] for job, _ in accepted)
        for job, planned in accepted:
            self.in_doubt.discard(job.name)
            self._release(job, planned)

    def _resolve(self) -> None:
        """Record the jobs in doubt a lookup found; submit again those it proves absent; look up again
        when due."""
        for job in reversed(self.in_doubt.settle(self._found)):
            self._absent.add(job.name)
            self._ready.appendleft(job)
        if self.failure is None:
            self.failure = self.in_doubt.look_up()

    def _found(self, found: list[tuple[Job, str]]) -> None:
        accepted = []
        for job, job_id in found:
            planned = self._planned(job)
            planned.job_id = job_id
            accepted.append((job, planned))
        self._accept(accepted)

    def _release(self, job: Job, planned: SubmittedJob) -> None:
        self.submitted[job.name] = planned
        if job.name in self._window_of:  # a window: its array goes once every window has
            array = self._window_of[job.name][0]
            windows = self._windows[array]
            if all(window.name in self.submitted for window in windows):
                files = self._planned(self.bundle.jobs[array])
                files.job_id = next(
                    (self.submitted[w.name].job_id for w in windows if self.submitted[w.name].job_id), ""
                )
                self._release(self.bundle.jobs[array], files)
            return
        for dependent in self._dependents.get(job.name, ()):
            self._unmet[dependent.name] -= 1
            if self._unmet[dependent.name] == 0:
                self._ready.append(dependent)

    def _planned(self, job: Job) -> SubmittedJob:
        return planned_files(self.bundle.stem, job, self.settings)

    def _keep_script(self, job: Job, planned: SubmittedJob, text: str) -> None:
        """Write the script under `slurm/`, in place: neither renamed nor fsynced, since the journal,
        not this copy, is what a restart relies on. A copy that cannot be written stops the bundle."""
        try:
            try:
                descriptor = os.open(planned.script, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o755)
            except FileNotFoundError:
                Path(planned.script).parent.mkdir(parents=True, exist_ok=True)
                descriptor = os.open(planned.script, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o755)
            with open(descriptor, "wb") as script:
                script.write(text.encode())
                os.fchmod(descriptor, 0o755)
        except OSError as error:
            self.stop(
                f"job {job.name!r} was submitted, but its script could not be kept at "
                f"{planned.script}: {error.strerror}; no further job was submitted."
            )

    def _summary(self) -> str:
        """Which jobs were submitted, which are in doubt (and still looked up by the agent), which not."""
        done = ", ".join(f"{s.name} (job {s.job_id})" for s in self.submitted.values()) or "none"
        doubt = list(self.in_doubt)
        skipped = [j.name for j in self.ordered if j.name not in self.submitted and j.name not in doubt]
        text = f"Already submitted: {done}. Not submitted: {', '.join(skipped) or 'none'}."
        if doubt:
            text += (
                f" In doubt (the scheduler may have them; the agent keeps looking them up and a retry "
                f"with the same keys never doubles them): {', '.join(doubt)}."
            )
        return text

    def _refusal(self, job: Job, message: str) -> str:
        done = ", ".join(f"{s.name} (job {s.job_id})" for s in self.submitted.values()) or "none"
        skipped = [j.name for j in self.ordered if j.name not in self.submitted and j is not job]
        return (
            f"job {job.name!r} of bundle {self.bundle.stem!r} was not submitted: {message}\n"
            f"Already submitted: {done}. Not submitted: {', '.join(skipped) or 'none'}."
        )


def _raise(error: Exception) -> str:
    raise error


def job_kind(job: Job) -> bytes:
    """What SLURM judges a job's acceptance by: its options, whatever its name."""
    return msgspec.json.encode(msgspec.structs.replace(job.slurm, job_name=None, dependency_type="afterok"))


def planned_files(bundle_stem: str, job: Job, settings: MachineSettings) -> SubmittedJob:
    """Where a job's script is kept and its logs go (its id not known yet)."""
    stem = script_stem(bundle_stem, job.name)
    script = Path(settings.path) / "slurm" / f"{stem}.sh"
    stdout, stderr = log_paths(job, settings, stem)
    return SubmittedJob(name=job.name, job_id="", script=str(script), stdout=stdout, stderr=stderr)


def job_tasks(job: Job) -> int:
    """What a job counts toward a limit on the user's jobs: each task of an array is one."""
    return len(array_indices(job.slurm.array)[0]) if job.slurm.array else 1


def submit_bundle(
    bundle: Bundle, settings: MachineSettings, scheduler: Scheduler, ledger: Ledger | None = None
) -> list[SubmittedJob]:
    """Submit every job of `bundle`, each after the jobs it depends on, wired by their real ids."""
    return BundleSubmission(bundle, settings, scheduler, ledger).run()
