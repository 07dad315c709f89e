"""The one interface through which the client submits, watches and cancels jobs on a machine."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from milex.agent.submission import SubmittedJob
from milex.common.errors import ConfigError
from milex.common.model import Bundle, JobStatus, MachineSettings
from milex.config import Machine


class Submitter(Protocol):
    """Submits bundles to one machine and reports on its jobs."""

    def submit(
        self,
        bundle: Bundle,
        settings: MachineSettings,
        on_submitted: Callable[[SubmittedJob], None],
    ) -> list[SubmittedJob]: ...

    def states(self, job_ids: Sequence[str]) -> dict[str, JobStatus]: ...

    def cancel(self, job_ids: Sequence[str]) -> None: ...


class DirectSubmitter:
    """Submits on this host, with the machine's scheduler, in this process."""

    def __init__(self, settings: MachineSettings) -> None:
        from milex.agent.scheduler import scheduler_for

        self.scheduler = scheduler_for(settings)

    def submit(
        self,
        bundle: Bundle,
        settings: MachineSettings,
        on_submitted: Callable[[SubmittedJob], None],
    ) -> list[SubmittedJob]:
        from milex.agent.submission import submit_bundle

        return submit_bundle(bundle, settings, self.scheduler, on_submitted=on_submitted)

    def states(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        return self.scheduler.states(job_ids)

    def cancel(self, job_ids: Sequence[str]) -> None:
        self.scheduler.cancel(job_ids)


def submitter_for(machine: Machine) -> Submitter:
    """The submitter that reaches `machine`."""
    if machine.is_remote:
        raise ConfigError(
            f"machine {machine.name!r} is remote ({machine.hostname}); submitting to remote "
            "machines needs the Milex agent, which this version does not have yet."
        )
    return DirectSubmitter(machine.settings)
