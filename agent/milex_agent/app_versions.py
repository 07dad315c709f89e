"""The versions of apps in a machine's environment: one check through its env_command, as a job sees it.

The check is a bash script that starts as a rendered sbatch script does (`export MILEX=...`, then the
machine's env_command) and runs a Python there: for each app, the console script on PATH, the Python
its first line names (a pip-installed script names its environment's Python), and in that Python the
installed distribution whose console script the app is. It runs where jobs are submitted from (the
agent's directory), with the agent's environment, as sbatch passes it on. One check per bundle, on a
worker of the agent's loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from milex_common.intervals import APP_VERSIONS_TIMEOUT
from milex_common.model import MachineSettings
from milex_common.protocol import AppVersions, AppVersionsReply
from milex_common.render import environment_lines

CHECK_TIMEOUT = APP_VERSIONS_TIMEOUT
MARK = "milex-app-versions:"
# The version of one app's distribution, in the Python that runs it: argv[1] names the app.
_LOOKUP = """
import sys
from importlib import metadata
for dist in metadata.distributions():
    for ep in dist.entry_points:
        if ep.group == "console_scripts" and ep.name == sys.argv[1]:
            print(dist.version)
            raise SystemExit(0)
"""
# Run by the environment's Python: each app's own Python, asked in turn; one line of JSON at the end.
_CHECK = """
import json, os, shlex, shutil, subprocess, sys
LOOKUP = sys.argv[1]

def interpreter(path):
    try:
        with open(path, "rb") as script:
            head = script.read(2048).decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    if not head or not head[0].startswith("#!"):
        return None
    words = head[0][2:].split()
    if words[:1] == ["/bin/sh"] and len(head) > 1 and head[1].startswith("'''exec' "):
        words = shlex.split(head[1][len("'''exec' "):])[:1]  # pip's form for a long or spaced path
    if words and os.path.basename(words[0]) == "env":
        words = words[1:]
    return words[0] if words and "python" in os.path.basename(words[0]) else None

def version(app):
    path = shutil.which(app)
    if path is None:
        return ""
    python = interpreter(path) or sys.executable
    try:
        done = subprocess.run([python, "-c", LOOKUP, app], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""

print(MARK + json.dumps({app: version(app) for app in sys.argv[2:]}))
"""


def check_script(settings: MachineSettings, apps: Sequence[str]) -> list[str]:
    """The argv of the check: bash, the environment as a job's script makes it, then the Python found
    there (or the agent's own) running the check on `apps`."""
    fallback = sys.executable
    script = "\n".join(
        [
            *environment_lines(settings),
            'python=$(command -v python3 || command -v python || echo "$0")',
            'exec "$python" -c "$1" "$2" "${@:3}"',
        ]
    )
    check = f"MARK = {MARK!r}\n{_CHECK}"
    return ["bash", "-c", script, fallback, check, _LOOKUP, *apps]


def app_versions(settings: MachineSettings, apps: Sequence[str]) -> dict[str, str]:
    """The version of each of `apps` in the machine's environment, "" for one not installed; a
    RuntimeError saying what went wrong when the check could not be made."""
    if not apps:
        return {}
    argv = check_script(settings, apps)
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a timeout kills the whole tree: env_command may start anything
    ) as process:
        try:
            out, err = process.communicate(timeout=CHECK_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise RuntimeError(f"the check took more than {CHECK_TIMEOUT:g} s") from None
    found = [line[len(MARK) :] for line in out.splitlines() if line.startswith(MARK)]
    if not found:
        said = (err.strip() or out.strip() or "nothing").splitlines()[-1][:300]
        raise RuntimeError(
            f"the env_command's environment gave no answer (exit {process.returncode}: {said})"
        )
    versions = json.loads(found[-1])
    return {app: str(versions.get(app, "")) for app in apps}


IN_CONTAINER = (
    "the agent runs in a container, apart from the environment its jobs run in, where it cannot read "
    "the apps' versions"
)


def answer(request: AppVersions) -> AppVersionsReply:
    """The reply to `request`: the versions found, or the reason there are none (on a worker)."""
    if os.environ.get("MILEX_AGENT_CONTAINER"):  # set by the Dockerfile
        return AppVersionsReply(id=request.id, unchecked=IN_CONTAINER)
    try:
        versions = app_versions(request.settings, request.apps)
    except (RuntimeError, OSError, ValueError) as error:
        return AppVersionsReply(id=request.id, error=str(error))
    return AppVersionsReply(id=request.id, versions=versions)
