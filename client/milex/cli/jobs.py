"""`milex status`, `milex logs`, `milex cancel`: what the machine's agent knows of your jobs."""

from __future__ import annotations

import re
import sys

import click

from milex.cli import HELP_OPTIONS, reports_errors

_JOB_ID = re.compile(r"\d+(_\d+)?")
machine_option = click.option("--machine", help="Machine of the configuration (default: local).")


@click.command("status", context_settings={"help_option_names": HELP_OPTIONS})
@click.argument("bundle", metavar="[BUNDLE|JOB_ID]", required=False)
@machine_option
@click.option("--watch", is_flag=True, help="Keep the table updated as events arrive, until all finish.")
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as JSON (an array's tasks included).")
@click.option("--tasks", is_flag=True, help="Also list each task of an array: index, state, exit code.")
@click.option(
    "--usage",
    is_flag=True,
    help="What the jobs that ended used, as seff shows it, and what to ask next time.",
)
@reports_errors
def status(
    bundle: str | None, machine: str | None, watch: bool, as_json: bool, tasks: bool, usage: bool
) -> None:
    """The jobs of BUNDLE, or the job of that id (all tracked jobs without it), and their states; an
    array's tasks counted on its line."""
    from milex.cli.status_view import show_status

    wanted = bundle or ""
    job_id = bool(_JOB_ID.fullmatch(wanted))
    show_status(wanted, machine, watch=watch, as_json=as_json, may_be_job_id=job_id, tasks=tasks, usage=usage)


@click.command("logs", context_settings={"help_option_names": HELP_OPTIONS})
@click.argument("job_id")
@machine_option
@click.option("-f", "--follow", is_flag=True, help="Keep printing as the log grows, until the job ends.")
@click.option("--err", is_flag=True, help="The job's stderr instead of its stdout.")
@click.option("--task", type=int, help="For an array job: which task's log.")
@reports_errors
def logs(job_id: str, machine: str | None, follow: bool, err: bool, task: int | None) -> None:
    """Print a job's output (JOB_ID as `milex status` shows it)."""
    from milex.config.file import load_config
    from milex.machine.endpoint import connect
    from milex.watch import follow_log
    from milex_common.protocol import LogChunk, Logs

    target = load_config().machine(machine)
    request = Logs(job_id=job_id, stream="err" if err else "out", follow=follow, array_task=task)
    if follow:
        for data in follow_log(target, request):
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        return
    with connect(target) as connection:
        while True:  # the agent sends a log in chunks: ask from each end until one brings nothing
            chunk = connection.request(request, expect=LogChunk)
            sys.stdout.buffer.write(chunk.data)
            if chunk.eof or not chunk.data:
                return
            request.offset += len(chunk.data)


@click.command("cancel", context_settings={"help_option_names": HELP_OPTIONS})
@click.argument("target")
@machine_option
@reports_errors
def cancel(target: str, machine: str | None) -> None:
    """Cancel a job (by id) or every unfinished job of a bundle (by name)."""
    from milex.config.file import load_config
    from milex.machine.submitter import submitter_for

    submitter = submitter_for(load_config().machine(machine))
    if _JOB_ID.fullmatch(target):
        reply = submitter.cancel(job_ids=[target])
    else:
        reply = submitter.cancel(bundle=target)
    done = [f"cancelled {', '.join(reply.job_ids)}"] if reply.job_ids else []
    if reply.queued:
        done.append(f"took {reply.queued} job(s) out of the agent's queue (never submitted)")
    click.echo("; ".join(done) if done else "nothing left to cancel")
