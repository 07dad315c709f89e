"""An editable install, as deploy/setup.sh makes it, imports the package `milex` even from a directory
that holds the data directory `milex/` (`~/milex`, the default path, seen from `$HOME`).

The default (lenient) editable install of setuptools puts a finder at the end of `sys.meta_path`, after
the path finder, which takes the directory `milex/` in the current directory for a namespace package:
`import milex` gave a `milex` without `__file__`. The strict mode puts a tree of links to the package
folders on `sys.path`, where the path finder finds the regular package first.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]


def setup_editable_mode() -> str:
    """The editable mode of deploy/setup.sh's pip line (setuptools' default when it names none)."""
    pip_lines = [line for line in (CHECKOUT / "deploy" / "setup.sh").read_text().splitlines()
                 if "pip\" install" in line and " -e " in line]  # fmt: skip
    assert len(pip_lines) == 1, pip_lines
    mode = re.search(r"editable_mode=(\w+)", pip_lines[0])
    return mode[1] if mode else "lenient"


@pytest.mark.timeout(300)
def test_milex_is_the_package_even_beside_a_milex_data_directory(tmp_path: Path) -> None:
    project = tmp_path / "project"  # a copy: the strict mode writes its link tree into build/
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(CHECKOUT / name, project / name)
    for folder in ("client", "agent", "common"):
        shutil.copytree(CHECKOUT / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
         "--target", str(site), "--config-settings", f"editable_mode={setup_editable_mode()}",
         "-e", str(project)],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    if install.returncode != 0 and "No matching distribution found for setuptools" in install.stderr:
        pytest.skip("no package index to build the editable install with")
    assert install.returncode == 0, install.stderr
    home = tmp_path / "home"
    (home / "milex" / "jobs").mkdir(parents=True)
    # -E -s -S: no PYTHONPATH, no site-packages but the install's, as a venv holding only Milex would
    # be; `-c` puts the current directory, `home`, first on sys.path.
    code = f"import site; site.addsitedir({str(site)!r}); import milex; print(milex.__file__)"
    imported = subprocess.run(
        [sys.executable, "-E", "-s", "-S", "-c", code],
        cwd=home, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    found = imported.stdout.strip()
    assert found != "None", "`import milex` found the data directory milex/ as a namespace package"
    assert Path(found).resolve() == project / "client" / "milex" / "__init__.py"
