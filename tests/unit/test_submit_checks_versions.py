"""A SubmitBundle whose apps' versions the agent checks first (SUBMIT_CHECKS_VERSIONS): one request
where an AppVersions and a SubmitBundle were two; today's refusal and warning; nothing submitted or
journaled when refused; the agent answers others while the check runs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import milex.machine.submitter
from milex import api
from milex.config.file import Machine
from milex.machine.submitter import AgentSubmitter
from milex.provenance.check import VersionCheckFailed, VersionMismatch, first_mismatch
from milex.records import load_submissions, save_bundle
from milex_agent import app_versions
from milex_common.connection import AgentConnection
from milex_common.model import Bundle, MachineSettings
from milex_common.protocol import (
    APP_VERSIONS,
    SUBMIT_CHECKS_VERSIONS,
    AppVersionsReply,
    Message,
    Status,
    StatusReply,
    SubmitBundle,
    SubmitProgress,
    Submitted,
)
from tests.unit.served import Served
from tests.unit.test_app_versions import fake_install, recorded, settings_with


def checked_submit(bundle: Bundle, settings: MachineSettings, *, progress: bool = False) -> SubmitBundle:
    keys = {name: f"{bundle.stem}/{name}" for name in bundle.jobs}
    return SubmitBundle(bundle=bundle, settings=settings, keys=keys, progress=progress, check_versions=True)


def nothing_submitted_nor_journaled(running: Served, connection: AgentConnection) -> None:
    assert running.fake.calls == []
    assert connection.request(Status(), expect=StatusReply).jobs == []


# ---- the agent ----------------------------------------------------------------------------------


def test_the_agent_names_the_feature(running: Served) -> None:
    assert SUBMIT_CHECKS_VERSIONS in running.connect().hello("0.1.0").features


def test_a_version_other_than_recorded_is_refused_with_the_check_and_nothing_is_submitted(
    running: Served, tmp_path: Path
) -> None:
    connection = running.connect(timeout=20)
    settings = settings_with(fake_install(tmp_path, "prov-app", "2.0"), tmp_path)
    request = checked_submit(recorded(("a", "prov-app", "1.0"), ("b", "legacy", "")), settings)
    request_id = connection.send(request)
    reply = connection.receive(request_id, expect=AppVersionsReply)
    assert reply == AppVersionsReply(id=request_id, versions={"prov-app": "2.0"})
    nothing_submitted_nor_journaled(running, connection)


def test_a_check_that_fails_is_refused_with_its_error_and_nothing_is_submitted(
    running: Served, tmp_path: Path
) -> None:
    connection = running.connect(timeout=20)
    request = checked_submit(recorded(("a", "prov-app", "1.0")), settings_with("exit 1", tmp_path))
    reply = connection.request(request, expect=AppVersionsReply)
    assert reply.versions == {} and "exit 1" in reply.error
    nothing_submitted_nor_journaled(running, connection)


def test_the_recorded_versions_are_submitted_as_without_a_check(running: Served, tmp_path: Path) -> None:
    connection = running.connect(timeout=20)
    settings = settings_with(fake_install(tmp_path, "prov-app", "1.0"), tmp_path)
    reply = connection.request(checked_submit(recorded(("a", "prov-app", "1.0")), settings), expect=Submitted)
    assert [job.name for job in reply.jobs] == ["a"] and reply.jobs[0].job_id
    assert reply.error == "" and reply.unchecked == ""
    # Without the flag (an older client), nothing is checked: the other version is submitted.
    other = settings_with("exit 1", tmp_path)
    bundle = recorded(("a", "prov-app", "0.9"))
    plain = SubmitBundle(bundle=bundle, settings=other, keys={"a": "plain/a"})
    assert connection.request(plain, expect=Submitted).jobs[0].job_id


def test_a_bundle_without_a_checkable_job_is_submitted_with_no_check(running: Served, tmp_path: Path) -> None:
    connection = running.connect()
    request = checked_submit(recorded(("b", "legacy", "")), settings_with("exit 1", tmp_path))
    reply = connection.request(request, expect=Submitted)
    assert reply.unchecked == "" and [job.name for job in reply.jobs] == ["b"]


def test_an_agent_that_cannot_check_submits_and_says_why(
    running: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MILEX_AGENT_CONTAINER", "1")
    connection = running.connect(timeout=20)
    request = checked_submit(recorded(("a", "prov-app", "1.0")), settings_with("exit 1", tmp_path))
    reply = connection.request(request, expect=Submitted)
    assert reply.unchecked == app_versions.IN_CONTAINER and [job.name for job in reply.jobs] == ["a"]


def test_the_agent_answers_others_and_sends_progress_while_a_submissions_check_runs(
    running: Served, tmp_path: Path
) -> None:
    checking, asking = running.connect(timeout=20), running.connect()
    slow = settings_with(f"sleep 2; {fake_install(tmp_path, 'prov-app', '1.0')}", tmp_path)
    request_id = checking.send(checked_submit(recorded(("a", "prov-app", "1.0")), slow, progress=True))
    started = time.monotonic()
    asking.request(Status(), expect=StatusReply)
    assert time.monotonic() - started < 1.0
    progress: list[SubmitProgress] = []
    while True:
        reply = checking.receive(request_id, 5.0, expect=(SubmitProgress, Submitted))
        if isinstance(reply, Submitted):
            break
        progress.append(reply)
    assert time.monotonic() - started >= 1.5 and [job.name for job in reply.jobs] == ["a"]
    assert len(progress) >= 2 and all(item.submitted == 0 and item.total == 1 for item in progress[:2])


# ---- the client ---------------------------------------------------------------------------------


class Counted(AgentSubmitter):
    """A submitter on the served agent's connection, noting the kind of each request it sends; an
    older agent is played by taking the feature out of what it named."""

    def __init__(self, running: Served, *, older: bool = False) -> None:
        super().__init__(Machine(name="local", path=running.settings.path, env_command="", slurm_account=""))
        self._connection = running.connect(timeout=20)
        self._connection.hello("0.1.0")
        if older:
            self._connection.features = self._connection.features - {SUBMIT_CHECKS_VERSIONS}
        self.sent: list[str] = []
        send = self._connection.send

        def counted(request: Message) -> str:
            self.sent.append(type(request).__name__)
            return send(request)

        self._connection.send = counted  # type: ignore[method-assign]

    @property
    def connection(self) -> AgentConnection:
        return self._connection


@pytest.fixture
def local_with(milex_config: object, running: Served, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Point machine 'local' at the served agent with `env_command`; save the bundle 'exp'."""

    def make(env_command: str, *, older: bool = False) -> Counted:
        milex_config.write_config(  # type: ignore[attr-defined]
            {
                "local": {
                    "path": running.settings.path,
                    "env_command": env_command,
                    "slurm_account": "def-alice",
                }
            }
        )
        save_bundle(milex_config.jobs_dir, recorded(("a", "prov-app", "1.0"), ("b", "legacy", "")))  # type: ignore[attr-defined]
        submitter = Counted(running, older=older)
        monkeypatch.setattr(milex.machine.submitter, "submitter_for", lambda machine: submitter)
        return submitter

    return make


def test_a_checked_run_is_one_request_to_a_new_agent_and_two_to_an_older_one(
    local_with, running: Served, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    install = fake_install(tmp_path, "prov-app", "1.0")
    submitter = local_with(install)
    assert list(api.run("exp").jobs) == ["a", "b"]
    assert submitter.sent == ["SubmitBundle"]

    older = local_with(install, older=True)
    api.run("exp")
    assert older.sent == ["AppVersions", "SubmitBundle"]
    assert APP_VERSIONS in older.connection.features
    assert len(running.fake.calls) == 4


def test_a_refused_run_raises_todays_mismatch_and_leaves_no_run_record(
    local_with, running: Served, milex_config: object, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    submitter = local_with(fake_install(tmp_path, "prov-app", "2.0"))
    with pytest.raises(VersionMismatch) as refused:
        api.run("exp")
    today = first_mismatch({"prov-app": {"a": "1.0"}}, {"prov-app": "2.0"}, "local")
    assert str(refused.value) == str(today) and refused.value.found == "2.0"
    assert submitter.sent == ["SubmitBundle"] and running.fake.calls == []
    assert load_submissions(milex_config.jobs_dir, "exp_20240101000000") == []  # type: ignore[attr-defined]
    assert submitter.connection.request(Status(), expect=StatusReply).jobs == []

    api.run("exp", any_version=True)  # the flag: the agent is not asked to check
    assert len(running.fake.calls) == 2


def test_a_failed_check_and_an_unchecked_one_say_what_they_said_before(
    local_with, running: Served, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    local_with("exit 1")
    with pytest.raises(VersionCheckFailed, match=r"could not check the versions of prov-app on machine "
                       r"'local': .*exit 1.*; fix its env_command, or pass --any-version"):  # fmt: skip
        api.run("exp")
    assert running.fake.calls == []

    monkeypatch.setenv("MILEX_AGENT_CONTAINER", "1")
    api.run("exp")
    assert capsys.readouterr().err.strip().splitlines() == [
        f"warning: the recorded versions of prov-app were not checked on machine 'local': "
        f"{app_versions.IN_CONTAINER}."
    ]
    assert len(running.fake.calls) == 2


def test_the_old_path_still_asks_app_versions_first(local_with, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    older = local_with(fake_install(tmp_path, "prov-app", "2.0"), older=True)
    with pytest.raises(VersionMismatch):
        api.run("exp")
    assert older.sent == ["AppVersions"]
