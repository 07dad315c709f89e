"""The pure parts of `milex agent deploy --wheel`: the login node's Python described, pip's arguments
for it, and what pip's failures mean."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from msgspec.structs import replace

from milex.config.file import Machine
from milex.machine import wheelhouse
from milex.machine.wheelhouse import (
    PROBE,
    LoginPython,
    check_login_python,
    download_arguments,
    download_error,
    install_error,
    install_uploaded,
    manylinux_platforms,
    missing_requirement,
    read_login_python,
)
from milex_common.errors import MilexError

MACHINE = Machine(name="cluster", path="~/milex", env_command="", slurm_account="", hostname="login.example",
                  username="me", key_path="~/.ssh/id")  # fmt: skip
TRIXIE = LoginPython(version=(3, 13, 5), implementation="cpython", platform="linux-x86_64",
                     libc="glibc 2.41", executable="/usr/bin/python3", has_pip=False,
                     externally_managed=True)  # fmt: skip
VENV_PYTHON = LoginPython(version=(3, 13, 5), implementation="cpython", platform="linux-x86_64",
                          libc="glibc 2.41", executable="/home/me/venv/bin/python3")  # fmt: skip
# pip 23.2's own words, captured on this machine.
REFUSED = (
    "WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after "
    "connection broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPConnection object at "
    "0x7f4d16a66890>: Failed to establish a new connection: [Errno 111] Connection refused')': "
    "/simple/click/\n"
    "ERROR: Could not find a version that satisfies the requirement click>=8.1 (from milex-scheduler) "
    "(from versions: none)\nERROR: No matching distribution found for click>=8.1\n"
)
# A login node's Python 3.10 installing what a laptop's 3.11 downloaded: the marker held there only.
MARKER_HID = (
    "ERROR: Could not find a version that satisfies the requirement typing-extensions>=4.13.2; "
    'python_full_version < "3.11" (from cryptography) (from versions: none)\n'
    'ERROR: No matching distribution found for typing-extensions>=4.13.2; python_full_version < "3.11"\n'
)
NO_WHEEL = (
    "ERROR: Could not find a version that satisfies the requirement msgspec>=0.18 (from milex-scheduler) "
    "(from versions: none)\nERROR: No matching distribution found for msgspec>=0.18\n"
)


@pytest.mark.parametrize(("glibc", "arch"), [((2, 41), "x86_64"), ((2, 28), "aarch64"), ((2, 17), "i686")])
def test_manylinux_platforms_are_the_tags_pip_lists_for_that_glibc(
    glibc: tuple[int, int], arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pip._vendor.packaging import _manylinux

    monkeypatch.setattr(_manylinux, "_get_glibc_version", lambda: glibc)
    monkeypatch.setattr(_manylinux, "_have_compatible_abi", lambda *args: True)
    # packaging 21 (pip 23.2's) takes (linux, arch); packaging 24 (pip 24.2's) takes (archs).
    old = len(inspect.signature(_manylinux.platform_tags).parameters) == 2
    pips = _manylinux.platform_tags(f"linux_{arch}", arch) if old else _manylinux.platform_tags([arch])

    assert manylinux_platforms(glibc, arch) == list(pips)


def test_manylinux_platforms_keep_the_legacy_names_pip_would_not_derive() -> None:
    platforms = manylinux_platforms((2, 41), "x86_64")

    assert platforms[0] == "manylinux_2_41_x86_64"
    assert platforms[-2:] == ["manylinux_2_5_x86_64", "manylinux1_x86_64"]
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64"} <= set(platforms)
    assert manylinux_platforms((2, 28), "aarch64")[-2:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]


def test_download_arguments_choose_wheels_for_the_login_nodes_python() -> None:
    arguments = download_arguments(VENV_PYTHON)

    assert arguments[:7] == ["--only-binary=:all:", "--python-version", "3.13", "--implementation", "cp",
                             "--abi", "cp313"]  # fmt: skip
    assert arguments[7:9] == ["--platform", "manylinux_2_41_x86_64"]
    assert arguments.count("--platform") == len(manylinux_platforms((2, 41), "x86_64"))
    free_threaded = replace(VENV_PYTHON, free_threaded=True)
    assert download_arguments(free_threaded)[6] == "cp313t"


def test_the_probe_describes_this_python_through_noise_a_login_shell_prints() -> None:
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)

    target = read_login_python(MACHINE, 0, f"Welcome to the cluster\n{probe.stdout}", "")

    assert target.version == tuple(sys.version_info[:3])
    assert target.executable == sys.executable
    assert target.has_pip and not target.externally_managed  # the venv's own Python
    assert target.implementation == "cpython" and target.platform.startswith("linux-")


def test_no_python3_in_the_environment_says_to_load_one() -> None:
    with pytest.raises(MilexError, match="has no python3") as raised:
        read_login_python(MACHINE, 127, "", "bash: line 1: python3: command not found\n")
    assert "milex config set cluster env_command" in str(raised.value)


def test_an_old_python_is_refused_with_its_version() -> None:
    old = replace(VENV_PYTHON, version=(3, 9, 2))

    with pytest.raises(MilexError, match=r"Python 3\.9\.2 .*needs 3\.10 or newer"):
        check_login_python(MACHINE, old)


def test_a_system_python_without_pip_gets_the_venv_commands() -> None:
    with pytest.raises(MilexError) as raised:
        check_login_python(MACHINE, TRIXIE)

    message = str(raised.value)
    assert "has no pip" in message and "externally-managed-environment" in message
    assert "ssh me@login.example 'python3 -m venv ~/milex-venv'" in message
    assert "milex config set cluster env_command 'source ~/milex-venv/bin/activate'" in message


def test_the_venv_commands_keep_the_machines_own_env_command_and_port() -> None:
    machine = replace(MACHINE, env_command="module load python", port=2222)

    message = str(install_error(machine, "error: externally-managed-environment\n"))

    assert "pip refused" in message
    assert "ssh -p 2222 me@login.example 'module load python && python3 -m venv ~/milex-venv'" in message
    assert "env_command 'module load python && source ~/milex-venv/bin/activate'" in message


def test_a_python_other_than_cpython_on_glibc_is_refused() -> None:
    musl = replace(VENV_PYTHON, libc="")

    with pytest.raises(MilexError, match="CPython on Linux with glibc only"):
        check_login_python(MACHINE, musl)
    check_login_python(MACHINE, VENV_PYTHON)


def test_an_unreachable_index_is_told_apart_from_a_missing_wheel() -> None:
    unreachable = str(download_error(REFUSED, VENV_PYTHON))
    missing = str(download_error(NO_WHEEL, VENV_PYTHON))

    assert "could not reach the package index" in unreachable and "Connection refused" in unreachable
    assert "no wheel of msgspec for" in missing and "manylinux_2_41_x86_64" in missing
    assert "cpython 3.13.5 on linux-x86_64 (glibc 2.41)" in missing


def test_a_requirement_missing_there_is_named_without_its_marker() -> None:
    assert missing_requirement(MARKER_HID) == "typing-extensions>=4.13.2"
    assert missing_requirement("ERROR: No matching distribution found for msgspec>=0.18\n") == "msgspec>=0.18"
    assert missing_requirement("ERROR: unrelated\n") is None


class ScriptedSession:
    """The SSH session's two calls, answering each command with the next scripted result."""

    def __init__(self, results: list[tuple[int, str, str]]) -> None:
        self.results = results
        self.commands: list[str] = []
        self.uploads: list[str] = []

    def exec(self, command: str, timeout: float = 120.0) -> tuple[int, str, str]:
        self.commands.append(command)
        return self.results.pop(0)

    def upload(self, local: Path, remote: str) -> None:
        self.uploads.append(remote)


@pytest.fixture
def downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What install_uploaded asks pip to download; each gives one wheel named after it."""
    asked: list[str] = []

    def download(requirement: str, target: LoginPython, into: Path) -> None:
        asked.append(requirement)
        (into / f"{requirement.split('>=')[0]}-1.0-py3-none-any.whl").touch()

    monkeypatch.setattr(wheelhouse, "download_wheels", download)
    (tmp_path / "milex_scheduler-0.1.0-py3-none-any.whl").touch()
    return asked


def test_a_requirement_whose_marker_held_only_there_is_downloaded_and_uploaded_too(
    tmp_path: Path, downloads: list[str]
) -> None:
    session = ScriptedSession([(1, "", MARKER_HID), (0, "", "")])

    install_uploaded(
        session, MACHINE, VENV_PYTHON, tmp_path, "/tmp/w", "milex_scheduler-0.1.0-py3-none-any.whl"
    )

    assert downloads == ["typing-extensions>=4.13.2"]
    assert session.uploads == ["/tmp/w/milex_scheduler-0.1.0-py3-none-any.whl",
                               "/tmp/w/typing-extensions-1.0-py3-none-any.whl"]  # fmt: skip
    assert len(session.commands) == 2 and session.commands[0] == session.commands[1]
    wheel = "/tmp/w/milex_scheduler-0.1.0-py3-none-any.whl"
    assert f"--no-index --find-links /tmp/w {wheel} &&" in session.commands[0]
    assert session.commands[0].endswith(
        f"--no-deps --force-reinstall {wheel}'"
    )  # this build, not one installed


def test_a_requirement_still_missing_after_its_download_fails_with_pips_words(
    tmp_path: Path, downloads: list[str]
) -> None:
    session = ScriptedSession([(1, "", MARKER_HID), (1, "", MARKER_HID)])

    with pytest.raises(MilexError, match=r"installing the uploaded wheels failed:\n.*typing-extensions"):
        install_uploaded(
            session, MACHINE, VENV_PYTHON, tmp_path, "/tmp/w", "milex_scheduler-0.1.0-py3-none-any.whl"
        )
    assert downloads == ["typing-extensions>=4.13.2"]


def test_the_wheel_is_built_from_the_checkout_this_milex_runs_from() -> None:
    pyproject = (wheelhouse.source_checkout() / "pyproject.toml").read_text()
    assert 'name = "milex-scheduler"' in pyproject
