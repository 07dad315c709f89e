"""The apps' recorded versions against a machine's: which apps a bundle names, and the first job whose
recorded version the machine does not have. Pure: the client (before a run, milex.provenance.check)
and the agent (a SubmitBundle that checks versions) compare with these alone; the words the user reads
are the client's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from milex_common.model import Bundle

# For each app (a console script's name): its recorded version by job name.
Wanted = dict[str, dict[str, str]]


class Difference(NamedTuple):
    """A job whose app the machine has in another version (`found`, "" when not installed) than
    recorded; `others`: how many more jobs of that app were recorded with a version it lacks."""

    app: str
    job: str
    recorded: str
    found: str
    others: int


def recorded_versions(bundle: Bundle) -> Wanted:
    """For each app of `bundle` with a checkable provenance: its recorded version by job name."""
    wanted: Wanted = {}
    for job in bundle.ordered_jobs():
        if job.provenance is not None and job.provenance.checkable:
            wanted.setdefault(job.script, {})[job.name] = job.provenance.version
    return wanted


def first_difference(wanted: Mapping[str, Mapping[str, str]], found: Mapping[str, str]) -> Difference | None:
    """The first job whose recorded app version `found` does not have; None if every one matches."""
    for app, jobs in wanted.items():
        there = found.get(app, "")
        for job, recorded in jobs.items():
            if there == recorded:
                continue
            others = len([name for name, version in jobs.items() if version != there]) - 1
            return Difference(app=app, job=job, recorded=recorded, found=there, others=others)
    return None
