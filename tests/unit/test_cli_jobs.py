"""`milex logs` and `milex-run --wait` against a real agent (a fake scheduler) over its ipc socket: the
whole log, a clear error for what does not exist, and a wait that says what it waits for and what
goes on when it stops."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from milex import api
from milex.cli.jobs import logs
from milex.cli.run_command import run
from milex.machine import endpoint
from milex.records import run_of_key
from milex_agent.journal import Journal
from milex_agent.lifetime import Lifetime
from milex_agent.server import AgentServer
from milex_agent.state import Agent
from milex_common.connection import AgentConnection
from milex_common.errors import WaitTimedOut
from milex_common.model import JobState, MachineSettings
from milex_common.protocol import LOG_CHUNK_BYTES, Submitted
from tests.unit.agent_fakes import FakeScheduler, chain_bundle, make_agent, submit_request

DEADLINE = 3.0


@dataclass
class Local:
    """The configuration's local machine, served by an AgentServer in a thread with a fake scheduler."""

    agent: Agent
    fake: FakeScheduler
    settings: MachineSettings
    endpoint: str

    def submit(self, *jobs: str, array: str | None = None) -> Submitted:
        connection = AgentConnection(self.endpoint, timeout=DEADLINE)
        with connection:
            request = submit_request(chain_bundle("exp", *jobs, array=array), self.settings)
            reply = connection.request(request, expect=Submitted)
        assert reply.error == "", reply
        return reply

    def log(self, name: str) -> Path:
        return Path(self.settings.path) / "slurm" / f"exp_20240101000000_{name}.out"


@pytest.fixture
def local(milex_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Local]:
    journal = Journal(tmp_path / "journal.sqlite")
    fake = FakeScheduler()
    agent = make_agent(journal, fake, interval=0.02, max_interval=0.1)
    address = f"ipc://{tmp_path / 'agent.sock'}"
    server = AgentServer(agent, address, lifetime=Lifetime(idle_exit=0))
    monkeypatch.setattr(endpoint, "endpoint", lambda machine: address)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    settings = MachineSettings(name="local", path=str(milex_config.milex_path))
    try:
        yield Local(agent, fake, settings, address)
    finally:
        agent.stopping = True
        thread.join(DEADLINE)
        server.close()
        journal.close()


# ---- milex logs ----------------------------------------------------------------------------------


def test_logs_prints_the_whole_log_however_many_chunks_it_takes(local: Local) -> None:
    local.submit("a")
    text = b"".join(b"line %06d\n" % i for i in range(3 * LOG_CHUNK_BYTES // 12))
    local.log("a-1000").write_bytes(text)
    result = CliRunner().invoke(logs, ["1000"])
    assert result.exit_code == 0, result.output
    assert len(result.stdout_bytes) == len(text) and result.stdout_bytes == text


def test_logs_of_an_unknown_job_is_an_error_naming_it(local: Local) -> None:
    local.submit("a")
    result = CliRunner().invoke(logs, ["99999"])
    assert result.exit_code == 1, result.output
    assert result.stdout == "" and "Traceback" not in result.output
    assert "99999" in result.stderr and result.stderr.startswith("error: ")


def test_logs_of_a_task_an_array_lacks_is_an_error_naming_its_tasks(local: Local) -> None:
    local.submit("a", array="0-3")
    local.log("a-1000_2").write_bytes(b"task two\n")
    assert CliRunner().invoke(logs, ["1000", "--task", "2"]).stdout == "task two\n"
    result = CliRunner().invoke(logs, ["1000", "--task", "99"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "no task 99" in result.stderr and "0-3" in result.stderr


def test_logs_of_a_task_of_a_job_that_is_no_array_is_an_error(local: Local) -> None:
    local.submit("a")
    local.log("a-1000").write_bytes(b"all\n")
    result = CliRunner().invoke(logs, ["1000", "--task", "1"])
    assert result.exit_code == 1, result.output
    assert "not an array" in result.stderr and "no task 1" in result.stderr


def test_logs_of_a_task_not_written_yet_are_empty_not_an_error(local: Local) -> None:
    local.submit("a", array="0-3")
    result = CliRunner().invoke(logs, ["1000", "--task", "3"])
    assert (result.exit_code, result.stdout) == (0, "")


# ---- milex-run --wait ----------------------------------------------------------------------------


def test_a_wait_that_times_out_names_the_unfinished_jobs_and_how_to_follow_them(local: Local) -> None:
    api.schedule("train", script_args={"lr": 0.1})
    result = CliRunner().invoke(run, ["train", "--wait", "--timeout", "0.3"])
    assert result.exit_code == WaitTimedOut.exit_code == 4, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    [job_id] = [call.job_id for call in local.fake.calls]
    assert f"train ({job_id}, PENDING)" in result.stderr
    assert "go on" in result.stderr and "milex status train_" in result.stderr


def test_a_wait_prints_the_run_and_its_jobs_at_once_and_a_ctrl_c_says_they_go_on(
    local: Local, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.schedule("train", script_args={"lr": 0.1})

    def interrupted(submission: object, **options: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "wait", interrupted)
    result = CliRunner().invoke(run, ["train", "--wait"])
    assert result.exit_code == 130, result.output
    [job_id] = [call.job_id for call in local.fake.calls]
    run_id = run_of_key(local.agent.journal.jobs()[0].key)
    assert f"(run {run_id})" in result.stdout and job_id in result.stdout
    assert "waiting" in result.stdout
    assert "stopped waiting" in result.stderr and f"train ({job_id}" in result.stderr
    assert "go on" in result.stderr and "milex status train_" in result.stderr


def test_a_wait_ends_with_the_final_states(local: Local) -> None:
    api.schedule("train", script_args={"lr": 0.1})
    end = threading.Timer(0.3, lambda: local.fake.set_state("1000", JobState.COMPLETED, 0))  # ids from 1000
    end.start()
    result = CliRunner().invoke(run, ["train", "--wait", "--timeout", "10"])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("train") >= 2 and "COMPLETED" in result.stdout


# ---- milex-run --dry-run -------------------------------------------------------------------------


def test_a_dry_run_on_this_host_writes_out_a_home_path_as_the_agent_will(milex_config) -> None:
    api.schedule("train", script_args={"lr": 0.1})
    result = CliRunner().invoke(run, ["train", "--dry-run", "--path", "~/elsewhere"])
    assert result.exit_code == 0, result.output
    assert "~" not in result.stdout
    assert f"#SBATCH --output={milex_config.home}/elsewhere/slurm/train_" in result.stdout


def test_a_dry_run_for_a_remote_home_path_says_whose_home_it_is(milex_config) -> None:
    api.schedule("train", script_args={"lr": 0.1})
    result = CliRunner().invoke(run, ["train", "--dry-run", "--machine", "cluster", "--path", "~/milex"])
    assert result.exit_code == 0, result.output
    note, _, scripts = result.stdout.partition("# ---- train ----")
    assert "~ is the home directory of alice on cluster.example.org" in note
    assert '#SBATCH --output="~/milex/slurm/train_' in scripts
