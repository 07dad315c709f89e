"""The status table: from the agent (live, with `--watch`) or, offline, from the local records."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from milex.cli.tasks_view import counts
from milex.config.file import Machine
from milex_common.protocol import StatusReply, TrackedJob

if TYPE_CHECKING:
    from rich.table import Table

    from milex.machine.submitter import AgentSubmitter

_STYLES = {"COMPLETED": "green", "RUNNING": "cyan", "PENDING": "yellow", "SUBMITTED": "yellow"}


def table(jobs: list[TrackedJob], title: str) -> Table:
    """A line per job; with a column `array tasks` of counts when one is an array whose tasks are known."""
    from rich.table import Table

    arrays = any(job.tasks for job in jobs)
    view = Table(title=title, title_justify="left")
    for column in ("bundle", "job", "id", "state", "exit", "reason"):
        view.add_column(column)
    if arrays:
        view.add_column("array tasks", no_wrap=True)  # the counts read as one: shrink the others first
    for job in jobs:
        style = _STYLES.get(job.state.value, "red")
        exit_code = "" if job.exit_code is None else str(job.exit_code)
        state = f"[{style}]{job.state.value}[/]"
        view.add_row(
            job.bundle,
            job.name,
            job.job_id,
            state,
            exit_code,
            job.reason,
            *((counts(job),) if arrays else ()),
        )
    return view


# `milex status`'s exit status when it could not ask the machine and showed the last known states,
# from the local records: a script must not take them for the machine's answer.
OFFLINE = 3


def show_status(
    bundle: str,
    machine_name: str | None,
    *,
    watch: bool,
    as_json: bool,
    may_be_job_id: bool = False,
    tasks: bool = False,
    usage: bool = False,
) -> None:
    """The jobs of `bundle` (all without it), or of the job of that id if `may_be_job_id` and no
    bundle has that name; with `tasks`, a line per task of each array after them; with `usage`,
    what they used (milex.cli.usage_view)."""
    from milex.config.file import load_config
    from milex.machine.ssh.errors import LinkDown
    from milex.machine.submitter import submitter_for
    from milex.records import apply_states
    from milex_common.connection import AgentUnavailable

    config = load_config()
    machine = config.machine(machine_name)
    submitter = submitter_for(machine)
    try:
        reply = _ask(submitter, bundle, machine.name, may_be_job_id=may_be_job_id, usage=usage)
    except (AgentUnavailable, LinkDown) as error:
        _show_offline(bundle, machine, config.jobs_dir, str(error), as_json=as_json)
        raise SystemExit(OFFLINE) from None
    apply_states(config.jobs_dir, machine.name, reply.jobs)
    if usage:
        _show_usage(reply, f"{bundle or 'all jobs'} on {machine.name}", as_json=as_json)
    elif as_json:
        from milex.cli.tasks_view import as_json as jobs_json
        from milex.provenance.shown import described_jobs

        click.echo(jobs_json(reply.jobs, described_jobs(config.jobs_dir, machine.name, reply.jobs)))
    elif watch:
        _watch(reply.jobs, reply.last_seq, machine, config.jobs_dir, bundle)
    else:
        from rich.console import Console

        title = f"{bundle or 'all jobs'} on {machine.name}"
        console = Console(soft_wrap=True)
        console.print(table(reply.jobs, title))
        if tasks:
            from milex.cli.tasks_view import tasks_table

            console.print(tasks_table(reply.jobs, f"tasks of {title}"))


def _show_usage(reply: StatusReply, title: str, *, as_json: bool) -> None:
    if as_json:
        import msgspec

        click.echo(msgspec.json.encode({"jobs": reply.jobs, "usage": reply.usage}).decode())
        return
    from rich.console import Console

    from milex.cli.usage_view import show_usage

    show_usage(Console(soft_wrap=True), reply.jobs, reply.usage, title)


def _ask(
    submitter: AgentSubmitter, wanted: str, machine: str, *, may_be_job_id: bool, usage: bool = False
) -> StatusReply:
    """The agent's jobs: all, those of the bundle `wanted`, or the job of that id; UnknownJob when
    the agent tracks nothing by that name or id (an empty answer would look like a bundle with no jobs)."""
    from milex_common.errors import UnknownJob

    reply = submitter.tracked(bundle=wanted, usage=usage)
    if wanted and not reply.jobs and may_be_job_id:
        reply = submitter.tracked(job_ids=[wanted], usage=usage)
    if wanted and not reply.jobs:
        option = "" if machine == "local" else f" --machine {machine}"
        raise UnknownJob(
            f"the agent on {machine} tracks no bundle or job {wanted!r}; `milex status{option}` lists "
            "every job it tracks, `milex ls` the bundles recorded here."
        )
    return reply


def _watch(jobs: list[TrackedJob], since: int, machine: Machine, jobs_dir: Path, bundle: str) -> None:
    """The table kept up to date on a terminal; elsewhere (a pipe, a log file, where a live table
    shows nothing until it ends), the table, a line per change as it comes, and the final table.
    Jobs that have all ended already: their table, once. Then a line per bundle saying how its jobs
    ended, with the bell or a desktop notification if the watch waited for them."""
    from rich.console import Console
    from rich.live import Live

    from milex.cli.ended import announce, bundle_lines

    console = Console(soft_wrap=True)
    title = f"{bundle or 'all jobs'} on {machine.name}"
    watching = f"{title} (watching; Ctrl-C to stop)"
    waited = not all(job.state.finished for job in jobs)
    if not waited:
        console.print(table(jobs, title))
    elif console.is_terminal:
        with Live(table(jobs, watching), console=console, auto_refresh=False) as live:
            for _ in _changes(jobs, since, machine, jobs_dir):
                live.update(table(jobs, watching), refresh=True)
    else:
        console.print(table(jobs, watching))
        for job in _changes(jobs, since, machine, jobs_dir):
            exit_code = "" if job.exit_code is None else f" exit {job.exit_code}"
            reason = f" ({job.reason})" if job.reason else ""
            tasks = f": {counts(job)}" if job.tasks else ""
            said = f"{job.bundle} {job.name} {job.job_id} {job.state.value}{exit_code}{reason}{tasks}"
            console.print(said, markup=False, highlight=False)
        console.print(table(jobs, title))
    announce(bundle_lines(jobs), alert=waited)


def _changes(jobs: list[TrackedJob], since: int, machine: Machine, jobs_dir: Path) -> Iterator[TrackedJob]:
    """Each of `jobs` as an event of the agent changes it (applied, and kept in the local records),
    until all are finished. The events of an array's tasks are taken together: the array once per
    batch of them (what one poll changed), or with its own event after them."""
    from milex.records import apply_states
    from milex.watch import follow_events

    by_key = {job.key: job for job in jobs}  # (a job the agent still queues has no id yet)
    tasks_changed: dict[str, TrackedJob] = {}  # arrays whose tasks changed since the last batch
    for event in follow_events(machine, since):
        if all(job.state.finished for job in jobs):
            return
        if event is None:  # the end of a batch
            apply_states(jobs_dir, machine.name, list(tasks_changed.values()))
            yield from tasks_changed.values()
            tasks_changed.clear()
            continue
        if event.key not in by_key:
            continue
        job = by_key[event.key]
        job.take(event)
        job.job_id = event.job_id or job.job_id  # a queued job's, once the agent has submitted it
        if event.tasks:
            tasks_changed[job.key] = job
            continue
        tasks_changed.pop(job.key, None)
        apply_states(jobs_dir, machine.name, [job])
        yield job


def _show_offline(bundle: str, machine: Machine, jobs_dir: Path, problem: str, *, as_json: bool) -> None:
    """The last known states from the local records, when the agent cannot be reached; as JSON, the
    same list of jobs the agent's answer gives (a job's key rebuilt from its run id, where it has one)."""
    import msgspec

    from milex.cli.output import print_submission
    from milex.records import job_key, list_bundles, listed_submissions

    click.echo(f"warning: {problem}\nLast known states, from the local records:", err=True)
    known: list[TrackedJob] = []
    for name, date in list_bundles(jobs_dir):
        if bundle and bundle not in (name, f"{name}_{date}"):
            continue
        for submission in listed_submissions(jobs_dir, f"{name}_{date}"):
            if submission.machine != machine.name:
                continue
            if not as_json:
                print_submission(submission)
                continue
            for job_name, record in submission.jobs.items():
                key = job_key(submission.bundle, job_name, submission.run_id) if submission.run_id else ""
                fields = {**msgspec.structs.asdict(record), "key": key, "bundle": submission.bundle}
                known.append(msgspec.convert({**fields, "name": job_name}, TrackedJob))
    if as_json:
        from milex.cli.tasks_view import as_json as jobs_json
        from milex.provenance.shown import described_jobs

        click.echo(jobs_json(known, described_jobs(jobs_dir, machine.name, known)))
