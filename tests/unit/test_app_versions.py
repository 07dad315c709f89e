"""The apps' versions in a machine's environment (the agent's check, run through a real env_command in
bash), the AppVersions request through a served agent, and the client's refusal before a run."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

import milex.machine.submitter
from milex import api
from milex.provenance.check import VersionCheckFailed, VersionMismatch, check_versions, first_mismatch
from milex.records import load_submissions
from milex_agent import app_versions
from milex_common.connection import AgentConnection, AgentError
from milex_common.model import Bundle, Job, MachineSettings
from milex_common.protocol import APP_VERSIONS, AppVersions, AppVersionsReply, Error, HelloReply, Submitted
from milex_common.provenance import Provenance
from tests.unit.served import Served


def fake_install(root: Path, app: str, version: str, *, pip_long_form: bool = False) -> str:
    """An env_command that puts `app` version `version` on PATH: a console script whose first line
    names this Python, and a distribution's metadata where that Python finds it (PYTHONPATH)."""
    bin_dir, site = root / "bin", root / "site"
    info = site / f"{app.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {app}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[console_scripts]\n{app} = some_module:main\n")
    bin_dir.mkdir()
    if pip_long_form:  # how pip writes a script whose Python's path is too long or has spaces
        head = f"#!/bin/sh\n'''exec' \"{sys.executable}\" \"$0\" \"$@\"\n' '''\n"
    else:
        head = f"#!{sys.executable}\n"
    (bin_dir / app).write_text(head + "raise SystemExit(0)\n")
    (bin_dir / app).chmod(0o755)
    return f"export PATH={bin_dir}:$PATH PYTHONPATH={site}"


def settings_with(env_command: str, tmp_path: Path) -> MachineSettings:
    return MachineSettings(name="cluster", path=str(tmp_path / "milex"), env_command=env_command)


def test_the_version_of_an_app_in_the_env_command_environment(tmp_path: Path) -> None:
    settings = settings_with(fake_install(tmp_path, "prov-app", "2.0.1"), tmp_path)
    assert app_versions.app_versions(settings, ["prov-app", "not-there"]) == {
        "prov-app": "2.0.1",
        "not-there": "",
    }


def test_pips_long_shebang_form_names_the_python(tmp_path: Path) -> None:
    settings = settings_with(fake_install(tmp_path, "prov-app", "3.0", pip_long_form=True), tmp_path)
    assert app_versions.app_versions(settings, ["prov-app"]) == {"prov-app": "3.0"}


def test_an_app_outside_the_env_command_environment_is_not_installed(tmp_path: Path) -> None:
    fake_install(tmp_path, "prov-app", "2.0.1")  # installed, but the env_command does not point there
    assert app_versions.app_versions(settings_with("", tmp_path), ["prov-app"]) == {"prov-app": ""}


def test_an_env_command_that_fails_is_an_error_saying_so(tmp_path: Path) -> None:
    settings = settings_with("echo 'module: no such module' >&2; exit 3", tmp_path)
    with pytest.raises(RuntimeError, match=r"exit 3: module: no such module"):
        app_versions.app_versions(settings, ["prov-app"])


def test_a_check_that_hangs_is_killed_at_its_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_versions, "CHECK_TIMEOUT", 0.5)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"more than 0\.5 s"):
        app_versions.app_versions(settings_with("sleep 30 & wait", tmp_path), ["prov-app"])
    assert time.monotonic() - started < 5


def test_the_agent_answers_app_versions_from_a_worker_and_names_the_feature(
    running: Served, tmp_path: Path
) -> None:
    connection = running.connect(timeout=20)
    hello = connection.hello("0.1.0")
    assert APP_VERSIONS in hello.features
    settings = settings_with(fake_install(tmp_path, "prov-app", "2.0.1"), tmp_path)
    reply = connection.request(AppVersions(settings=settings, apps=["prov-app"]), expect=AppVersionsReply)
    assert reply == AppVersionsReply(id=reply.id, versions={"prov-app": "2.0.1"})
    failed = connection.request(AppVersions(settings=settings_with("exit 1", tmp_path), apps=["prov-app"]),
                                expect=AppVersionsReply)  # fmt: skip
    assert failed.versions == {} and "exit 1" in failed.error


# ---- the client's check ---------------------------------------------------------------------------


def recorded(*jobs: tuple[str, str, str]) -> Bundle:
    """A bundle of (job, app, recorded version) jobs; version "" for a job without provenance."""
    made = {
        name: Job(
            name=name,
            script=app,
            provenance=Provenance(distribution=app, version=version, python="3.11.7") if version else None,
        )
        for name, app, version in jobs
    }
    return Bundle(name="exp", created="20240101000000", jobs=made)


def test_a_mismatch_names_the_app_both_versions_the_machine_and_the_flag() -> None:
    wanted = {"prov-app": {"a": "1.0", "b": "1.0"}}
    refusal = first_mismatch(wanted, {"prov-app": "2.0"}, "cluster")
    assert isinstance(refusal, VersionMismatch)
    assert str(refusal) == (
        "job 'a' (and 1 more) was recorded with prov-app 1.0, but machine 'cluster' has prov-app 2.0 (in its "
        "env_command's environment): this run would not reproduce the record. Install prov-app 1.0 there, "
        "or pass --any-version (any_version=True in Python) to run anyway."
    )
    assert (refusal.app, refusal.recorded, refusal.found, refusal.machine) == (
        "prov-app",
        "1.0",
        "2.0",
        "cluster",
    )
    missing = first_mismatch(wanted, {"prov-app": ""}, "cluster")
    assert missing is not None and "has no prov-app installed" in str(missing)
    assert first_mismatch(wanted, {"prov-app": "1.0"}, "cluster") is None


class FakeConnection:
    """A connection to an agent that names `features` and answers AppVersions with `answer`."""

    def __init__(self, features: set[str], answer: AppVersionsReply | Error) -> None:
        self.features = frozenset(features)
        self.answer = answer
        self.asked: list[AppVersions] = []

    def request(self, request: AppVersions, timeout: float, *, expect: type) -> AppVersionsReply:
        self.asked.append(request)
        if isinstance(self.answer, Error):
            raise AgentError(self.answer)
        return self.answer


class FakeSubmitter:
    agent_host = "login1"

    def __init__(self, connection: FakeConnection) -> None:
        self.connection = connection
        self.submitted: list[Bundle] = []

    def submit(self, bundle: Bundle, *args: object, **kwargs: object) -> list[object]:
        self.submitted.append(bundle)
        return []


SETTINGS = MachineSettings(name="cluster", path="~/milex")


def test_an_older_agent_is_named_in_one_warning_and_the_run_goes_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bundle = recorded(("a", "prov-app", "1.0"))
    check_versions(FakeSubmitter(FakeConnection(set(), AppVersionsReply())), bundle, SETTINGS)  # type: ignore[arg-type]
    refused = Error(code="bad_request", message="invalid 'app_versions' request")
    check_versions(FakeSubmitter(FakeConnection({APP_VERSIONS}, refused)), bundle, SETTINGS)  # type: ignore[arg-type]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all("too old to report app versions" in line for line in lines)
    assert "prov-app" in lines[0] and "--machine cluster" in lines[0]


def test_jobs_without_a_checkable_provenance_are_not_checked() -> None:
    connection = FakeConnection({APP_VERSIONS}, AppVersionsReply(versions={}))
    bundle = recorded(("old", "legacy", ""))
    bundle.jobs["memory"] = Job(name="memory", script="x", provenance=Provenance(python="3.11.7"))
    check_versions(FakeSubmitter(connection), bundle, SETTINGS)  # type: ignore[arg-type]
    assert connection.asked == []


def test_a_check_that_failed_on_the_machine_refuses_with_the_reason() -> None:
    connection = FakeConnection({APP_VERSIONS}, AppVersionsReply(error="the check took more than 30 s"))
    with pytest.raises(
        VersionCheckFailed, match=r"more than 30 s; fix its env_command, or pass --any-version"
    ):
        check_versions(FakeSubmitter(connection), recorded(("a", "prov-app", "1.0")), SETTINGS)  # type: ignore[arg-type]


def test_run_refuses_before_submitting_and_any_version_goes_on(
    milex_config: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from milex.records import save_bundle

    jobs_dir = milex_config.jobs_dir  # type: ignore[attr-defined]
    bundle = recorded(("a", "prov-app", "1.0"), ("b", "legacy", ""))
    save_bundle(jobs_dir, bundle)
    submitter = FakeSubmitter(FakeConnection({APP_VERSIONS}, AppVersionsReply(versions={"prov-app": "2.0"})))
    monkeypatch.setattr(milex.machine.submitter, "submitter_for", lambda machine: submitter)

    with pytest.raises(
        VersionMismatch, match=r"recorded with prov-app 1\.0, but machine 'local' has prov-app 2\.0"
    ):
        api.run("exp")
    assert submitter.submitted == [] and submitter.connection.asked[0].apps == ["prov-app"]
    assert load_submissions(jobs_dir, bundle.stem) == []

    api.run("exp", any_version=True)
    assert len(submitter.submitted) == 1 and len(submitter.connection.asked) == 1


def test_submit_records_the_provenance_of_jobs_built_in_memory(
    milex_config: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from milex.records import load_bundle

    submitter = FakeSubmitter(FakeConnection(set(), AppVersionsReply()))
    monkeypatch.setattr(milex.machine.submitter, "submitter_for", lambda machine: submitter)
    api.submit(Job(name="p", script="pip"), bundle="mem")  # pip: an entry point in any environment
    [sent] = submitter.submitted
    provenance = sent.jobs["p"].provenance
    assert provenance is not None and provenance.distribution == "pip" and provenance.version
    saved = load_bundle(milex_config.jobs_dir, "mem")  # type: ignore[attr-defined]
    assert saved.jobs["p"].provenance == provenance


def test_hello_reply_host_is_kept_on_the_connection(running: Served) -> None:
    connection: AgentConnection = running.connect()
    reply: HelloReply = connection.hello("0.1.0")
    assert connection.agent_host == reply.host != ""


def test_a_submissions_reply_carries_the_sha256_of_each_script_also_when_retried(running: Served) -> None:
    import hashlib

    from milex_common.render import render_script, script_stem
    from tests.unit.agent_fakes import chain_bundle, submit_request

    connection = running.connect()
    first = running.submit(connection, "a", "b")
    bundle = chain_bundle("exp", "a", "b")
    for job in first.jobs:
        text = render_script(bundle.jobs[job.name], running.settings, script_stem(bundle.stem, job.name))
        assert job.script_sha256 == hashlib.sha256(text.encode()).hexdigest()
        assert job.script_sha256 == hashlib.sha256(Path(job.script).read_bytes()).hexdigest()
    # The same keys again (a client's retry after a lost reply): nothing is rendered, the kept copy is read.
    again = connection.request(submit_request(bundle, running.settings), expect=Submitted)
    assert [job.script_sha256 for job in again.jobs] == [job.script_sha256 for job in first.jobs]
    assert len(running.fake.submitted) == 2


def test_the_agent_answers_others_while_a_check_runs(running: Served, tmp_path: Path) -> None:
    from milex_common.protocol import Status, StatusReply

    checking, asking = running.connect(timeout=20), running.connect()
    slow = AppVersions(settings=settings_with("sleep 2", tmp_path), apps=["prov-app"])
    request_id = checking.send(slow)
    started = time.monotonic()
    asking.request(Status(), expect=StatusReply)
    assert time.monotonic() - started < 1.0
    reply = checking.receive(request_id, expect=AppVersionsReply)
    assert reply.versions == {"prov-app": ""} and time.monotonic() - started >= 1.5


def test_an_agent_in_a_container_says_it_cannot_check_rather_than_finding_no_app(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Its jobs run in the host's environment, not the image's: an app missing there says nothing."""
    monkeypatch.setenv("MILEX_AGENT_CONTAINER", "1")
    settings = MachineSettings(name="cluster", path=str(tmp_path))
    reply = app_versions.answer(AppVersions(id="r1", settings=settings, apps=["milex-example"]))
    assert reply.unchecked == app_versions.IN_CONTAINER and reply.versions == {} and not reply.error
