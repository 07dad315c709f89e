"""The job record on disk: a bundle of jobs keyed by job name, as JSON, versioned and user-agnostic."""

from __future__ import annotations

from typing import Any

import msgspec

from milex_common.errors import BundleError, InvalidValue, unknown_key
from milex_common.model import Bundle, Job, SlurmOptions

SCHEMA_VERSION = 1
# Bundles are keyed by job name, so bundle-level metadata sits under a key no job name can take.
METADATA_KEY = "_milex"
_SLURM_FIELDS = frozenset(SlurmOptions.__struct_fields__)
_JOB_FIELDS = Job.__struct_fields__
# Keys the reference implementation wrote with another spelling.
_LEGACY_KEYS = {"pre-commands": "pre_commands", "args": "script_args"}


def encode_bundle(bundle: Bundle) -> bytes:
    """The JSON text of a bundle record (indented, so a diff of two records is readable)."""
    document: dict[str, Any] = {METADATA_KEY: {"schema_version": SCHEMA_VERSION}}
    document.update(msgspec.to_builtins(bundle.jobs))
    return msgspec.json.format(msgspec.json.encode(document), indent=4) + b"\n"


def decode_bundle(data: bytes, *, name: str, created: str, source: str) -> Bundle:
    """Parse a record written by Milex or by the reference implementation; `source` names it in errors."""
    try:
        document = msgspec.json.decode(data)
    except msgspec.DecodeError as error:
        raise BundleError(f"{source} is not valid JSON ({error}); fix or remove the file.") from None
    if not isinstance(document, dict):
        raise BundleError(f"{source} must hold a JSON object of jobs keyed by job name.")
    metadata = document.pop(METADATA_KEY, {"schema_version": 0})
    version = metadata.get("schema_version") if isinstance(metadata, dict) else None
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise BundleError(
            f"{source} has record schema version {version!r}; this Milex reads versions up to "
            f"{SCHEMA_VERSION}. Upgrade milex-scheduler to read it."
        )
    jobs = {key: _decode_job(key, value, source) for key, value in document.items()}
    return Bundle(name=name, created=created, jobs=jobs)


def _decode_job(key: str, raw: Any, source: str) -> Job:
    where = f"{source}, job {key!r}"
    if not isinstance(raw, dict):
        raise BundleError(f"{where}: a job must be a JSON object, not {type(raw).__name__}.")
    fields: dict[str, Any] = {_LEGACY_KEYS.get(str(k), str(k)): v for k, v in raw.items() if v is not None}
    for field in fields:
        if field not in _JOB_FIELDS:  # Job drops unknown fields (as the wire must): refuse them here
            raise BundleError(unknown_key(where, field, _JOB_FIELDS))
    fields.setdefault("name", key)
    slurm = fields.get("slurm", {})
    if isinstance(slurm, dict):
        # Unknown SLURM keys of older records are sbatch options, which the reference implementation
        # rendered as `--key-with-dashes=value`: keep them so rather than fail.
        extra = {
            k.replace("_", "-"): v if isinstance(v, bool) else str(v)
            for k, v in slurm.items()
            if k not in _SLURM_FIELDS and v is not None
        }
        known = {k: v for k, v in slurm.items() if k in _SLURM_FIELDS and v is not None}
        fields["slurm"] = {**known, "extra": {**known.get("extra", {}), **extra}}
    try:
        job = msgspec.convert(fields, Job, str_keys=True)
    except msgspec.ValidationError as error:
        raise BundleError(f"{where}: {error}.") from None
    if job.name != key:
        raise BundleError(f"{where}: its 'name' is {job.name!r}; a job's name must be its key.")
    try:  # a record edited by hand is checked as `milex-schedule` checks what it records
        return job.validate()
    except InvalidValue as error:
        raise BundleError(f"{where}: {error} Fix the record, or schedule the job again.") from None
