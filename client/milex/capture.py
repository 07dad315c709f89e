"""Capture an app's arguments the seed's way: run `NAME-cli ARGS` and read the JSON it prints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from milex_common.errors import CaptureError

CAPTURE_TIMEOUT = 120.0


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
    """The app's parsed arguments, as the JSON object its `-cli` entry point prints."""
    command = [find_cli(app), *arguments]
    try:
        completed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=CAPTURE_TIMEOUT,
            check=False,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    except subprocess.TimeoutExpired:
        raise CaptureError(
            f"{app}-cli did not finish within {CAPTURE_TIMEOUT:.0f} s; it should only parse "
            "arguments and print them (move heavy imports into main())."
        ) from None
    if completed.returncode != 0:
        message = (completed.stderr.strip() or completed.stdout.strip()) or "(it printed nothing)"
        raise CaptureError(
            f"{app}-cli rejected the arguments {list(arguments)} (exit status "
            f"{completed.returncode}):\n{message}"
        )
    return _parse_output(app, completed.stdout)


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
