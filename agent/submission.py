"""Submit a bundle: render each job's script, write it under `slurm/`, submit in dependency order.

A job goes to the scheduler as soon as the jobs it depends on have ids, a few at a time where the
scheduler takes that (several sbatch calls in flight); everything the ledger records is recorded
by the caller's thread, which drives the submission with `step()` between its other work.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Protocol

import msgspec

from milex.agent.scheduler.base import Scheduler
from milex.common.errors import SubmitError
from milex.common.model import Bundle, Job, MachineSettings
from milex.common.render import log_paths, render_script, script_stem

SchedulerCall = Callable[[], str]
Dispatch = Callable[[SchedulerCall], "Future[str]"]  # runs a call now, or on a worker


class SubmittedJob(msgspec.Struct, kw_only=True):
    """A job the scheduler accepted: its name in the bundle, its scheduler id, and its files."""

    name: str
    job_id: str
    script: str
    stdout: str = ""
    stderr: str = ""


class Ledger(Protocol):
    """Where submissions are remembered, so that a job is submitted at most once."""

    def known(self, job: Job) -> str | None:
        """The id `job` already has (from an earlier attempt), or None to submit it."""
        ...

    def begin(self, planned: Sequence[tuple[Job, SubmittedJob]]) -> list[str]:
        """Note the intent to submit these jobs before asking the scheduler; their sbatch comments."""
        ...

    def accepted(self, submitted: Sequence[tuple[Job, SubmittedJob]]) -> None: ...

    def refused(self, job: Job) -> None: ...


class NoLedger:
    """Remembers nothing: every call submits every job."""

    def known(self, job: Job) -> str | None:
        return None

    def begin(self, planned: Sequence[tuple[Job, SubmittedJob]]) -> list[str]:
        return [""] * len(planned)

    def accepted(self, submitted: Sequence[tuple[Job, SubmittedJob]]) -> None:
        pass

    def refused(self, job: Job) -> None:
        pass


def run_inline(call: SchedulerCall) -> Future[str]:
    """Dispatch that runs the scheduler call at once, in this thread."""
    future: Future[str] = Future()
    try:
        future.set_result(call())
    except BaseException as error:  # handed to the submission, which decides what it means
        future.set_exception(error)
    return future


class BundleSubmission:
    """One bundle on its way to the scheduler, advanced by `step()` until `done`.

    Stops starting jobs at the first refusal, so no job whose dependency failed to submit is
    submitted; calls already in flight finish and are recorded. The SubmitError then names the
    jobs submitted and those not.
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
    ) -> None:
        self.bundle, self.settings, self.scheduler = bundle, settings, scheduler
        self.ledger = ledger or NoLedger()
        self.dispatch, self.in_flight = dispatch, max(1, in_flight)
        self.ordered = bundle.ordered_jobs()  # raises before anything is submitted
        self.submitted: dict[str, SubmittedJob] = {}
        self.running: dict[Future[str], tuple[Job, SubmittedJob]] = {}
        self.failure: BaseException | None = None
        self._refused: tuple[Job, str] | None = None
        self._unmet = {job.name: len(set(job.dependencies)) for job in self.ordered}
        self._dependents: dict[str, list[Job]] = {}
        for job in self.ordered:
            for dependency in set(job.dependencies):
                self._dependents.setdefault(dependency, []).append(job)
        self._ready = deque(job for job in self.ordered if not job.dependencies)

    @property
    def done(self) -> bool:
        return not self.running and (self.failure is not None or len(self.submitted) == len(self.ordered))

    def step(self) -> bool:
        """Record the calls that finished and start the jobs now ready; whether all is done."""
        while True:
            self._collect()
            if self.failure is not None or not self._start_ready():
                return self.done

    def stop(self, reason: str) -> None:
        """Start no more jobs; the calls in flight still finish and are recorded."""
        if self.failure is None:
            self.failure = SubmitError(reason)

    def run(self) -> list[SubmittedJob]:
        """Submit the whole bundle, waiting for the scheduler's answers here."""
        while not self.step():
            wait(list(self.running), return_when=FIRST_COMPLETED)
        return self.result()

    def result(self) -> list[SubmittedJob]:
        """The submitted jobs in dependency order; raises what stopped the submission, if anything."""
        if self._refused is not None:
            job, message = self._refused
            raise SubmitError(self._refusal(job, message))
        if self.failure is not None:
            raise self.failure
        return [self.submitted[job.name] for job in self.ordered]

    def _start_ready(self) -> bool:
        """Start as many ready jobs as may be in flight; whether anything changed."""
        batch: list[tuple[Job, SubmittedJob]] = []
        changed = False
        while self._ready and len(self.running) + len(batch) < self.in_flight:
            job = self._ready.popleft()
            planned = self._planned(job)
            job_id = self.ledger.known(job)
            if job_id is None:
                batch.append((job, planned))
            else:  # an earlier attempt got it submitted
                planned.job_id = job_id
                self._release(job, planned)
            changed = True
        if batch:
            texts = [
                render_script(job, self.settings, script_stem(self.bundle.stem, job.name)) for job, _ in batch
            ]
            comments = self.ledger.begin(batch)
            for (job, planned), text, comment in zip(batch, texts, comments, strict=True):
                self.running[self.dispatch(self._call(job, planned, text, comment))] = (job, planned)
            # The scheduler gets the text itself: the copy kept for reproducibility is written meanwhile.
            for (job, planned), text in zip(batch, texts, strict=True):
                self._keep_script(job, planned, text)
        return changed

    def _call(self, job: Job, planned: SubmittedJob, text: str, comment: str) -> SchedulerCall:
        after = [self.submitted[dependency].job_id for dependency in job.dependencies]
        return lambda: self.scheduler.submit(
            Path(planned.script),
            text=text,
            after=after,
            dependency_type=job.slurm.dependency_type,
            comment=comment,
        )

    def _collect(self) -> None:
        accepted = []
        for future in [future for future in self.running if future.done()]:
            job, planned = self.running.pop(future)
            try:
                planned.job_id = future.result()
            except SubmitError as refusal:
                self.ledger.refused(job)
                if self._refused is None:
                    self._refused = (job, str(refusal))
                self.stop(str(refusal))
                continue
            except BaseException as error:  # the call's outcome is unknown: the ledger keeps it in doubt
                self.failure = self.failure or error
                continue
            accepted.append((job, planned))
        if accepted:
            self.ledger.accepted(accepted)  # recorded before any job that depends on them starts
            for job, planned in accepted:
                self._release(job, planned)

    def _release(self, job: Job, planned: SubmittedJob) -> None:
        self.submitted[job.name] = planned
        for dependent in self._dependents.get(job.name, ()):
            self._unmet[dependent.name] -= 1
            if self._unmet[dependent.name] == 0:
                self._ready.append(dependent)

    def _planned(self, job: Job) -> SubmittedJob:
        stem = script_stem(self.bundle.stem, job.name)
        script = Path(self.settings.path) / "slurm" / f"{stem}.sh"
        stdout, stderr = log_paths(job, self.settings, stem)
        return SubmittedJob(name=job.name, job_id="", script=str(script), stdout=stdout, stderr=stderr)

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

    def _refusal(self, job: Job, message: str) -> str:
        done = ", ".join(f"{s.name} (job {s.job_id})" for s in self.submitted.values()) or "none"
        skipped = [j.name for j in self.ordered if j.name not in self.submitted and j is not job]
        return (
            f"job {job.name!r} of bundle {self.bundle.stem!r} was not submitted: {message}\n"
            f"Already submitted: {done}. Not submitted: {', '.join(skipped) or 'none'}."
        )


def submit_bundle(
    bundle: Bundle, settings: MachineSettings, scheduler: Scheduler, ledger: Ledger | None = None
) -> list[SubmittedJob]:
    """Submit every job of `bundle`, each after the jobs it depends on, wired by their real ids."""
    return BundleSubmission(bundle, settings, scheduler, ledger).run()
