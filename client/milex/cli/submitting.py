"""What a command that submits does once its words are read: run a bundle (`milex-run`, by click or
not), submit, print the jobs, and with `--wait` follow them to their end. No click here: `milex-run`'s
common form runs without it (milex.cli.run)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from milex.cli.terminal import echo

if TYPE_CHECKING:
    from milex.machine.submitter import OnProgress
    from milex.records import Submission
    from milex_common.model import MachineOverrides


def run_bundle(
    bundle: str,
    *,
    machine: str | None = None,
    date: str | None = None,
    any_version: bool = False,
    wait: bool = False,
    timeout: float | None = None,
    overrides: MachineOverrides | None = None,
) -> None:
    """`milex-run BUNDLE ...` once its words are read, by click or by `common_form`: submit the bundle
    and report (see `submit_and_report`). The machine's connection is opened ahead, meanwhile."""
    _open_ahead(machine)
    from milex import api

    submit_and_report(
        lambda progress: api.run(
            bundle,
            machine=machine,
            date=date,
            progress=progress,
            any_version=any_version,
            **(overrides or {}),
        ),
        wait=wait,
        timeout=timeout,
    )


def submit_and_report(
    submit: Callable[[OnProgress], Submission], *, wait: bool, timeout: float | None = None
) -> None:
    """Submit (a progress bar on a terminal if it takes more than a second), print the job ids;
    with `wait`, follow the jobs, say in one line how they ended (with the bell or a desktop
    notification), and fail if any did not complete. A wait that times out, or is
    interrupted, says which jobs go on and how to follow them."""
    from milex.cli.output import SubmitProgressBar, print_submission

    with SubmitProgressBar() as bar:
        submission = submit(bar.update)
    print_submission(submission)
    if wait:
        _wait_and_report(submission, timeout)


def _wait_and_report(submission: Submission, timeout: float | None) -> None:
    from milex import api
    from milex.cli.ended import announce, submission_line
    from milex.cli.output import print_submission
    from milex_common.model import JobState

    unfinished = sum(not record.state.finished for record in submission.jobs.values())
    echo(f"waiting for {unfinished} job(s) to end (Ctrl-C stops the wait, not the jobs)...")
    try:
        states = api.wait(submission, timeout=timeout)
    except KeyboardInterrupt:
        echo(f"stopped waiting; still unfinished: {api.going_on(submission)}", err=True)
        sys.exit(130)
    print_submission(submission, states)
    announce([submission_line(submission, states)])
    if any(status.state is not JobState.COMPLETED for status in states.values()):
        raise SystemExit(1)


def _open_ahead(machine: str | None) -> None:
    """Begin opening the connection to `machine` (milex.machine.endpoint.open_ahead) while the command
    imports the rest and reads the record. A configuration the machine is wrong in is left to say so
    in its turn, after a missing bundle as ever."""
    from milex.config.file import load_config
    from milex.machine.endpoint import open_ahead
    from milex_common.errors import MilexError

    try:
        open_ahead(load_config().machine(machine))
    except MilexError:
        return
