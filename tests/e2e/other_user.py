"""A second, unprivileged user with Milex installed in a venv of its own (built from wheels)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WHEELS = Path("/tmp/milex-e2e-wheels")


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=600, **kwargs)


def build_wheels() -> list[Path]:
    """Wheels of Milex and the example app; a user who cannot write the source tree installs these."""
    WHEELS.mkdir(exist_ok=True)
    for old in WHEELS.glob("*.whl"):
        old.unlink()
    for project in (REPO, REPO / "examples"):
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(WHEELS), str(project)])
    WHEELS.chmod(0o755)
    return sorted(WHEELS.glob("*.whl"))


@dataclass
class OtherUser:
    """An unprivileged account on this host, and how to run Milex commands as it."""

    name: str
    home: Path

    @property
    def venv(self) -> Path:
        return self.home / "venv"

    def env(self) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "USER": self.name,
            "PATH": f"{self.venv}/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
        }

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `argv` as this user, with their venv first on PATH."""
        env = [f"{key}={value}" for key, value in self.env().items()]
        command = ["runuser", "-u", self.name, "--", "env", "-i", *env, *argv]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd="/")
        if check and completed.returncode != 0:
            raise AssertionError(
                f"as {self.name}: {' '.join(argv)} exited {completed.returncode}\n"
                f"{completed.stdout}\n{completed.stderr}"
            )
        return completed

    def configure(self, account: str) -> Path:
        """Give the user a `local` machine on the test cluster, with their own account."""
        path = self.home / "milex"
        shutil.rmtree(path, ignore_errors=True)  # a fresh start for every test
        machines = {"local": {"path": str(path), "env_command": f"source {self.venv}/bin/activate",
                              "slurm_account": account}}  # fmt: skip
        source = self.home / "machines.json"
        source.write_text(json.dumps(machines))
        os.chown(source, *self.ids)
        self.run("milex-configuration", "--from", str(source))
        return path

    @property
    def ids(self) -> tuple[int, int]:
        entry = pwd.getpwnam(self.name)
        return entry.pw_uid, entry.pw_gid


def ensure_user(name: str) -> OtherUser:
    """Create `name` if needed, and (re)install Milex into their venv from freshly built wheels."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        run(["useradd", "--create-home", "--shell", "/bin/bash", name])
    user = OtherUser(name=name, home=Path(pwd.getpwnam(name).pw_dir))
    wheels = [str(w) for w in build_wheels()]
    if not (user.venv / "bin" / "python").exists():
        # The default Python lives under root's home, which this user cannot read.
        user.run("/usr/bin/python3", "-m", "venv", str(user.venv))
    user.run(str(user.venv / "bin" / "pip"), "install", "-q", "--force-reinstall", *wheels)
    return user
