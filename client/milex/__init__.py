"""Milex: schedule, run and watch reproducible jobs on SLURM clusters.

The Python API, imported lazily so that `import milex` stays cheap: `schedule`, `run`,
`submit`, `preview`, `wait`, `refresh`, `make_job`, `rerun`, and the model types `Job`, `SlurmOptions`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Job",
    "SlurmOptions",
    "make_job",
    "preview",
    "refresh",
    "rerun",
    "run",
    "schedule",
    "submit",
    "wait",
]
_FROM_MODEL = {"Job", "SlurmOptions"}


def __getattr__(name: str) -> Any:
    if name in _FROM_MODEL:
        from milex_common import model

        return getattr(model, name)
    if name == "rerun":
        from milex import reruns

        return reruns.rerun
    if name in __all__:
        from milex import api

        return getattr(api, name)
    raise AttributeError(f"module 'milex' has no attribute {name!r}")
