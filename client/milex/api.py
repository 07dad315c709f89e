"""The Python API: schedule an app, run a bundle, submit jobs built in memory, wait for them."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from milex.config.file import Config, Machine, load_config
from milex.records import (
    Submission,
    SubmittedJobRecord,
    append_job,
    claim_bundle,
    job_key,
    load_bundle,
    new_run_id,
    now_stamp,
    runs_write_ahead,
    save_bundle,
    save_submission,
    write_bundle,
)
from milex_common.errors import BundleError, InvalidValue, SubmitError, WaitTimedOut
from milex_common.model import (
    Bundle,
    Job,
    JobStatus,
    MachineOverrides,
    MachineSettings,
    SlurmOptions,
    recordable_args,
)
from milex_common.protocol import StatusReply, SubmitProgress, TrackedJob
from milex_common.provenance import Provenance
from milex_common.slurm_values import validate_name

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from milex.machine.submitter import AgentSubmitter
    from milex.prepared_write import PreparedWrite

MACHINE_OVERRIDES = tuple(MachineOverrides.__annotations__)


class Scheduled(msgspec.Struct, kw_only=True):
    """Where `schedule` recorded a job."""

    bundle: Bundle
    job: Job
    path: Path


def make_job(
    app: str,
    script_args: dict[str, Any],
    *,
    job_name: str | None = None,
    slurm: SlurmOptions | None = None,
    dependencies: Sequence[str] = (),
    pre_commands: Sequence[str] = (),
    provenance: Provenance | None = None,
) -> Job:
    """A validated Job that runs `app` with `script_args`; InvalidValue names a bad option.
    `provenance`: which code the app is (`submit` and `schedule` record it when it is None)."""
    return Job(
        name=job_name or app,
        script=app,
        script_args=recordable_args(dict(script_args)),
        dependencies=list(dependencies),
        pre_commands=list(pre_commands),
        slurm=slurm or SlurmOptions(),
        provenance=provenance,
    ).validate()


def with_provenance(job: Job) -> Job:
    """`job`, with the provenance of its app in this environment unless it has one already."""
    if job.provenance is not None:
        return job
    from milex.provenance.app import app_provenance  # lazy: importlib.metadata and git, when recording

    return msgspec.structs.replace(job, provenance=app_provenance(job.script))


def schedule(
    app: str,
    app_arguments: Sequence[str] = (),
    *,
    bundle: str | None = None,
    append: bool = False,
    script_args: dict[str, Any] | None = None,
    config: Config | None = None,
    **job_options: Any,
) -> Scheduled:
    """Record a job running `app`; its arguments come from `APP-cli app_arguments`.

    Pass `script_args` to skip the capture; `job_options` are those of `make_job`.
    """
    config = config or load_config()
    bundle_name = validate_name("bundle name", bundle or app)
    if script_args is None:
        from concurrent.futures import ThreadPoolExecutor

        from milex.capture import capture_arguments  # lazy: a record built in memory runs no NAME-cli
        from milex.provenance.app import app_provenance

        with ThreadPoolExecutor(max_workers=1) as pool:  # the provenance is read while NAME-cli runs
            reading = pool.submit(app_provenance, app) if job_options.get("provenance") is None else None
            script_args = capture_arguments(app, app_arguments)
        if reading is not None:
            job_options["provenance"] = reading.result()
    job = with_provenance(make_job(app, script_args, **job_options))
    jobs_dir = config.jobs_dir
    if append:
        saved, path = append_job(jobs_dir, bundle_name, job)
    else:
        saved = Bundle(name=bundle_name, created=now_stamp(), jobs={job.name: job})
        path = save_bundle(jobs_dir, saved)
    return Scheduled(bundle=saved, job=job, path=path)


def run(
    bundle: str,
    *,
    machine: str | None = None,
    date: str | None = None,
    config: Config | None = None,
    progress: Callable[[SubmitProgress], None] | None = None,
    any_version: bool = False,
    **overrides: Unpack[MachineOverrides],
) -> Submission:
    """Submit the newest bundle called `bundle` (or the one of `date`) to `machine`.

    `progress`, if given, is called with each SubmitProgress the agent sends while it submits. A job
    whose app the machine has in another version than recorded is refused first (VersionMismatch,
    milex.provenance.check), unless `any_version`.
    """
    config = config or load_config()
    record = load_bundle(config.jobs_dir, bundle, date)
    return submit_bundle(record, machine, config, progress=progress, any_version=any_version, **overrides)


def submit(
    jobs: Job | Iterable[Job],
    *,
    bundle: str | None = None,
    machine: str | None = None,
    config: Config | None = None,
    progress: Callable[[SubmitProgress], None] | None = None,
    any_version: bool = False,
    **overrides: Unpack[MachineOverrides],
) -> Submission:
    """Submit jobs built in memory; they are recorded as a bundle, so the run is reproducible.

    The record's name is claimed first and its content written while the agent submits; it is kept
    even when the submission fails, for a `milex-run` later. Each job is recorded with its app's
    provenance here; the machine's version of the app is checked as `run` does.
    """
    config = config or load_config()
    job_list = [with_provenance(job.validate()) for job in ([jobs] if isinstance(jobs, Job) else jobs)]
    if not job_list:
        raise InvalidValue("submit() needs at least one job.")
    names = [job.name for job in job_list]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise BundleError(f"jobs of one bundle need distinct names; repeated: {', '.join(duplicates)}.")
    name = validate_name("bundle name", bundle or job_list[0].name)
    record = Bundle(name=name, created=now_stamp(), jobs={job.name: job for job in job_list})
    record.ordered_jobs()  # refuse an unknown dependency or a cycle before writing anything
    path = claim_bundle(config.jobs_dir, record)
    try:
        return submit_bundle(
            record,
            machine,
            config,
            while_waiting=lambda: write_bundle(path, record),
            progress=progress,
            any_version=any_version,
            **overrides,
        )
    finally:
        if path.exists() and path.stat().st_size == 0:  # the request never left: keep the record anyway
            write_bundle(path, record)


def preview(
    bundle: str,
    *,
    machine: str | None = None,
    date: str | None = None,
    config: Config | None = None,
    **overrides: Unpack[MachineOverrides],
) -> dict[str, str]:
    """The scripts `run` would submit, by job name, in submission order; nothing is submitted."""
    from milex_common.render import render_script, script_stem  # lazy: only a dry run renders here

    config = config or load_config()
    record = load_bundle(config.jobs_dir, bundle, date)
    target = config.machine(machine)
    settings = _with_overrides(target, overrides)
    if not target.is_remote:  # the agent of a machine on this host writes `~` out with this home
        settings = msgspec.structs.replace(settings, path=os.path.expanduser(settings.path))
    return {
        job.name: render_script(job, settings, script_stem(record.stem, job.name))
        for job in record.ordered_jobs()
    }


def preview_note(
    *, machine: str | None = None, config: Config | None = None, **overrides: Unpack[MachineOverrides]
) -> str:
    """What `preview`'s scripts cannot show: a remote machine's path under `~` is written out with
    that machine's home by its agent when it submits (sbatch expands no `~`); "" when nothing is
    missing."""
    config = config or load_config()
    target = config.machine(machine)
    path = _with_overrides(target, overrides).path
    if not target.is_remote or not path.startswith("~"):
        return ""
    whose = f"{target.username} on {target.hostname}" if target.username else f"you on {target.hostname}"
    return (
        f"~ is the home directory of {whose}: the agent there writes {path} out in full when it "
        "submits (sbatch expands no ~), so the scripts it runs name that directory."
    )


def submit_bundle(
    bundle: Bundle,
    machine_name: str | None = None,
    config: Config | None = None,
    *,
    while_waiting: Callable[[], None] = lambda: None,
    progress: Callable[[SubmitProgress], None] | None = None,
    submission: Submission | None = None,
    any_version: bool = False,
    **overrides: Unpack[MachineOverrides],
) -> Submission:
    """Submit a loaded bundle and keep a record of the submission beside it, even a partial one.

    `while_waiting` runs while the agent submits (the caller's own bookkeeping, overlapped);
    `progress` gets each SubmitProgress the agent sends meanwhile. `submission`: the run's record
    made beforehand (a rerun's, saved as pending before it is sent), completed here. Unless
    `any_version`, the apps' versions on the machine are checked against the record first
    (milex.provenance.check): by a request of their own, or by the agent as part of the submission.
    """
    from milex.machine.submitter import submitter_for  # lazy: pyzmq costs ~25 ms; schedule needs none

    config = config or load_config()
    machine = config.machine(machine_name)
    settings = _with_overrides(machine, overrides)
    submission = submission or new_submission(bundle, machine.name)

    submitter = submitter_for(machine)
    versions = None  # an agent that checks them in the submit request itself: what it answers
    if not any_version:
        from milex.provenance.check import check_versions

        versions = check_versions(submitter, bundle, settings)

    def record(job: TrackedJob) -> None:
        submission.host = submitter.agent_host
        submission.jobs[job.name] = SubmittedJobRecord(
            job_id=job.job_id, script=job.script, script_sha256=job.script_sha256
        )
        submission.jobs[job.name].take(job)  # QUEUED, for a job that waits in the agent's queue

    # The run record's file is made while the agent submits: creating a file is most of its write.
    ahead = runs_write_ahead(config.jobs_dir, submission.bundle)

    def meanwhile() -> None:
        ahead.prepare()
        while_waiting()

    try:
        submitter.submit(
            bundle,
            settings,
            record,
            meanwhile,
            run_id=submission.run_id,
            on_progress=progress,
            versions=versions,
        )
        submission.pending = False
    except SubmitError as error:
        submission.error, submission.pending = str(error), False
        raise
    finally:
        try:
            if not submission.pending and (submission.jobs or submission.error):
                _save(config.jobs_dir, submission, ahead)
        finally:
            ahead.discard()  # unused: nothing to record, or it could not be written
    return submission


def new_submission(bundle: Bundle, machine: str) -> Submission:
    """The record of a new run of `bundle` on `machine`, with a run id of its own."""
    return Submission(
        bundle=bundle.stem,
        machine=machine,
        submitted_at=dt.datetime.now().isoformat(timespec="seconds"),
        run_id=new_run_id(),
    )


def _save(jobs_dir: Path, submission: Submission, ahead: PreparedWrite | None = None) -> None:
    """Record `submission` (into the file `ahead` made, if ready); if that fails, the error says which
    jobs were submitted all the same."""
    try:
        save_submission(jobs_dir, submission, ahead)
    except BundleError as error:
        if not submission.jobs:
            raise
        jobs = ", ".join(f"{name}={record.job_id}" for name, record in submission.jobs.items())
        machine = "" if submission.machine == "local" else f" --machine {submission.machine}"
        also = f" ({submission.error})" if submission.error else ""
        raise BundleError(
            f"{error} The jobs of run {submission.run_id} were submitted{also}: {jobs}. The agent "
            f"keeps them: once there is space, `milex status{machine}` records them."
        ) from None


def _with_overrides(machine: Machine, overrides: MachineOverrides) -> MachineSettings:
    unknown = set(overrides) - set(MACHINE_OVERRIDES)
    if unknown:
        raise TypeError(f"unknown machine override(s) {sorted(unknown)}; use {MACHINE_OVERRIDES}")
    given = {key: value for key, value in overrides.items() if value is not None}
    return msgspec.structs.replace(machine.settings, **given)


def refresh(submission: Submission, *, config: Config | None = None) -> dict[str, JobStatus]:
    """Ask the machine's agent for the state of every job of `submission`, and record it."""
    from milex.machine.submitter import submitter_for  # lazy: pyzmq costs ~25 ms; schedule needs none

    config = config or load_config()
    reply = _ask(submitter_for(config.machine(submission.machine)), submission)
    return _record_states(submission, _tracked_by_name(submission, reply.jobs), config)


def wait(
    submission: Submission,
    *,
    timeout: float | None = None,
    config: Config | None = None,
    on_change: Callable[[dict[str, JobStatus]], None] | None = None,
) -> dict[str, JobStatus]:
    """Follow the agent's events until every job of `submission` has finished (jobs in the agent's
    queue are unfinished); WaitTimedOut (a TimeoutError) after `timeout` seconds, the jobs going on.
    `on_change` sees the states each time one changes."""
    from milex.machine.submitter import submitter_for  # lazy: pyzmq costs ~25 ms; schedule needs none
    from milex.watch import follow_events

    config = config or load_config()
    machine = config.machine(submission.machine)
    reply = _ask(submitter_for(machine), submission)
    tracked = _tracked_by_name(submission, reply.jobs)
    names = {job.key: name for name, job in tracked.items()}
    states = _record_states(submission, tracked, config)
    deadline = None if timeout is None else time.monotonic() + timeout
    batched = False  # task events taken since the last record: recorded once per batch of them
    for event in follow_events(machine, reply.last_seq, heartbeat=1.0):
        if all(status.state.finished for status in states.values()):
            break
        record = False
        if event is None:  # the end of a batch of events
            record, batched = batched, False
        elif event.key in names:
            job = tracked[names[event.key]]
            job.take(event)
            job.job_id = job.job_id or event.job_id  # a queued job's id comes with its submission
            record = not event.tasks
            batched = batched or bool(event.tasks)
        if record:
            batched = False
            states = _record_states(submission, tracked, config)
            if on_change:
                on_change(states)
        if deadline is not None and time.monotonic() > deadline:
            raise WaitTimedOut(f"still unfinished after {timeout:g} s: {going_on(submission)}")
    return states


def going_on(submission: Submission) -> str:
    """The jobs of `submission` not finished by its record, which go on without a wait, and how to
    follow them."""
    unfinished = [
        f"{name} ({record.job_id or 'not submitted yet'}, {record.state.value})"
        for name, record in submission.jobs.items()
        if not record.state.finished
    ]
    machine = "" if submission.machine == "local" else f" --machine {submission.machine}"
    return (
        f"{', '.join(unfinished) or 'no job'}. The jobs go on without this wait: follow them with "
        f"`milex status {submission.bundle}{machine} --watch`."
    )


def _ask(submitter: AgentSubmitter, submission: Submission) -> StatusReply:
    """The agent's jobs of `submission`'s bundle (by id, for a record older than run ids)."""
    if submission.run_id:
        return submitter.tracked(bundle=submission.bundle)
    return submitter.tracked([job.job_id for job in submission.jobs.values()])


def _tracked_by_name(submission: Submission, jobs: list[TrackedJob]) -> dict[str, TrackedJob]:
    """The agent's view of each job of `submission`: found by its key (queued jobs have no id yet),
    or by its id in a record older than run ids."""
    if submission.run_id:
        keys = {job_key(submission.bundle, name, submission.run_id): name for name in submission.jobs}
        return {keys[job.key]: job for job in jobs if job.key in keys}
    names = {record.job_id: name for name, record in submission.jobs.items() if record.job_id}
    return {names[job.job_id]: job for job in jobs if job.job_id in names}


def _record_states(
    submission: Submission, tracked: dict[str, TrackedJob], config: Config
) -> dict[str, JobStatus]:
    """Copy the agent's view of the jobs into the submission and its local record."""
    states = {}
    for name, record in submission.jobs.items():
        if name in tracked:
            record.take(tracked[name])
            record.job_id = record.job_id or tracked[name].job_id
        states[name] = record.status()
    save_submission(config.jobs_dir, submission)
    return states
