"""What the laptop's records add to the agent's view of a job: its app's provenance (the bundle record),
the sha256 of the script it ran and the host its agent ran on (the run record)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from milex.records import job_key, listed_submissions, load_bundle
from milex_common.errors import BundleError
from milex_common.model import Job
from milex_common.protocol import TrackedJob


def described_jobs(jobs_dir: Path, machine: str, tracked: Iterable[TrackedJob]) -> list[dict[str, Any]]:
    """Each tracked job as JSON-ready fields, with `provenance`, `script_sha256` and `host` where the
    records here have them (jobs submitted from elsewhere have none)."""
    described = []
    records: dict[str, tuple[dict[str, Job], dict[str, tuple[str, str]]]] = {}
    for job in tracked:
        if job.bundle not in records:
            records[job.bundle] = _records_of(jobs_dir, machine, job.bundle)
        recorded, runs = records[job.bundle]
        fields: dict[str, Any] = msgspec.to_builtins(job)
        source = recorded.get(job.name)
        if source is not None and source.provenance is not None:
            fields["provenance"] = msgspec.to_builtins(source.provenance)
        sha256, host = runs.get(job.key, ("", ""))
        if sha256 and not job.script_sha256:
            fields["script_sha256"] = sha256
        if host:
            fields["host"] = host
        described.append(fields)
    return described


def _records_of(jobs_dir: Path, machine: str, stem: str) -> tuple[dict[str, Job], dict[str, tuple[str, str]]]:
    """The jobs of the bundle record `stem`, and (script sha256, host) of each of its runs' jobs on
    `machine` by key; empty for what is not recorded here or cannot be read."""
    name, _, date = stem.rpartition("_")
    try:
        jobs = load_bundle(jobs_dir, name, date).jobs if name else {}
    except BundleError:
        jobs = {}
    runs = {
        job_key(stem, job_name, run.run_id): (record.script_sha256, run.host)
        for run in listed_submissions(jobs_dir, stem)
        if run.machine == machine and run.run_id
        for job_name, record in run.jobs.items()
    }
    return jobs, runs
