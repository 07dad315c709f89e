"""An app's provenance on this laptop: the distribution behind its console script, and its git state.

Read at schedule time from the installed entry point (importlib.metadata, imported here only) and,
for a source that is a git checkout, from git run with a short timeout. Anything that cannot be
read (no entry point, no git, not a checkout, git failing) leaves its fields empty: never an error.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

from milex_common.provenance import Provenance
from milex_common.version import VERSION

GIT_TIMEOUT = 5.0
# Git's own variables would point it at another repository than the app's.
_GIT_VARIABLES = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY")


@functools.lru_cache(maxsize=64)
def app_provenance(app: str) -> Provenance:
    """The provenance of the console script `app` in this environment (kept per process: a program
    that submits many jobs of one app asks git once)."""
    return provenance_of(app)


def provenance_of(app: str, path: list[str] | None = None) -> Provenance:
    """The provenance of the console script `app` among the distributions installed on `path`
    (default: sys.path)."""
    found = entry_point_distribution(app, path)
    if found is None:
        return Provenance(python=platform.python_version(), milex=VERSION)
    distribution, entry_point = found
    commit, dirty, diff = git_state(source_checkout(distribution, entry_point))
    return Provenance(
        distribution=distribution.metadata["Name"] or "",
        version=distribution.version or "",
        commit=commit,
        dirty=dirty,
        diff_sha256=diff,
        python=platform.python_version(),
        milex=VERSION,
    )


def entry_point_distribution(
    app: str, path: list[str] | None = None
) -> tuple[metadata.Distribution, metadata.EntryPoint] | None:
    """The distribution installed on `path` (default: sys.path) whose console script `app` is, and
    that entry point; None if none is."""
    found = metadata.distributions() if path is None else metadata.distributions(path=path)
    for distribution in found:
        for entry_point in distribution.entry_points:
            if entry_point.group == "console_scripts" and entry_point.name == app:
                return distribution, entry_point
    return None


def source_checkout(distribution: metadata.Distribution, entry_point: metadata.EntryPoint) -> Path | None:
    """Where the app's source may be a git checkout: the local directory an editable install names
    (direct_url.json), else the directory of its module, if git tracks that file; None when neither
    (an installed copy, in site-packages, is no checkout even inside a work tree)."""
    project = _direct_url_directory(distribution)
    if project is not None:
        return project
    module = _module_file(distribution, entry_point.module)
    if module is None or _git(module.parent, "ls-files", "--error-unmatch", "--", module.name) is None:
        return None
    return module.parent


def _direct_url_directory(distribution: metadata.Distribution) -> Path | None:
    """The local directory pip installed the distribution from, for an editable install."""
    try:
        text = distribution.read_text("direct_url.json")
        direct = json.loads(text) if text else {}
    except (OSError, ValueError):
        return None
    if not isinstance(direct, dict) or not direct.get("dir_info", {}).get("editable"):
        return None
    url = urlparse(str(direct.get("url", "")))
    if url.scheme != "file":
        return None
    path = Path(unquote(url.path))
    return path if path.is_dir() else None


def _module_file(distribution: metadata.Distribution, module: str) -> Path | None:
    """The file of `module`'s top-level package among the distribution's files, or as the import
    system would find it (without importing it)."""
    top = module.partition(".")[0]
    for relative in (f"{top}/__init__.py", f"{top}.py"):
        located = Path(str(distribution.locate_file(relative)))
        if located.is_file():
            return located
    from importlib.util import find_spec

    try:
        spec = find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        return None
    return Path(spec.origin)


def git_state(directory: Path | None) -> tuple[str, bool, str]:
    """The commit of the checkout at `directory`, whether it has changes (untracked files count),
    and a sha256 of `git diff HEAD` there (followed, if any, by the untracked files' names); ("", False, "")
    when it is no checkout or git cannot say."""
    if directory is None:
        return "", False, ""
    commit = _git(directory, "rev-parse", "--verify", "HEAD")
    if not commit:
        return "", False, ""
    diff = _git(directory, "diff", "HEAD", "--no-ext-diff", "--no-textconv", "--no-color", "--", ".")
    untracked = _git(directory, "ls-files", "--others", "--exclude-standard", "-z", "--", ".")
    if diff is None or untracked is None:
        return commit.strip().decode(), False, ""
    if not diff and not untracked:
        return commit.strip().decode(), False, ""
    digest = hashlib.sha256(diff + (b"\0untracked\0" + untracked if untracked else b"")).hexdigest()
    return commit.strip().decode(), True, digest


def _git(directory: Path, *arguments: str) -> bytes | None:
    """git's output in `directory`, None if git is missing, fails or takes longer than GIT_TIMEOUT."""
    environment = {key: value for key, value in os.environ.items() if key not in _GIT_VARIABLES}
    try:
        done = subprocess.run(
            ["git", "-C", str(directory), *arguments],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=GIT_TIMEOUT,
            env=environment,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None
