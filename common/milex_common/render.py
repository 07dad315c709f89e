"""The sbatch script of a job: a pure function of the job record and the machine settings."""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from typing import Any

from milex_common.model import Job, MachineSettings

# Options the renderer writes itself; the rest of SlurmOptions maps field -> sbatch long option.
# sbatch splits `#SBATCH` lines at white space and stops at `#`; such values need quotes.
_SBATCH_SAFE = re.compile(r"[A-Za-z0-9_.,:/%=+@-]*")
_SBATCH_NAMES = {
    "time": "time",
    "nodes": "nodes",
    "tasks": "ntasks",
    "cpus_per_task": "cpus-per-task",
    "mem": "mem",
    "gres": "gres",
    "partition": "partition",
    "qos": "qos",
    "array": "array",
}


def script_stem(bundle_stem: str, job_name: str) -> str:
    """The file name (without extension) of a job's script and logs: `BUNDLE_DATE_JOB`."""
    return f"{bundle_stem}_{job_name}"


def log_paths(job: Job, settings: MachineSettings, stem: str) -> tuple[str, str]:
    """Where SLURM writes the job's stdout and stderr, with SLURM's own %j / %A_%a patterns."""
    pattern = "%A_%a" if job.slurm.array else "%j"
    base = posixpath.join(settings.path, "slurm", f"{stem}-{pattern}")
    return f"{base}.out", f"{base}.err"


def render_script(job: Job, settings: MachineSettings, stem: str, *, array_offset: int = 0) -> str:
    """The complete sbatch script for `job` on the machine `settings` describes.

    `array_offset`: `job` is one window of a larger array (see milex_agent.array_windows), its indices
    shifted down by the offset; the script shifts SLURM's array variables back up, first thing.
    """
    lines = ["#!/bin/bash", *_sbatch_lines(job, settings, stem), ""]
    if array_offset:
        lines.extend(_array_window_lines(job, array_offset))
    lines.extend(environment_lines(settings))
    lines.extend(job.pre_commands)
    lines.append(" \\\n    ".join(app_command(job)))
    return "\n".join(lines) + "\n"


def environment_lines(settings: MachineSettings) -> list[str]:
    """The lines that make a job's environment on the machine: `$MILEX`, then its env_command."""
    return [
        f"export MILEX={shlex.quote(settings.path)}",
        *([settings.env_command] if settings.env_command else []),
    ]


def _array_window_lines(job: Job, offset: int) -> list[str]:
    """Exports giving the app the index the user asked for; a run outside an array task fails loudly."""
    if job.slurm.array is None or offset < 0:
        raise ValueError(f"an array offset ({offset}) needs an array job, shifted down by a positive offset")
    lines = [
        f"# One window of a larger array: SLURM runs its indices shifted down by {offset}.",
        f"export MILEX_ARRAY_OFFSET={offset}",
    ]
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX"):
        lines.append(f"export {name}=$((${{{name}:?this script runs as a SLURM array task}} + {offset}))")
    return lines


def app_command(job: Job) -> list[str]:
    """The app's command line as shell words, each argument quoted to reach the app unchanged."""
    words = [shlex.quote(job.script)]
    for key, value in job.script_args.items():
        words.extend(_argument_words(key, value))
    return words


def _argument_words(key: str, value: Any) -> list[str]:
    flag = f"--{key}"
    if value is None or value is False:
        return []
    if value is True:
        return [shlex.quote(flag)]
    if isinstance(value, list):
        # nargs-style: the flag once, then every value; an empty list is the app's default.
        return [shlex.quote(flag), *(shlex.quote(_text(item)) for item in value)] if value else []
    # `--flag=value` keeps a value that starts with a dash from being read as another flag.
    return [shlex.quote(f"{flag}={_text(value)}")]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _sbatch_lines(job: Job, settings: MachineSettings, stem: str) -> list[str]:
    output, error = log_paths(job, settings, stem)
    options: list[tuple[str, str | None]] = [("job-name", job.slurm.job_name or job.name)]
    if settings.slurm_account:
        options.append(("account", settings.slurm_account))
    options += [("output", output), ("error", error)]
    for field, option in _SBATCH_NAMES.items():
        value = getattr(job.slurm, field)
        if value is not None:
            options.append((option, str(value)))
    for option, value in sorted(job.slurm.extra.items()):
        if value is not False:
            options.append((option, None if value is True else str(value)))
    return [
        f"#SBATCH --{name}" if value is None else f"#SBATCH --{name}={_sbatch_value(value)}"
        for name, value in options
    ]


def _sbatch_value(value: str) -> str:
    """`value` as sbatch reads it back from an `#SBATCH` line: double-quoted unless plainly safe."""
    if _SBATCH_SAFE.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
