"""An app's provenance from real installs of a real git repository: editable (commit, dirty, diff
hash), regular (version only), without git, and an app no entry point provides."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from milex.provenance.app import provenance_of
from milex_common.model import Bundle, Job
from milex_common.provenance import Provenance
from milex_common.record_format import decode_bundle, encode_bundle
from milex_common.version import VERSION

PYPROJECT = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "prov-app"
version = "1.2.3"

[project.scripts]
prov-app = "prov_app:main"

[tool.setuptools]
packages = ["prov_app"]
"""


@dataclass
class Installed:
    repo: Path
    editable: Path  # a --target directory with the editable install
    regular: Path  # a --target directory with a regular install, inside the work tree (ignored)


def git(repo: Path, *argv: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *argv], capture_output=True, text=True, check=True)
    return done.stdout


def pip_install(target: Path, *argv: str) -> None:
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), *argv]
    subprocess.run(command, check=True, capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("provenance")
    repo = root / "repo"
    (repo / "prov_app").mkdir(parents=True)
    (repo / "pyproject.toml").write_text(PYPROJECT)
    (repo / "prov_app" / "__init__.py").write_text("def main():\n    print('hello')\n")
    (repo / ".gitignore").write_text("*.egg-info/\nbuild/\nregular/\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    pip_install(root / "editable", "-e", str(repo))
    pip_install(repo / "regular", str(repo))
    return Installed(repo=repo, editable=root / "editable", regular=repo / "regular")


@pytest.fixture
def repo(installed: Installed) -> Iterator[Path]:
    """The app's work tree, clean again after the test."""
    yield installed.repo
    git(installed.repo, "checkout", "-q", "--", ".")
    git(installed.repo, "clean", "-qfd")


def test_an_editable_install_of_a_clean_checkout_records_its_commit(installed: Installed, repo: Path) -> None:
    found = provenance_of("prov-app", [str(installed.editable)])
    assert found == Provenance(
        distribution="prov-app",
        version="1.2.3",
        commit=git(repo, "rev-parse", "HEAD").strip(),
        python=f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}",
        milex=VERSION,
    )
    assert found.checkable


def test_a_changed_file_makes_it_dirty_with_the_sha256_of_git_diff_head(
    installed: Installed, repo: Path
) -> None:
    (repo / "prov_app" / "__init__.py").write_text("def main():\n    print('changed')\n")
    found = provenance_of("prov-app", [str(installed.editable)])
    diff = subprocess.run(
        ["git", "-C", str(repo), "diff", "HEAD", "--", "."], capture_output=True, check=True
    )
    assert found.dirty and found.commit == git(repo, "rev-parse", "HEAD").strip()
    assert found.diff_sha256 == hashlib.sha256(diff.stdout).hexdigest()

    (repo / "notes.txt").write_text("an untracked file counts too\n")
    with_untracked = provenance_of("prov-app", [str(installed.editable)])
    assert with_untracked.dirty and with_untracked.diff_sha256 not in ("", found.diff_sha256)


def test_an_untracked_file_alone_makes_it_dirty(installed: Installed, repo: Path) -> None:
    (repo / "prov_app" / "extra.py").write_text("X = 1\n")
    found = provenance_of("prov-app", [str(installed.editable)])
    assert found.dirty and len(found.diff_sha256) == 64


def test_a_regular_install_records_the_version_and_no_git_state_even_inside_a_work_tree(
    installed: Installed,
) -> None:
    found = provenance_of("prov-app", [str(installed.regular)])
    assert (found.distribution, found.version) == ("prov-app", "1.2.3")
    assert (found.commit, found.dirty, found.diff_sha256) == ("", False, "")


def test_without_git_the_git_fields_stay_empty(
    installed: Installed, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on it
    found = provenance_of("prov-app", [str(installed.editable)])
    assert (found.distribution, found.version) == ("prov-app", "1.2.3")
    assert (found.commit, found.dirty, found.diff_sha256) == ("", False, "")


def test_a_checkout_git_cannot_read_leaves_the_git_fields_empty(installed: Installed, repo: Path) -> None:
    head = repo / ".git" / "HEAD"
    saved = head.read_text()
    head.write_text("ref: refs/heads/nowhere\n")  # a branch with no commit: no HEAD to describe
    try:
        found = provenance_of("prov-app", [str(installed.editable)])
    finally:
        head.write_text(saved)
    assert found.version == "1.2.3" and (found.commit, found.dirty) == ("", False)


def test_an_app_no_entry_point_provides_records_only_python_and_milex(installed: Installed) -> None:
    found = provenance_of("no-such-app", [str(installed.editable)])
    assert found == Provenance(python=found.python, milex=VERSION) and found.python
    assert not found.checkable


def test_nothing_user_specific_enters_the_record(installed: Installed, repo: Path) -> None:
    found = provenance_of("prov-app", [str(installed.editable)])
    text = msgspec.json.encode(found).decode()
    for private in (str(repo), str(installed.editable), str(Path.home())):
        assert private not in text
    assert set(msgspec.structs.asdict(found)) == set(Provenance.__struct_fields__)


def test_a_record_with_provenance_round_trips_and_one_without_is_unchanged() -> None:
    provenance = Provenance(distribution="prov-app", version="1.2.3", commit="a" * 40, dirty=True,
                            diff_sha256="b" * 64, python="3.11.7", milex=VERSION)  # fmt: skip
    bundle = Bundle(name="exp", created="20240101000000", jobs={
        "a": Job(name="a", script="prov-app", provenance=provenance), "b": Job(name="b", script="old"),
    })  # fmt: skip
    data = encode_bundle(bundle)
    decoded = decode_bundle(data, name="exp", created="20240101000000", source="test")
    assert decoded.jobs["a"].provenance == provenance and decoded.jobs["b"].provenance is None
    assert encode_bundle(decoded) == data
    assert b'"provenance"' in data and data.count(b'"provenance"') == 1


def test_status_json_gains_the_provenance_script_hash_and_host_of_the_records(tmp_path: Path) -> None:
    from milex.provenance.shown import described_jobs
    from milex.records import Submission, SubmittedJobRecord, job_key, save_bundle, save_submission
    from milex_common.model import JobState
    from milex_common.protocol import TrackedJob

    provenance = Provenance(distribution="prov-app", version="1.2.3", python="3.11.7", milex=VERSION)
    bundle = Bundle(name="exp", created="20240101000000", jobs={
        "a": Job(name="a", script="prov-app", provenance=provenance), "old": Job(name="old", script="x"),
    })  # fmt: skip
    save_bundle(tmp_path, bundle)
    run = Submission(bundle=bundle.stem, machine="cluster", submitted_at="2024-01-01T00:00:00",
                     run_id="20240101000000-0123abcd", host="login1")  # fmt: skip
    run.jobs["a"] = SubmittedJobRecord(job_id="7", script="/p/a.sh", script_sha256="c" * 64)
    save_submission(tmp_path, run)
    tracked = [
        TrackedJob(key=job_key(bundle.stem, name, run.run_id), bundle=bundle.stem, name=name, job_id=job_id,
                   state=JobState.RUNNING)
        for name, job_id in (("a", "7"), ("old", "8"))
    ] + [TrackedJob(key="elsewhere_20240101000000/z/r", bundle="elsewhere_20240101000000", name="z",
                    job_id="9", state=JobState.PENDING)]  # fmt: skip

    a, old, elsewhere = described_jobs(tmp_path, "cluster", tracked)

    assert a["provenance"] == msgspec.to_builtins(provenance)
    assert (a["script_sha256"], a["host"], a["job_id"]) == ("c" * 64, "login1", "7")
    assert not {"provenance", "script_sha256", "host"} & set(old)  # not in this run's record
    assert set(elsewhere) == set(msgspec.to_builtins(tracked[2]))
    assert described_jobs(tmp_path, "other", tracked[:1])[0].keys() == {
        *msgspec.to_builtins(tracked[0]),
        "provenance",
    }


def test_schedule_records_the_provenance_read_while_the_app_cli_runs(milex_config: object) -> None:
    from milex import api

    scheduled = api.schedule("milex-example", ["--message", "hi"])  # installed beside this Python
    provenance = scheduled.job.provenance
    assert provenance is not None and (provenance.distribution, provenance.milex) == (
        "milex-example",
        VERSION,
    )
    saved = decode_bundle(scheduled.path.read_bytes(), name="milex-example", created=scheduled.bundle.created,
                          source="test")  # fmt: skip
    assert saved.jobs["milex-example"].provenance == provenance
    given = Provenance(distribution="pinned", version="1")
    assert api.schedule("milex-example", provenance=given, append=True, job_name="b").job.provenance == given


def test_records_of_an_earlier_release_load_without_provenance_and_are_not_checked() -> None:
    from milex.provenance.check import recorded_versions
    from milex.records import load_bundle, load_submissions

    jobs_dir = Path(__file__).parent / "releases" / "690690e" / "jobs"
    bundle = load_bundle(jobs_dir, "sweep")
    assert all(job.provenance is None for job in bundle.jobs.values())
    written = (jobs_dir / f"{bundle.stem}.json").read_bytes()
    assert encode_bundle(bundle) == written  # written back byte for byte: no provenance key appears
    assert recorded_versions(bundle) == {}
    for run in load_submissions(jobs_dir, bundle.stem):
        assert run.host == "" and all(job.script_sha256 == "" for job in run.jobs.values())
