"""`milex agent deploy --wheel` for login nodes without internet: the login node's Python described,
the wheels it needs downloaded here for it, and installed there from them with no index."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from milex.config.file import Machine
from milex.machine.commands import in_environment
from milex_common.errors import MilexError

if TYPE_CHECKING:
    from milex.machine.shell import Shell

MIN_PYTHON = (3, 10)
PEP_668 = "PEP 668: externally-managed-environment"
VENV = "~/milex-venv"  # the venv the messages propose
TARGET_MARK = "MILEX-TARGET "  # the start of PROBE's line
# What pip needs to choose wheels for the login node, printed by its python3 in the machine's
# environment; written for any Python, so that an old one still answers with its version.
PROBE = """\
import json, os, platform, sys, sysconfig
try:
    libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
except (AttributeError, ValueError, OSError):
    libc = ""
try:
    import importlib.util
    has_pip = importlib.util.find_spec("pip") is not None
except Exception:
    has_pip = False
in_venv = sys.prefix != getattr(sys, "base_prefix", sys.prefix)
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
print("MILEX-TARGET " + json.dumps({
    "version": list(sys.version_info[:3]), "implementation": platform.python_implementation().lower(),
    "platform": sysconfig.get_platform(), "libc": libc, "executable": sys.executable,
    "free_threaded": bool(sysconfig.get_config_var("Py_GIL_DISABLED")), "has_pip": has_pip,
    "externally_managed": os.path.exists(marker) and not in_venv}))
"""
# Tag aliases of manylinux_2_X older than PEP 600 (PEP 599, 571, 513), which pip does not derive
# from a manylinux_2_X --platform by itself.
LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
UNREACHABLE = ("NewConnectionError", "Failed to establish a new connection", "connection broken by",
               "Max retries exceeded", "ProxyError", "Name or service not known", "SSLError")  # fmt: skip


class LoginPython(msgspec.Struct, kw_only=True):
    """The login node's Python, as the probe describes it."""

    version: tuple[int, int, int]
    implementation: str
    platform: str
    libc: str
    executable: str
    free_threaded: bool = False
    has_pip: bool = True
    externally_managed: bool = False

    @property
    def arch(self) -> str:
        return self.platform.partition("-")[2].replace("-", "_").replace(".", "_")

    @property
    def glibc(self) -> tuple[int, int] | None:
        match = re.fullmatch(r"glibc (\d+)\.(\d+).*", self.libc)
        return (int(match[1]), int(match[2])) if match else None

    def describe(self) -> str:
        python = ".".join(map(str, self.version))
        return f"{self.implementation} {python} on {self.platform} ({self.libc or 'unknown C library'})"


def read_login_python(machine: Machine, code: int, out: str, err: str) -> LoginPython:
    """The probe's answer, or what to do when the environment has no python3 or it failed."""
    if code == 127 or "python3: command not found" in err:
        env_command = repr(machine.env_command) if machine.env_command else "empty"
        raise MilexError(
            f"on {machine.name}, the machine's environment has no python3 (env_command: {env_command}):\n"
            f"{err.strip()}\nMake env_command load a Python 3.10 or newer (e.g. `module load python`, or "
            f"`source {VENV}/bin/activate`): `milex config set {machine.name} env_command '...'`."
        )
    line = next((line for line in out.splitlines() if line.startswith(TARGET_MARK)), None)
    if code != 0 or line is None:
        ran = f"{machine.env_command} && python3" if machine.env_command else "python3"
        raise MilexError(f"on {machine.name}, `{ran}` failed (exit {code}):\n{(err or out).strip()}")
    return msgspec.json.decode(line[len(TARGET_MARK) :], type=LoginPython)


def check_login_python(machine: Machine, target: LoginPython) -> None:
    """MilexError saying what to do when Milex cannot be installed into that Python from wheels."""
    python = ".".join(map(str, target.version))
    if tuple(target.version[:2]) < MIN_PYTHON:
        raise MilexError(
            f"on {machine.name}, python3 is Python {python} ({target.executable}); Milex needs 3.10 or "
            "newer. Make env_command load a newer one (e.g. `module load python/3.11`, or activate a venv "
            f"made from one): `milex config set {machine.name} env_command '...'`."
        )
    if target.implementation != "cpython" or target.glibc is None or not target.platform.startswith("linux-"):
        raise MilexError(
            f"on {machine.name}, python3 is {target.describe()}: --wheel fetches wheels for CPython on "
            "Linux with glibc only. Deploy without --wheel from a login node that reaches a package index."
        )
    if not target.has_pip:
        problem = f"python3 ({target.executable}) has no pip"
        if target.externally_managed:
            problem += f", and is the system's Python, which pip may not install into ({PEP_668})"
        raise MilexError(venv_advice(machine, problem))


def venv_advice(machine: Machine, problem: str) -> str:
    """What to do when the machine's python3 is the system's: make a venv, activate it in env_command."""
    ssh = f"ssh {f'-p {machine.port} ' if machine.port else ''}"
    ssh += f"{machine.username}@{machine.hostname}" if machine.username else str(machine.hostname)
    prefix = f"{machine.env_command} && " if machine.env_command else ""
    make_venv, env_command = f"{prefix}python3 -m venv {VENV}", f"{prefix}source {VENV}/bin/activate"
    return (
        f"on {machine.name}, {problem}. Create a venv there and activate it in the machine's env_command:\n"
        f"    {ssh} {shlex.quote(make_venv)}\n"
        f"    milex config set {machine.name} env_command {shlex.quote(env_command)}\n"
        f"then run `milex agent deploy --machine {machine.name} --wheel` again."
    )


def manylinux_platforms(glibc: tuple[int, int], arch: str) -> list[str]:
    """Every manylinux tag a glibc of that version runs, newest first, as pip's own tags for the
    running machine would list them (packaging.tags._manylinux)."""
    if glibc[0] != 2:
        return []
    oldest = 5 if arch in ("x86_64", "i686") else 17
    platforms = []
    for minor in range(glibc[1], oldest - 1, -1):
        platforms.append(f"manylinux_2_{minor}_{arch}")
        if minor in LEGACY_MANYLINUX:
            platforms.append(f"{LEGACY_MANYLINUX[minor]}_{arch}")
    return platforms


def newest_platform(target: LoginPython) -> str:
    platforms = manylinux_platforms(target.glibc or (0, 0), target.arch)
    return platforms[0] if platforms else target.platform


def download_arguments(target: LoginPython) -> list[str]:
    """`pip download`'s options that choose wheels for `target` rather than for this laptop."""
    major, minor = target.version[:2]
    arguments = ["--only-binary=:all:", "--python-version", f"{major}.{minor}", "--implementation", "cp"]
    arguments += ["--abi", f"cp{major}{minor}{'t' if target.free_threaded else ''}"]
    for platform in manylinux_platforms(target.glibc or (0, 0), target.arch):
        arguments += ["--platform", platform]
    return arguments


def unreachable_error(output: str) -> MilexError | None:
    """The error to show when pip's `output` says the package index was out of reach, else None."""
    reason = next((line for line in output.splitlines() if any(sign in line for sign in UNREACHABLE)), None)
    if reason is None:
        return None
    return MilexError(
        "this laptop could not reach the package index to fetch what the login node needs:\n"
        f"{reason.strip()}\nCheck the network, and pip's index and proxy settings here "
        "(PIP_INDEX_URL, HTTPS_PROXY, pip.conf), then deploy again."
    )


def download_error(output: str, target: LoginPython) -> MilexError:
    """What a failed `pip download` means: the index out of reach, or a dependency without a wheel."""
    unreachable = unreachable_error(output)
    if unreachable:
        return unreachable
    missing = re.search(r"No matching distribution found for ([A-Za-z0-9._-]+)", output)
    if missing:
        return MilexError(
            f"the package index has no wheel of {missing[1]} for the login node's {target.describe()}, "
            f"tagged {newest_platform(target)} or older, and the login node cannot build one without an "
            f"index. Put a wheel of {missing[1]} built for that platform in a directory DIR here and deploy "
            "again with PIP_FIND_LINKS=DIR, or deploy without --wheel if the login node reaches an index."
        )
    return MilexError(f"downloading Milex's dependencies for the login node failed:\n{output.strip()}")


def install_error(machine: Machine, output: str) -> MilexError:
    """What a failed `pip install --no-index` on the login node means."""
    if "externally-managed-environment" in output:
        return MilexError(
            venv_advice(machine, f"pip refused to install into the system's Python ({PEP_668})")
        )
    return MilexError(f"on {machine.name}, installing the uploaded wheels failed:\n{output.strip()}")


def missing_requirement(output: str) -> str | None:
    """The requirement pip found no wheel for, without its environment marker: one that held on the
    login node but not here, where pip evaluates markers for this laptop's Python and platform."""
    missing = re.search(r"No matching distribution found for ([^;\n]+)", output)
    return missing[1].strip() if missing else None


def source_checkout() -> Path:
    """The checkout this Milex runs from, when it is one (client/milex/machine/ is three levels down)."""
    return Path(__file__).resolve().parents[3]


def build_wheel(into: Path) -> Path:
    """Milex's own wheel, built from this source checkout into `into`."""
    import subprocess

    source = source_checkout()
    if not (source / "pyproject.toml").exists():
        raise MilexError("--wheel needs a source checkout of milex-scheduler to build the wheel from.")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(into), str(source)]
    built = subprocess.run(command, capture_output=True, text=True, check=False)
    if built.returncode != 0:
        output = built.stderr + built.stdout
        raise unreachable_error(output) or MilexError(f"building Milex's wheel failed:\n{output.strip()}")
    return next(into.glob("milex_scheduler-*.whl"))


def download_wheels(requirement: str, target: LoginPython, into: Path) -> None:
    """Wheels of `requirement` and its dependencies for `target`, into `into` (pip's cache serves repeats)."""
    import subprocess

    command = [sys.executable, "-m", "pip", "download", "--progress-bar", "off", "-d", str(into),
               *download_arguments(target), requirement]  # fmt: skip
    fetched = subprocess.run(command, capture_output=True, text=True, check=False)
    if fetched.returncode != 0:
        raise download_error(fetched.stderr + fetched.stdout, target)


def install_from_wheels(session: Shell, machine: Machine) -> None:
    """Install this Milex and its dependencies into the machine's environment, from wheels downloaded
    here and uploaded into a temporary directory there, removed whatever happens."""
    import tempfile

    probe = in_environment(machine, f"python3 -c {shlex.quote(PROBE)}")
    target = read_login_python(machine, *session.exec(probe, timeout=60))
    check_login_python(machine, target)
    with tempfile.TemporaryDirectory(prefix="milex-wheels-") as local:
        wheel = build_wheel(Path(local) / "own")
        wheels = Path(local) / "all"
        download_wheels(str(wheel), target, wheels)
        code, out, err = session.exec("mktemp -d -t milex-wheels.XXXXXX")
        if code != 0:
            raise MilexError(f"on {machine.name}, `mktemp -d` failed:\n{(err or out).strip()}")
        remote = out.strip()
        try:
            install_uploaded(session, machine, target, wheels, remote, wheel.name)
        finally:
            session.exec(f"rm -rf {shlex.quote(remote)}")


def install_uploaded(
    session: Shell, machine: Machine, target: LoginPython, wheels: Path, remote: str, own: str
) -> None:
    """Upload `wheels` into `remote` and install the wheel `own` from there with no index; a
    requirement pip there finds missing (its marker held there, not here) is downloaded and added."""

    pip = f"python3 -m pip install --quiet --no-index --find-links {shlex.quote(remote)}"
    wheel = shlex.quote(f"{remote}/{own}")
    # Milex once more on its own: pip keeps an installed build of the same version, not this one.
    install = in_environment(machine, f"{pip} {wheel} && {pip} --no-deps --force-reinstall {wheel}")
    uploaded: set[str] = set()
    added: set[str] = set()
    while True:
        for path in sorted(wheels.glob("*.whl")):
            if path.name not in uploaded:
                session.upload(path, f"{remote}/{path.name}")
                uploaded.add(path.name)
        code, out, err = session.exec(install, timeout=600)
        if code == 0:
            return
        missing = missing_requirement(err + out)
        if missing is None or missing in added:
            raise install_error(machine, err + out)
        added.add(missing)
        download_wheels(missing, target, wheels)
