"""Which code ran: a record's provenance after `milex-schedule` of the example app (installed editable
in the laptop's venv: a git checkout), the script hashes and host of its run on each namespaced
cluster, and a run refused when the machine's environment has another version of the app, then
allowed with `--any-version`; the same refusal on a machine of this host."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from tests.e2e.clusters import LoginNode
from tests.e2e.conftest import REMOTE, REPO, MilexHome
from tests.e2e.test_remote import status
from tests.e2e.test_remote_accounting import bundle_in_slurm

pytestmark = pytest.mark.timeout(600)
OTHER = "9.9.9"  # the example app's version in a second environment


def example_wheel_of_version(into: Path, version: str) -> Path:
    """A wheel of examples/ whose version is `version`: the app as another release of it."""
    source = into / "source"
    shutil.copytree(REPO / "examples", source, ignore=shutil.ignore_patterns("*.egg-info", "build"))
    pyproject = source / "pyproject.toml"
    pyproject.write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', pyproject.read_text()))
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(into), str(source)]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    [wheel] = into.glob(f"milex_example-{version}-*.whl")
    return wheel


def expected_git_state() -> tuple[str, bool]:
    """The commit and dirtiness of the example app's checkout, as the laptop's venv installs it
    (editable: its direct_url.json names the directory), read here with git itself."""
    direct = json.loads(metadata.distribution("milex-example").read_text("direct_url.json") or "{}")
    assert direct.get("dir_info", {}).get("editable"), direct
    project = Path(unquote(urlparse(direct["url"]).path))
    git = ["git", "-C", str(project)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
    changes = subprocess.run(
        [*git, "status", "--porcelain", "--", "."], capture_output=True, text=True, check=True
    )
    return commit.strip(), bool(changes.stdout.strip())


def recorded_job(user: MilexHome, bundle: str, job: str) -> dict:
    [path] = sorted(user.jobs.glob(f"{bundle}_*[0-9].json"))
    return json.loads(path.read_text())[job]


def test_a_record_names_the_apps_code_and_its_run_the_scripts_and_the_host(
    laptop: MilexHome, login_node: LoginNode
) -> None:
    laptop.milex("milex-schedule", "milex-example", "--name", "prov", "--message", "which code")
    laptop.milex("milex-schedule", "milex-example", "--name", "prov", "--append", "--job_name", "second")

    provenance = recorded_job(laptop, "prov", "milex-example")["provenance"]
    commit, dirty = expected_git_state()
    assert provenance["distribution"] == "milex-example" and provenance["version"] == "0.1.0"
    assert provenance["commit"] == commit and provenance.get("dirty", False) is dirty
    assert (len(provenance.get("diff_sha256", "")) == 64) is dirty
    assert provenance["python"] == ".".join(map(str, sys.version_info[:3]))
    assert provenance["milex"]
    for private in (str(laptop.root), str(Path.home()), "physics", "activate", "/"):
        assert private not in json.dumps(provenance)

    laptop.milex("milex-run", "prov", "--machine", REMOTE, "--wait", "--timeout", "120")

    [run] = laptop.submissions()
    host = login_node.sh("hostname").strip()
    assert run["host"] == host
    for job in run["jobs"].values():
        kept = login_node.sh(f"sha256sum {job['script']}").split()[0]
        assert job["script_sha256"] == kept
    shown = status(laptop, "prov")
    assert shown["milex-example"]["provenance"] == provenance
    assert shown["second"]["script_sha256"] == run["jobs"]["second"]["script_sha256"]
    assert shown["second"]["host"] == host


def test_another_version_on_the_machine_is_refused_then_allowed_with_any_version(
    laptop: MilexHome, login_node: LoginNode, tmp_path: Path
) -> None:
    node = login_node
    wheel = example_wheel_of_version(tmp_path / "wheel", OTHER)
    node.sh("rm -rf ~/venv-other && python3 -m venv ~/venv-other")
    try:
        node.install_wheel(wheel, venv="~/venv-other")
        other = "source ~/venv-other/bin/activate && export PATH=~/bin:$PATH"
        laptop.milex("milex-schedule", "milex-example", "--name", "versions")

        refused = laptop.milex(
            "milex-run", "versions", "--machine", REMOTE, "--env-command", other, check=False
        )

        assert refused.returncode == 1, refused.stdout
        lines = [line for line in refused.stderr.splitlines() if "recorded with" in line]
        assert len(lines) == 1, refused.stderr  # one line
        [line] = lines
        assert line.startswith("error: job 'milex-example' was recorded"), refused.stderr
        assert f"recorded with milex-example 0.1.0, but machine '{REMOTE}' has milex-example {OTHER}" in line
        assert "--any-version" in line
        [record] = laptop.jobs.glob("versions_*[0-9].json")
        assert laptop.submissions() == [] and bundle_in_slurm(node, record.stem) == []

        # The machine's own environment (~/venv) has the recorded version: no refusal.
        laptop.milex("milex-run", "versions", "--machine", REMOTE, "--wait", "--timeout", "120")
        allowed = laptop.milex("milex-run", "versions", "--machine", REMOTE, "--env-command", other,
                               "--any-version", "--wait", "--timeout", "120")  # fmt: skip
        assert "COMPLETED" in allowed.stdout, allowed.stdout
        runs = laptop.submissions()
        assert len(runs) == 2 and all(not run.get("error") for run in runs)
        assert bundle_in_slurm(node, record.stem) == ["milex-example", "milex-example"]
    finally:
        node.sh("rm -rf ~/venv-other", check=False)


def test_a_machine_of_this_host_refuses_another_version_too(milex_home: MilexHome, tmp_path: Path) -> None:
    wheel = example_wheel_of_version(tmp_path / "wheel", OTHER)
    venv = tmp_path / "venv-other"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    install = [str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--no-deps", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    user = milex_home
    user.milex("milex-schedule", "milex-example", "--name", "here")

    refused = user.milex("milex-run", "here", "--env-command", f"source {venv}/bin/activate", check=False)

    assert refused.returncode == 1, refused.stdout
    assert f"but machine 'local' has milex-example {OTHER}" in refused.stderr, refused.stderr
    assert user.submissions() == []
    user.milex("milex-run", "here", "--env-command", f"source {venv}/bin/activate", "--any-version",
               "--wait", "--timeout", "120")  # fmt: skip
    [run] = user.submissions()
    [job] = run["jobs"].values()
    assert job["state"] == "COMPLETED"
    assert job["script_sha256"] == hashlib.sha256(Path(job["script"]).read_bytes()).hexdigest()
    assert run["host"]
