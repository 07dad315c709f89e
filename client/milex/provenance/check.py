"""Before a run: the apps' versions a machine's environment has, against those the record names.

A run whose app differs from the recorded one would not reproduce the record, so `milex-run`
refuses it before anything is submitted, unless the user says to go on (`--any-version`,
`any_version=True`). Jobs without a checkable provenance (older records, jobs built in memory
without an entry point) are not checked; an agent too old to answer is named in one warning line.
An agent that checks the versions in the submit request itself (SUBMIT_CHECKS_VERSIONS) is asked
nothing more: its refusal comes back as the reply to the SubmitBundle, read here (`AgentCheck`).
The comparison is milex_common.version_check's, the agent's too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from milex.records import warn
from milex_common.connection import AgentError
from milex_common.errors import MilexError
from milex_common.intervals import APP_VERSIONS_TIMEOUT
from milex_common.model import Bundle, MachineSettings
from milex_common.protocol import APP_VERSIONS, SUBMIT_CHECKS_VERSIONS, AppVersions, AppVersionsReply
from milex_common.version_check import Wanted, first_difference, recorded_versions

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


class AgentCheck:
    """The versions of `wanted` that the agent checks in the submit request itself (an agent with the
    SUBMIT_CHECKS_VERSIONS feature): its answers turned into today's refusal or warning."""

    def __init__(self, wanted: Wanted, machine: str) -> None:
        self.wanted, self.machine = wanted, machine

    def refusal(self, reply: AppVersionsReply) -> VersionCheckFailed:
        """The error for the check's reply that refused the submission (nothing was submitted)."""
        if reply.error:
            return _failed(self.wanted, self.machine, reply.error)
        return first_mismatch(self.wanted, reply.versions, self.machine) or VersionCheckFailed(
            f"the agent on machine {self.machine!r} refused the versions of "
            f"{', '.join(sorted(self.wanted))} without saying which differs; {GO_ON}."
        )

    def unchecked(self, why: str) -> None:
        """Warn that the versions were not checked (the run went on), saying `why`."""
        _warn_unchecked(self.wanted, self.machine, why)


def check_versions(submitter: AgentSubmitter, bundle: Bundle, settings: MachineSettings) -> AgentCheck | None:
    """Refuse (VersionMismatch) a run of `bundle` whose apps the machine has in another version than
    recorded; VersionCheckFailed when it cannot tell. An agent without the check: a warning.

    An agent that checks them in the submit request (SUBMIT_CHECKS_VERSIONS) is not asked here: the
    AgentCheck returned goes with the submission (AgentSubmitter.submit), one request instead of two."""
    wanted = recorded_versions(bundle)
    if not wanted:
        return None
    connection = submitter.connection
    if SUBMIT_CHECKS_VERSIONS in connection.features:
        return AgentCheck(wanted, settings.name)
    older = (
        f"the agent on machine {settings.name!r} is too old to report app versions: the recorded "
        f"versions of {', '.join(sorted(wanted))} were not checked (`milex agent deploy --machine "
        f"{settings.name}` updates it)."
    )
    if APP_VERSIONS not in connection.features:
        warn(older)
        return None
    request = AppVersions(settings=settings, apps=sorted(wanted))
    try:
        reply = connection.request(request, APP_VERSIONS_TIMEOUT + 15, expect=AppVersionsReply)
    except AgentError as error:
        if error.error.code != "bad_request":
            raise
        warn(older)
        return None
    if reply.unchecked:
        _warn_unchecked(wanted, settings.name, reply.unchecked)
        return None
    if reply.error:
        raise _failed(wanted, settings.name, reply.error)
    mismatch = first_mismatch(wanted, reply.versions, settings.name)
    if mismatch is not None:
        raise mismatch
    return None


def _warn_unchecked(wanted: Wanted, machine: str, why: str) -> None:
    apps = ", ".join(sorted(wanted))
    warn(f"the recorded versions of {apps} were not checked on machine {machine!r}: {why}.")


def _failed(wanted: Wanted, machine: str, error: str) -> VersionCheckFailed:
    return VersionCheckFailed(
        f"could not check the versions of {', '.join(sorted(wanted))} on machine {machine!r}: "
        f"{error}; fix its env_command, or {GO_ON}."
    )


def first_mismatch(
    wanted: Mapping[str, Mapping[str, str]], found: Mapping[str, str], machine: str
) -> VersionMismatch | None:
    """The refusal for the first job whose recorded app version `found` does not have; None if none."""
    difference = first_difference(wanted, found)
    if difference is None:
        return None
    app, recorded, there = difference.app, difference.recorded, difference.found
    which = f"job {difference.job!r}" + (f" (and {difference.others} more)" if difference.others else "")
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
