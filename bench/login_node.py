"""The benchmark's login-node account: a user of its own with Milex installed from this source tree.

The account (`milex-bench`, or $MILEX_BENCH_USER) is not the e2e tests' `milex-login`, whose keys,
venv and directories those tests rewrite while they run. Dependencies live in one venv; Milex
itself is installed per source digest beside it (`overlays/DIGEST`, put first on PYTHONPATH by the
machine's env_command), so runs from different checkouts can share the account, and an unchanged
tree costs nothing to set up again.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
USER = os.environ.get("MILEX_BENCH_USER", "milex-bench")
SYSTEM_PYTHON = "/usr/bin/python3"  # the venv's own Python lives under /root, which the user cannot read
SETUP_LOCK = Path(tempfile.gettempdir()) / "milex-bench-setup.lock"
SOURCES = ("client", "agent", "common")
OVERLAY_DAYS = 3  # an overlay unused this long is removed


@dataclass(frozen=True)
class LoginNode:
    """The benchmark user on this host, and where this run keeps its files in that user's home."""

    name: str
    home: Path
    uid: int
    gid: int
    overlay: Path
    run_dir: Path

    @property
    def venv(self) -> Path:
        return self.home / "venv"

    @property
    def machine_path(self) -> Path:
        return self.run_dir / "milex"

    @property
    def wrappers(self) -> Path:
        return self.run_dir / "bin"

    @property
    def calls_log(self) -> Path:
        return self.run_dir / "slurm-calls.log"

    @property
    def marks(self) -> Path:
        return self.run_dir / "marks"

    def env_command(self, *, counted: bool) -> str:
        """The machine's env_command: the venv, this tree's Milex first, and if `counted` the wrappers."""
        path = f"{self.overlay}/bin:$PATH"
        if counted:
            path = f"{self.wrappers}:{path}"
        return f"source {self.venv}/bin/activate && export PYTHONPATH={self.overlay} PATH={path}"

    def env(self) -> dict[str, str]:
        return {"HOME": str(self.home), "USER": self.name, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}

    def command(self, *argv: str) -> list[str]:
        """`argv` as this user, in a clean environment."""
        env = [f"{key}={value}" for key, value in self.env().items()]
        return ["runuser", "-u", self.name, "--", "env", "-i", *env, *argv]

    def run(self, *argv: str, timeout: float = 600) -> str:
        done = subprocess.run(self.command(*argv), capture_output=True, text=True, timeout=timeout, cwd="/")
        if done.returncode != 0:
            raise RuntimeError(f"as {self.name}: {' '.join(argv)} exited {done.returncode}:\n{done.stderr}")
        return done.stdout

    def owned_dir(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, self.uid, self.gid)
        return path


def source_digest() -> str:
    """A digest of what gets installed: the packages' sources and pyproject.toml."""
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes())
    for top in SOURCES:
        for path in sorted((REPO / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@contextmanager
def _setup_lock() -> Iterator[None]:
    """One benchmark at a time creates the user and installs into its venv."""
    with open(SETUP_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def prepare(public_key: str, run_id: str) -> LoginNode:
    """The benchmark user, ready: account, authorized key, venv, this tree's Milex, this run's directory."""
    with _setup_lock():
        entry = _ensure_account()
        home = Path(entry.pw_dir)
        node = LoginNode(
            USER,
            home,
            entry.pw_uid,
            entry.pw_gid,
            home / "overlays" / source_digest(),
            home / "runs" / run_id,
        )
        _authorize(node, public_key)
        _ensure_venv(node)
        _ensure_overlay(node)
        _prune_overlays(node)
    for directory in (node.run_dir, node.machine_path, node.wrappers, node.marks):
        node.owned_dir(directory)
    return node


def release(node: LoginNode, public_key: str) -> None:
    """Remove this run's key and directory (other runs may be using the account)."""
    with _setup_lock():
        authorized = node.home / ".ssh" / "authorized_keys"
        lines = [line for line in authorized.read_text().splitlines() if line.strip() != public_key.strip()]
        authorized.write_text("".join(line + "\n" for line in lines))
    shutil.rmtree(node.run_dir, ignore_errors=True)


def _ensure_account() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", USER], check=True)
        # A locked password field makes sshd (UsePAM no) refuse the account, even for keys.
        subprocess.run(["usermod", "-p", "*", USER], check=True)
        return pwd.getpwnam(USER)


def _authorize(node: LoginNode, public_key: str) -> None:
    ssh = node.owned_dir(node.home / ".ssh")
    ssh.chmod(0o700)
    authorized = ssh / "authorized_keys"
    lines = authorized.read_text().splitlines() if authorized.exists() else []
    authorized.write_text("".join(line + "\n" for line in [*lines, public_key.strip()]))
    authorized.chmod(0o600)
    os.chown(authorized, node.uid, node.gid)


def _dependencies() -> list[str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10: what the installed distribution declares
        from importlib.metadata import requires

        return [r for r in requires("milex-scheduler") or [] if "extra ==" not in r]
    with open(REPO / "pyproject.toml", "rb") as file:
        return list(tomllib.load(file)["project"]["dependencies"])


def _ensure_venv(node: LoginNode) -> None:
    """The venv with Milex's dependencies (from the package index, once), but not Milex itself."""
    wanted = "\n".join(sorted(_dependencies()))
    marker = node.venv / "milex-bench-dependencies.txt"
    if marker.exists() and marker.read_text() == wanted:
        return
    if not (node.venv / "bin" / "python").exists():
        node.run(SYSTEM_PYTHON, "-m", "venv", str(node.venv))
    print(f"bench: installing Milex's dependencies into {node.venv}", file=sys.stderr)
    node.run(str(node.venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", *_dependencies())
    marker.write_text(wanted)
    os.chown(marker, node.uid, node.gid)


def _prune_overlays(node: LoginNode) -> None:
    """Keep this run's overlay fresh and drop those no run has used for a while (other trees)."""
    os.utime(node.overlay)
    for overlay in node.overlay.parent.iterdir():
        if time.time() - overlay.stat().st_mtime > OVERLAY_DAYS * 86400:
            shutil.rmtree(overlay, ignore_errors=True)


def _ensure_overlay(node: LoginNode) -> None:
    """This tree's Milex, built as a wheel and installed into `overlays/DIGEST` (once per digest)."""
    if (node.overlay / "bin" / "milex-agent").exists():
        return
    print(f"bench: installing this tree's Milex into {node.overlay}", file=sys.stderr)
    wheels = Path(tempfile.mkdtemp(prefix="milex-bench-wheel-"))
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)],
            check=True,
            capture_output=True,
            timeout=600,
        )
        wheels.chmod(0o755)
        [wheel] = wheels.glob("milex_scheduler-*.whl")
        wheel.chmod(0o644)
        staging = node.owned_dir(node.overlay.with_name(node.overlay.name + ".partial"))
        node.run(
            str(node.venv / "bin" / "pip"),
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-deps",
            "--upgrade",
            "--target",
            str(staging),
            str(wheel),
        )
        staging.rename(node.overlay)
    finally:
        shutil.rmtree(wheels, ignore_errors=True)
