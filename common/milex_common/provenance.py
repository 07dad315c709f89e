"""Which code a job runs: the app's distribution and version, its git state, Python's and Milex's versions."""

from __future__ import annotations

import msgspec


class Provenance(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What ran a job's app when it was recorded, and nothing about who recorded it or where: no
    user, host, path, account or environment command.

    `distribution` and `version` name the installed distribution whose console script is the job's
    `script` ("" when no entry point provides it). `commit`, `dirty` and `diff_sha256` describe the
    app's source when it is a git checkout (an editable install): the commit, whether the tree had
    changes or untracked files, and a sha256 of `git diff HEAD` (and of the untracked files' names).
    Unknown fields are dropped when decoded, as for `Job`.
    """

    distribution: str = ""
    version: str = ""
    commit: str = ""
    dirty: bool = False
    diff_sha256: str = ""
    python: str = ""
    milex: str = ""

    @property
    def checkable(self) -> bool:
        """Whether a machine's version of the app can be compared with this one: an entry point gave it."""
        return bool(self.distribution and self.version)
