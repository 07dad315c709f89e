"""`milex agent deploy --wheel` onto each namespaced cluster's login node, a host of its own with no
route to the internet: everything it installs comes from wheels the laptop downloaded and uploaded.
(Every remote test's login node is also set up this way: see the `login_node` fixture.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from milex_common.version import VERSION
from tests.e2e.clusters import LoginNode
from tests.e2e.conftest import REMOTE, MilexHome, use_login_node

VENV = "~/deploy-test-venv"  # the login user's own, made over ssh as a user would
PATH = "~/milex-deploy-test"
pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def deploying(laptop: MilexHome, login_node: LoginNode) -> Iterator[MilexHome]:
    """The laptop, its machine's environment a venv of the login user's holding only what
    `python3 -m venv` puts there; removed after."""
    remove = f"rm -rf {VENV} {PATH}"
    login_node.sh(f"{remove} && python3 -m venv {VENV}")
    use_login_node(laptop, login_node.alias, venv=VENV, path=PATH)
    yield laptop
    laptop.milex("milex", "agent", "stop", "--machine", REMOTE, check=False)
    login_node.sh(f"crontab -r 2>/dev/null; {remove}")  # the watchdog a deploy installed too


def left_wheel_dirs(node: LoginNode) -> str:
    return node.sh("ls -d ${TMPDIR:-/tmp}/milex-wheels.* 2>/dev/null || true").strip()


def test_deploy_with_wheel_installs_from_uploaded_wheels_and_replaces_an_older_build(
    deploying: MilexHome, login_node: LoginNode
) -> None:
    laptop, node = deploying, login_node
    fetch = "python3 -c 'import urllib.request as u; u.urlopen(\"https://pypi.org/simple/\", timeout=5)'"
    assert node.exec("bash", "-c", fetch, user=node.user, check=False).returncode != 0  # no internet there

    result = laptop.milex("milex", "agent", "deploy", "--machine", REMOTE, "--wheel")

    assert f"installed on {REMOTE}" in result.stdout
    assert "watchdog installed in your crontab" in result.stdout, result.stdout  # by default
    assert left_wheel_dirs(node) == ""
    status = laptop.milex("milex", "agent", "status", "--machine", REMOTE).stdout
    assert f"running as {node.user}" in status and "watchdog: installed" in status, status
    pid = status.split(", pid ")[1].split(";")[0]
    command = node.sh(f"tr '\\0' ' ' < /proc/{pid}/cmdline")
    assert command.startswith(f"{node.home}/deploy-test-venv/bin/python3 -m milex_agent"), command

    installed = f"{VENV}/lib/python3.*/site-packages/milex/machine/wheelhouse.py"
    node.sh(f"echo '# an older build of the same version' >> {installed}")
    laptop.milex("milex", "agent", "deploy", "--machine", REMOTE, "--wheel")  # this build again
    assert "older build" not in node.sh(f"cat {installed}")


def test_deploy_into_the_system_python_says_how_to_make_a_venv(
    deploying: MilexHome, login_node: LoginNode
) -> None:
    deploying.milex("milex", "config", "set", REMOTE, "env_command", "")

    result = deploying.milex("milex", "agent", "deploy", "--machine", REMOTE, "--wheel", check=False)

    assert result.returncode == 1, result
    assert "externally-managed-environment" in result.stderr, result.stderr
    assert "python3 -m venv ~/milex-venv" in result.stderr
    assert f"milex config set {REMOTE} env_command 'source ~/milex-venv/bin/activate'" in result.stderr
    assert left_wheel_dirs(login_node) == ""


def test_deploy_where_the_environment_has_no_python3_says_so(deploying: MilexHome) -> None:
    deploying.milex("milex", "config", "set", REMOTE, "env_command", "export PATH=/nonexistent")

    result = deploying.milex("milex", "agent", "deploy", "--machine", REMOTE, "--wheel", check=False)

    assert result.returncode == 1, result
    assert "environment has no python3 (env_command: 'export PATH=/nonexistent')" in result.stderr, result
    assert "python3: command not found" in result.stderr


def test_deploy_without_wheel_still_installs_from_the_index(deploying: MilexHome) -> None:
    result = deploying.milex("milex", "agent", "deploy", "--machine", REMOTE, check=False)

    assert result.returncode == 1, result  # the login node has no route to the index
    assert f"python3 -m pip install --quiet milex-scheduler=={VERSION}` exited 1" in result.stderr, result
    assert "No matching distribution found for milex-scheduler" in result.stderr


def test_deploy_when_the_laptop_cannot_reach_the_index_says_so(
    deploying: MilexHome, login_node: LoginNode
) -> None:
    deploying.env.pop("PIP_FIND_LINKS", None)  # this machine's pip also finds wheels in local directories
    deploying.env.update(PIP_CONFIG_FILE="/dev/null", PIP_INDEX_URL="http://127.0.0.1:9/simple")

    result = deploying.milex("milex", "agent", "deploy", "--machine", REMOTE, "--wheel", check=False)

    assert result.returncode == 1, result
    assert "could not reach the package index" in result.stderr, result.stderr
    assert "Connection refused" in result.stderr
    assert left_wheel_dirs(login_node) == ""
