"""The boundaries of pyproject's [tool.importlinter] hold, and a wrong import breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` with pyproject's contracts over the packages in `tree` (a copy of the source)."""
    path = os.pathsep.join(str(tree / side) for side in ("client", "agent", "common"))
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(REPO / "pyproject.toml")],
        capture_output=True, text=True, check=False, cwd=tree,
        env={**os.environ, "PYTHONPATH": path},
    )  # fmt: skip


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for side in ("client", "agent", "common"):
        shutil.copytree(REPO / side, tmp_path / side, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_source_keeps_every_contract(tree: Path) -> None:
    result = lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "wrong", "contract"),
    [
        ("common/milex_common/files.py", "import milex.records", "common imports neither side"),
        ("agent/milex_agent/poller.py", "import milex.config.file", "the agent never imports the client"),
        ("client/milex/api.py", "import milex_agent.daemon", "the client runs the agent's code only"),
        ("client/milex/machine/settings.py", "import milex.machine.endpoint", "no import loop"),
    ],
)
def test_a_wrong_import_breaks_its_contract(tree: Path, module: str, wrong: str, contract: str) -> None:
    source = tree / module
    source.write_text(source.read_text() + f"\n{wrong}  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert f"{contract}" in result.stdout and "BROKEN" in result.stdout, result.stdout
