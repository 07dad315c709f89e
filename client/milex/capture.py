"""Capture an app's arguments the seed's way: run `NAME-cli ARGS` and read the JSON it prints."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from milex.config.environment import seconds_from_environment
from milex_common.errors import CaptureError

CAPTURE_TIMEOUT = 120.0
TIMEOUT_ENV = "MILEX_CAPTURE_TIMEOUT"


def find_cli(app: str) -> str:
    """The path of `APP-cli`: on PATH, or beside this Python (an un-activated virtual environment)."""
    name = f"{app}-cli"
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise CaptureError(
            f"no command {name!r} on PATH. Register it in your package's pyproject.toml under "
            f'[project.scripts] as {name} = "your_package.module:cli", install the package in '
            "this environment, and check the app name."
        )
    return found


def capture_arguments(app: str, arguments: Sequence[str]) -> dict[str, Any]:
    """The app's parsed arguments, as the JSON object its `-cli` entry point prints.

    It runs in a session of its own with no input: on a timeout the whole session is killed, so a
    child that keeps the output open (or a prompt waiting for input) cannot hang the capture.
    """
    timeout = capture_timeout()
    with subprocess.Popen(
        [find_cli(app), *arguments],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as process:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            finished = process.poll() is not None  # and a child of its own holds the output open
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            if finished:
                if process.returncode != 0:
                    raise _rejected(app, arguments, process.returncode, out, err) from None
                return _parse_output(app, out)
            raise CaptureError(
                f"{app}-cli did not finish within {timeout:g} s; it should only parse its arguments and "
                f"print them (move heavy imports into main()). {TIMEOUT_ENV}=SECONDS gives it longer."
            ) from None
    if process.returncode != 0:
        raise _rejected(app, arguments, process.returncode, out, err)
    return _parse_output(app, out)


def _rejected(app: str, arguments: Sequence[str], status: int, out: str, err: str) -> CaptureError:
    message = (err.strip() or out.strip()) or "(it printed nothing)"
    return CaptureError(
        f"{app}-cli rejected the arguments {list(arguments)} (exit status {status}):\n{message}"
    )


def capture_timeout() -> float:
    """How long `NAME-cli` may take: CAPTURE_TIMEOUT, or the environment's MILEX_CAPTURE_TIMEOUT."""
    return seconds_from_environment(TIMEOUT_ENV, CAPTURE_TIMEOUT, zero=False)


def _parse_output(app: str, output: str) -> dict[str, Any]:
    try:
        captured = json.loads(output)
    except json.JSONDecodeError as error:
        excerpt = output.strip()[:500] or "(nothing)"
        raise CaptureError(
            f"{app}-cli must print its arguments as one JSON object "
            f"(print(json.dumps(vars(args)))), but its output is not JSON ({error.msg} at line "
            f"{error.lineno}):\n{excerpt}"
        ) from None
    if not isinstance(captured, dict):
        raise CaptureError(
            f"{app}-cli printed JSON {type(captured).__name__}, not an object of arguments by name."
        )
    return captured
