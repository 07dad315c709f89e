"""Job records on the laptop: bundle files under `jobs/` and the submissions made from them."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import itertools
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path

import msgspec

from milex.prepared_write import PreparedWrite
from milex_common.errors import BundleError
from milex_common.files import atomic_write, file_in_the_way, take_lock
from milex_common.model import DATE_FORMAT, Bundle, Job, JobState, JobStatus
from milex_common.protocol import TrackedJob
from milex_common.record_format import decode_bundle, encode_bundle

_BUNDLE_FILE = re.compile(r"(?P<name>.+)_(?P<date>\d{14})\.json")
SUBMISSIONS_SUFFIX = ".runs.json"
_SUBMISSIONS_LOCK = ".runs.lock"  # one for the directory: held only while a runs file is rewritten
_BUNDLES_LOCK = ".bundles.lock"  # one for the directory: held while a bundle is appended to or saved


class SubmittedJobRecord(JobStatus):
    """One job of a submission: its script and its status (scheduler id, last known state)."""

    state: JobState = JobState.SUBMITTED
    script: str = ""
    script_sha256: str = ""  # of the script the agent submitted ("" in older records, queued jobs)


class Submission(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One `milex-run` of a bundle: where, when, and the ids the scheduler gave its jobs."""

    bundle: str
    machine: str
    submitted_at: str
    # Unique to this run (time and randomness), also the attempt part of the agent's idempotency keys;
    # empty in records of versions before it, which are told apart by time and machine.
    run_id: str = ""
    jobs: dict[str, SubmittedJobRecord] = {}
    error: str = ""
    host: str = ""  # the host the machine's agent ran on when it took the run ("" in older records)
    # A rerun (client/milex/reruns.py): the run it repeats, and while its request may not have reached
    # the agent, `pending`: written before it is sent, so an interrupted rerun is resumed, not doubled.
    rerun_of: str = ""
    pending: bool = False
    # The tasks a rerun submitted of an array it narrowed to those that did not complete, by job name.
    arrays: dict[str, str] = {}

    @property
    def identity(self) -> tuple[str, ...]:
        """What tells this run from the others of its bundle."""
        return (self.run_id,) if self.run_id else (self.submitted_at, self.machine)


_RUN_ID = re.compile(r"\d{14}-[0-9a-f]{8}")


def job_key(bundle_stem: str, job_name: str, run_id: str) -> str:
    """The idempotency key a job of a run carries to the agent (and SLURM, in `--comment`): it
    names the run, so `run_of_key` finds the run of any job the agent tracks."""
    return f"{bundle_stem}/{job_name}/{run_id}"


def run_of_key(key: str) -> str:
    """The run id a job's key ends with (see `job_key`)."""
    return key.rpartition("/")[2]


def new_run_id() -> str:
    """A run id: the local time to the second, then 8 random hex digits (unique across processes).
    os.urandom is what secrets.token_hex reads, without importing secrets (hmac, hashlib: ~3 ms of
    every `milex-run`)."""
    return f"{now_stamp()}-{os.urandom(4).hex()}"


def now_stamp() -> str:
    return dt.datetime.now().strftime(DATE_FORMAT)


def bundle_path(jobs_dir: Path, name: str, created: str) -> Path:
    return jobs_dir / f"{name}_{created}.json"


def bundle_dates(jobs_dir: Path, name: str) -> list[str]:
    """The dates of the bundles called exactly `name`, oldest first.

    Names compared as strings, not matched by a pattern: this runs at every save, in directories
    that collect thousands of records.
    """
    names = _jobs_dir_names(jobs_dir)
    prefix = f"{name}_"
    start, end = len(prefix), len(prefix) + 14
    return sorted(
        found[start:end]
        for found in names
        if len(found) == end + 5 and found.startswith(prefix) and found.endswith(".json")
        and found[start:end].isdigit()
    )  # fmt: skip


def list_bundles(jobs_dir: Path) -> list[tuple[str, str]]:
    """Every bundle record as (name, date), sorted by name then date."""
    matches = (_BUNDLE_FILE.fullmatch(name) for name in _jobs_dir_names(jobs_dir))
    return sorted((match["name"], match["date"]) for match in matches if match)


def _jobs_dir_names(jobs_dir: Path) -> list[str]:
    """The names in `jobs_dir`, none if it does not exist yet; a BundleError if it cannot be read."""
    try:
        return os.listdir(jobs_dir)
    except FileNotFoundError:
        return []
    except OSError as error:
        raise not_a_jobs_dir(jobs_dir, error) from None


def made(jobs_dir: Path) -> Path:
    """`jobs_dir`, made if it does not exist; a BundleError naming what is in the way if it cannot be."""
    try:
        jobs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise not_a_jobs_dir(jobs_dir, error) from None
    return jobs_dir


def not_a_jobs_dir(jobs_dir: Path, error: OSError) -> BundleError:
    """The error for a directory of records `jobs_dir` that `error` kept from being read or made."""
    blocker = file_in_the_way(jobs_dir)
    if blocker is not None:
        what = "the directory of job records" if blocker == jobs_dir else f"a directory (for {jobs_dir})"
        return BundleError(
            f"{blocker} is a file, not {what}; move it aside (or set the local machine's path with "
            "`milex config set local path DIR`)."
        )
    return BundleError(f"cannot use the directory of job records {jobs_dir}: {error.strerror or error}.")


def load_bundle(jobs_dir: Path, name: str, date: str | None = None) -> Bundle:
    """The newest bundle called exactly `name` (or the one of `date`); BundleError if there is none."""
    dates = bundle_dates(jobs_dir, name)
    if date is not None and date not in dates:
        available = ", ".join(dates) or "none"
        raise BundleError(f"no bundle {name!r} dated {date} in {jobs_dir} (its dates: {available}).")
    if not dates:
        raise BundleError(
            f"no bundle named {name!r} in {jobs_dir}; schedule one first with "
            f"`milex-schedule {name} ...` (see `milex ls` for the bundles there are)."
        )
    created = date or dates[-1]
    path = bundle_path(jobs_dir, name, created)
    try:
        data = path.read_bytes()
    except OSError as error:
        what = "it is a directory, not a record" if isinstance(error, IsADirectoryError) else error.strerror
        raise BundleError(
            f"cannot read the bundle record {path}: {what}; move it aside (`milex ls {name}` lists "
            "the others)."
        ) from None
    return decode_bundle(data, name=name, created=created, source=str(path))


def save_bundle(jobs_dir: Path, bundle: Bundle) -> Path:
    """Write `bundle` as a new record, the newest of its name (see `claim_bundle`)."""
    with _bundles_locked(jobs_dir):
        path = claim_bundle(jobs_dir, bundle)
        write_bundle(path, bundle)
    return path


@contextlib.contextmanager
def _bundles_locked(jobs_dir: Path) -> Iterator[None]:
    """Hold the jobs directory's lock on bundle records: an append reads the newest record and writes
    it back, so two at once would each lose the other's job."""
    made(jobs_dir)
    try:
        lock = take_lock(jobs_dir / _BUNDLES_LOCK, wait=True)
    except OSError as error:
        raise cannot_write(jobs_dir / _BUNDLES_LOCK, error) from None
    assert lock is not None  # impossible: a waiting take_lock returns once it holds the lock
    try:
        yield
    finally:
        os.close(lock)


def claim_bundle(jobs_dir: Path, bundle: Bundle) -> Path:
    """Reserve the file of a new record of `bundle`, the newest of its name: its date moves forward
    past any record of that second or later. The name is claimed with O_EXCL, so two programs
    saving in the same second never overwrite each other's record. `write_bundle` fills it.
    """
    made(jobs_dir)
    dates = bundle_dates(jobs_dir, bundle.name)
    if dates and bundle.created <= dates[-1]:  # a clock set back: the new record is still the newest
        bundle.created = _next_second(dates[-1])
    while True:
        path = bundle_path(jobs_dir, bundle.name, bundle.created)
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return path
        except FileExistsError:
            bundle.created = _next_second(bundle.created)
        except OSError as error:  # no inode left, a read-only directory...
            raise cannot_write(path, error) from None


def write_bundle(path: Path, bundle: Bundle) -> None:
    """Write the record of `bundle` to `path` (claimed); the empty claim is removed if that fails."""
    try:
        write_record(path, encode_bundle(bundle))
    except BaseException:
        if path.exists() and path.stat().st_size == 0:
            path.unlink()
        raise


def append_job(jobs_dir: Path, bundle_name: str, job: Job) -> tuple[Bundle, Path]:
    """Add `job` to the newest bundle called `bundle_name` (a new bundle if there is none); under the
    directory's lock, so appends made at once by several processes all keep their jobs."""
    with _bundles_locked(jobs_dir):
        if not bundle_dates(jobs_dir, bundle_name):
            bundle = Bundle(name=bundle_name, created=now_stamp(), jobs={job.name: job})
            path = claim_bundle(jobs_dir, bundle)
            write_bundle(path, bundle)
            return bundle, path
        bundle = load_bundle(jobs_dir, bundle_name)
        if job.name in bundle.jobs:
            raise BundleError(
                f"bundle {bundle.stem!r} already has a job named {job.name!r}; give this one another "
                "name with --job_name."
            )
        bundle.jobs[job.name] = job
        path = bundle_path(jobs_dir, bundle.name, bundle.created)
        write_record(path, encode_bundle(bundle))
    return bundle, path


def write_record(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace the record at `path` in one step (the old one stays whole if that fails); a BundleError
    naming the file when it cannot be written, saying so when the disk is full."""
    try:
        atomic_write(path, data, durable=durable)
    except OSError as error:
        raise cannot_write(path, error) from None


def cannot_write(path: Path, error: OSError) -> BundleError:
    """The error to show for a record `path` that `error` kept from being written."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return BundleError(
            f"cannot write {path}: the disk is full ({error.strerror}); free some space there and retry."
        )
    return BundleError(f"cannot write {path}: {error.strerror or error}.")


def _next_second(stamp: str) -> str:
    return (dt.datetime.strptime(stamp, DATE_FORMAT) + dt.timedelta(seconds=1)).strftime(DATE_FORMAT)


def submissions_path(jobs_dir: Path, bundle_stem: str) -> Path:
    return jobs_dir / f"{bundle_stem}{SUBMISSIONS_SUFFIX}"


class DamagedRuns(BundleError):
    """A runs file that cannot be read (cut short, edited by hand): `path` names it."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path} is damaged ({problem})")
        self.path = path


def load_submissions(jobs_dir: Path, bundle_stem: str) -> list[Submission]:
    """Every submission recorded for the bundle `NAME_DATE`, oldest first; DamagedRuns if its file
    cannot be read."""
    path = submissions_path(jobs_dir, bundle_stem)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as error:  # a directory, a file the user may not read: damaged as far as Milex goes
        raise DamagedRuns(path, error.strerror or str(error)) from None
    try:
        return msgspec.json.decode(data, type=list[Submission])
    except msgspec.DecodeError as error:
        raise DamagedRuns(path, str(error)) from None


def listed_submissions(jobs_dir: Path, bundle_stem: str) -> list[Submission]:
    """`load_submissions` for a listing: a damaged runs file is named in a warning and shows no run
    (the other bundles are still listed); it is left as it is, for the next write to move aside."""
    try:
        return load_submissions(jobs_dir, bundle_stem)
    except DamagedRuns as damaged:
        warn(f"{damaged}: its runs are not shown; the next milex-run or milex status moves it aside.")
        return []


def warn(message: str) -> None:
    """A one-line warning on stderr: something was skipped or set aside, and the command goes on."""
    print(f"warning: {message}", file=sys.stderr)


def _set_aside(damaged: DamagedRuns) -> None:
    """Move a damaged runs file to NAME.runs.json.damaged-DATE (kept, never deleted), and say so."""
    kept = damaged.path.with_name(f"{damaged.path.name}.damaged-{now_stamp()}")
    for n in itertools.count(2):
        if not kept.exists():
            break
        kept = kept.with_name(f"{damaged.path.name}.damaged-{now_stamp()}-{n}")
    try:
        damaged.path.rename(kept)
    except OSError as error:
        raise cannot_write(damaged.path, error) from None
    warn(f"{damaged}; moved to {kept} and a new one started (milex status records again the runs its "
         "machine's agent knows).")  # fmt: skip


def apply_states(jobs_dir: Path, machine: str, tracked: Iterable[TrackedJob]) -> int:
    """Record the states `machine`'s agent reported in the local submission records; how many changed."""
    by_bundle: dict[str, list[TrackedJob]] = {}
    for job in tracked:
        by_bundle.setdefault(job.bundle, []).append(job)
    changed = 0
    for stem, jobs in by_bundle.items():
        # Only bundles recorded here: the agent also tracks jobs submitted from elsewhere.
        if submissions_path(jobs_dir, stem).exists() or (jobs_dir / f"{stem}.json").exists():
            changed += update_submissions(jobs_dir, stem, partial(_take_states, machine, jobs))
    return changed


def _take_states(machine: str, jobs: list[TrackedJob], history: list[Submission]) -> int:
    """Copy the states of `jobs` into the runs of `history` made on `machine`, each job found by its
    key (a job the agent queued had no id when its run was recorded: it takes the id with the state),
    or by its id in a run older than run ids; add the runs the record lacks (see `_restore_runs`).
    How many runs changed."""
    by_key = {job.key: job for job in jobs}
    by_id = {job.job_id: job for job in jobs if job.job_id}
    changed = 0
    for submission in history:
        if submission.machine != machine:
            continue
        touched = False
        for name, record in submission.jobs.items():
            if submission.run_id:
                job = by_key.get(job_key(submission.bundle, name, submission.run_id))
            else:
                job = by_id.get(record.job_id) if record.job_id else None
            if job is not None:
                touched |= _take(record, job)
        changed += touched
    return changed + _restore_runs(machine, jobs, history)


def _take(record: SubmittedJobRecord, job: TrackedJob) -> bool:
    """`record` takes the status of `job`, and its id once the agent has one (a job back in the agent's
    queue has none: the scheduler lost it, and may give its old id to another job); whether either
    changed."""
    changed = record.take(job)
    if job.job_id != record.job_id and (job.job_id or job.state is JobState.QUEUED):
        record.job_id, changed = job.job_id, True
    return changed


def _restore_runs(machine: str, jobs: list[TrackedJob], history: list[Submission]) -> int:
    """Add to `history` the jobs the agent tracks that no run records (a record the laptop could not
    write: a full disk, a killed `milex-run`; a job still in the agent's queue or in doubt, which has
    no id yet), each to its run: a job's idempotency key ends with its run's id. How many runs were
    added or completed."""
    runs = {s.run_id: s for s in history if s.run_id}
    recorded = {r.job_id for s in history if s.machine == machine for r in s.jobs.values() if r.job_id}
    changed: set[str] = set()
    for job in jobs:
        run_id = run_of_key(job.key)
        if (job.job_id and job.job_id in recorded) or not _RUN_ID.fullmatch(run_id):
            continue
        if run_id not in runs:
            at = dt.datetime.strptime(run_id[:14], DATE_FORMAT).isoformat()
            runs[run_id] = Submission(bundle=job.bundle, machine=machine, submitted_at=at, run_id=run_id)
            history.append(runs[run_id])
        if job.name not in runs[run_id].jobs:
            runs[run_id].jobs[job.name] = record = SubmittedJobRecord(job_id=job.job_id, script=job.script)
            record.take(job)
            changed.add(run_id)
    return len(changed)


def runs_write_ahead(jobs_dir: Path, bundle_stem: str) -> PreparedWrite:
    """The next write of the runs of `bundle_stem`, to `prepare` ahead (while an agent submits) and
    give to `save_submission`."""
    return PreparedWrite(submissions_path(jobs_dir, bundle_stem))


def save_submission(jobs_dir: Path, submission: Submission, ahead: PreparedWrite | None = None) -> Path:
    """Add or update `submission` (matched by its run id, or for older records by time and machine)
    in its bundle's local record; into the file `ahead` made, if it is ready (`runs_write_ahead`)."""

    def put(history: list[Submission]) -> int:
        places = [i for i, s in enumerate(history) if s.identity == submission.identity]
        if places:
            history[places[0]] = submission  # in its place: the runs stay oldest first
        else:
            history.append(submission)
        return 1

    update_submissions(jobs_dir, submission.bundle, put, ahead)
    return submissions_path(jobs_dir, submission.bundle)


def update_submissions(
    jobs_dir: Path,
    bundle_stem: str,
    change: Callable[[list[Submission]], int],
    ahead: PreparedWrite | None = None,
) -> int:
    """Read the runs of `bundle_stem`, let `change` change them in place (it says how many it changed),
    and write them back if it did (into the file `ahead` made, if it is ready); all under the jobs
    directory's lock, so concurrent runs and state updates never overwrite each other's records.
    Returns what `change` returned."""
    path = submissions_path(jobs_dir, bundle_stem)
    made(jobs_dir)
    try:
        lock = take_lock(jobs_dir / _SUBMISSIONS_LOCK, wait=True)
    except OSError as error:
        raise cannot_write(path, error) from None
    assert lock is not None  # impossible: a waiting take_lock returns once it holds the lock
    try:
        try:
            history, fresh = load_submissions(jobs_dir, bundle_stem), False
        except DamagedRuns as damaged:  # kept aside: this change must not be lost with it
            _set_aside(damaged)
            history, fresh = [], True
        changed = change(history)
        if changed or fresh:
            # Not fsynced: the agent's journal holds the same ids and states durably.
            data = msgspec.json.format(msgspec.json.encode(history), indent=2) + b"\n"
            if ahead is not None and ahead.ready:
                try:
                    ahead.commit(data)
                except OSError as error:
                    raise cannot_write(path, error) from None
            else:
                write_record(path, data, durable=False)
    finally:
        os.close(lock)
    return changed
