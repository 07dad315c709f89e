"""Before a run: the apps' versions a machine's environment has, against those the record names.

A run whose app differs from the recorded one would not reproduce the record, so `milex-run`
refuses it before anything is submitted, unless the user says to go on (`--any-version`,
`any_version=True`). Jobs without a checkable provenance (older records, jobs built in memory
without an entry point) are not checked; an agent too old to answer is named in one warning line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from milex.records import warn
from milex_common.connection import AgentError
from milex_common.errors import MilexError
from milex_common.intervals import APP_VERSIONS_TIMEOUT
from milex_common.model import Bundle, MachineSettings
from milex_common.protocol import APP_VERSIONS, AppVersions, AppVersionsReply

if TYPE_CHECKING:
    from collections.abc import Mapping

    from milex.machine.submitter import AgentSubmitter

GO_ON = "pass --any-version (any_version=True in Python) to run anyway"


class VersionCheckFailed(MilexError):
    """The machine could not say which version of the bundle's apps its environment has."""


class VersionMismatch(VersionCheckFailed):
    """An app's version on the machine is not the recorded one (or the app is not installed there)."""

    def __init__(self, message: str, *, app: str, recorded: str, found: str, machine: str) -> None:
        super().__init__(message)
        self.app, self.recorded, self.found, self.machine = app, recorded, found, machine


def recorded_versions(bundle: Bundle) -> dict[str, dict[str, str]]:
    """For each app of `bundle` with a checkable provenance: its recorded version by job name."""
    wanted: dict[str, dict[str, str]] = {}
    for job in bundle.ordered_jobs():
        if job.provenance is not None and job.provenance.checkable:
            wanted.setdefault(job.script, {})[job.name] = job.provenance.version
    return wanted


def check_versions(submitter: AgentSubmitter, bundle: Bundle, settings: MachineSettings) -> None:
    """Refuse (VersionMismatch) a run of `bundle` whose apps the machine has in another version than
    recorded; VersionCheckFailed when it cannot tell. An agent without the check: a warning."""
    wanted = recorded_versions(bundle)
    if not wanted:
        return
    connection = submitter.connection
    older = (
        f"the agent on machine {settings.name!r} is too old to report app versions: the recorded "
        f"versions of {', '.join(sorted(wanted))} were not checked (`milex agent deploy --machine "
        f"{settings.name}` updates it)."
    )
    if APP_VERSIONS not in connection.features:
        warn(older)
        return
    request = AppVersions(settings=settings, apps=sorted(wanted))
    try:
        reply = connection.request(request, APP_VERSIONS_TIMEOUT + 15, expect=AppVersionsReply)
    except AgentError as error:
        if error.error.code != "bad_request":
            raise
        warn(older)
        return
    if reply.unchecked:
        warn(f"the recorded versions of {', '.join(sorted(wanted))} were not checked on machine "
             f"{settings.name!r}: {reply.unchecked}.")  # fmt: skip
        return
    if reply.error:
        raise VersionCheckFailed(
            f"could not check the versions of {', '.join(sorted(wanted))} on machine {settings.name!r}: "
            f"{reply.error}; fix its env_command, or {GO_ON}."
        )
    mismatch = first_mismatch(wanted, reply.versions, settings.name)
    if mismatch is not None:
        raise mismatch


def first_mismatch(
    wanted: Mapping[str, Mapping[str, str]], found: Mapping[str, str], machine: str
) -> VersionMismatch | None:
    """The refusal for the first job whose recorded app version `found` does not have; None if none."""
    for app, jobs in wanted.items():
        there = found.get(app, "")
        for job, recorded in jobs.items():
            if there == recorded:
                continue
            others = len([name for name, version in jobs.items() if version != there]) - 1
            which = f"job {job!r}" + (f" (and {others} more)" if others else "")
            has = f"has {app} {there}" if there else f"has no {app} installed"
            return VersionMismatch(
                f"{which} was recorded with {app} {recorded}, but machine {machine!r} {has} (in its "
                f"env_command's environment): this run would not reproduce the record. Install "
                f"{app} {recorded} there, or {GO_ON}.",
                app=app,
                recorded=recorded,
                found=there,
                machine=machine,
            )
    return None
