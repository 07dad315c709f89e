"""The agent's watchdog: its crontab line (added, replaced, removed, the user's other lines kept), and
`milex-agent start --if-work`, which starts an agent only when none runs and its journal holds work."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner

from milex.config.file import Machine
from milex.machine import commands
from milex.machine.watchdog import watchdog as set_watchdog
from milex_agent import daemon, watchdog
from milex_agent.cli import main as agent_cli
from milex_agent.journal import Journal, holds_work
from milex_common import agent_layout
from milex_common.agent_layout import JOURNAL
from milex_common.errors import MilexError
from milex_common.model import JobState, JobStatus
from milex_common.protocol import TrackedJob
from tests.unit.test_journal import restore

DIR = Path("/home/alice/milex/agent/cluster1")
COMMAND = "bash -lc 'milex-agent start --path ~/milex --if-work'"
USERS_OWN = (
    "MAILTO=alice@example.org\n"
    "# nightly backup\n"
    "0 3 * * * rsync -a ~/data /backup 2>&1 | logger\n"
    "\n"
    "*/5 * * * * date +\\%s >> ~/ticks\r\n"  # a line as written on Windows: kept as it is
)


# ---- the crontab line ------------------------------------------------------------------------------


def test_the_line_runs_every_minute_and_names_the_agent_it_watches():
    line = watchdog.entry(COMMAND, DIR)
    assert line == f"* * * * * {COMMAND} # milex-agent watchdog {DIR}"


def test_a_percent_is_escaped_since_cron_reads_it_as_a_newline():
    directory = Path("/home/alice/100%/agent/c1")
    line = watchdog.entry("bash -lc 'echo 50%'", directory)
    assert line == "* * * * * bash -lc 'echo 50\\%' # milex-agent watchdog /home/alice/100\\%/agent/c1"
    assert watchdog.entry_in(watchdog.with_entry("", line, directory), directory) == line


def test_a_newline_cannot_go_into_a_crontab_line():
    with pytest.raises(MilexError, match="cannot hold a newline"):
        watchdog.entry("true\n* * * * * rm -rf ~", DIR)


def test_installing_into_an_empty_crontab_adds_the_line():
    line = watchdog.entry(COMMAND, DIR)
    assert watchdog.with_entry("", line, DIR) == f"{line}\n"


def test_installing_appends_the_line_and_keeps_every_other_line_as_written():
    line = watchdog.entry(COMMAND, DIR)
    assert watchdog.with_entry(USERS_OWN, line, DIR) == f"{USERS_OWN}{line}\n"
    assert watchdog.with_entry(USERS_OWN.removesuffix("\n"), line, DIR) == f"{USERS_OWN}{line}\n"


def test_installing_again_replaces_the_line_where_it_was_and_never_adds_a_second():
    old = watchdog.entry("bash -lc 'milex-agent start --path ~/milex --if-work --poll-interval 9'", DIR)
    new = watchdog.entry(COMMAND, DIR)
    crontab = f"# mine\n{old}\n0 3 * * * backup\n"
    replaced = watchdog.with_entry(crontab, new, DIR)
    assert replaced == f"# mine\n{new}\n0 3 * * * backup\n"
    assert watchdog.with_entry(replaced, new, DIR) == replaced
    # A line commented out by the user is ours all the same: installing puts it back in force, once.
    twice = f"#{old}\n0 3 * * * backup\n{old}\n"
    assert watchdog.with_entry(twice, new, DIR) == f"{new}\n0 3 * * * backup\n"


def test_removing_takes_out_the_line_alone():
    line = watchdog.entry(COMMAND, DIR)
    installed = watchdog.with_entry(USERS_OWN, line, DIR)
    assert watchdog.without_entry(installed, DIR) == USERS_OWN
    assert watchdog.without_entry(USERS_OWN, DIR) == USERS_OWN  # none there: nothing changes
    assert watchdog.entry_in(USERS_OWN, DIR) is None


@pytest.mark.parametrize("other", ["/home/alice/milex/agent/cluster1/x", "/x/home/alice/milex/agent/cluster1",
                                   "/home/alice/milex/agent/cluster"])  # fmt: skip
def test_the_watchdog_of_another_agent_directory_is_another_line(other):
    mine, theirs = watchdog.entry(COMMAND, DIR), watchdog.entry(COMMAND, Path(other))
    both = watchdog.with_entry(watchdog.with_entry("", theirs, Path(other)), mine, DIR)
    assert both == f"{theirs}\n{mine}\n"
    assert watchdog.entry_in(both, DIR) == mine
    assert watchdog.without_entry(both, DIR) == f"{theirs}\n"


def test_without_a_crontab_command_the_error_says_what_follows(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # a node without cron: no `crontab` anywhere
    with pytest.raises(watchdog.NoCrontab) as refused:
        watchdog.install(COMMAND, DIR)
    assert "has no `crontab` command, so no watchdog" in str(refused.value)
    assert "starts again only with the next command from the laptop" in str(refused.value)


# ---- the command the line runs ---------------------------------------------------------------------


def remote(**settings: str) -> Machine:
    return Machine(name="cluster", path="~/milex", env_command="source ~/venv/bin/activate",
                   slurm_account="", hostname="login1", **settings)  # fmt: skip


def test_the_line_starts_the_agent_as_the_laptop_does_in_the_machines_environment():
    _, _, script = shlex.split(commands.watchdog_command(remote()))  # bash -lc SCRIPT
    start = shlex.split(commands.remote_agent_command(remote(), "start"))[2]
    assert script.startswith("source ~/venv/bin/activate && ")
    assert "milex-agent start --path '~/milex' --poll-interval" in script and script.endswith("--if-work; fi")
    options = start.split("milex-agent start")[1].split(";")[0]  # the laptop's start options
    assert f"milex-agent start{options} --if-work" in script
    # Where deploy put the agent in its container, whose engine restarts it, the line does nothing.
    assert script.split(" && ", 1)[1].startswith('if [ ! -f "$HOME"/milex/agent/container.py ]; then')


def test_the_line_passes_the_machines_state_dir():
    _, _, script = shlex.split(commands.watchdog_command(remote(state_dir="/var/tmp/alice")))
    assert "--state-dir /var/tmp/alice" in script


def test_a_machine_on_this_host_gets_the_line_to_add_itself():
    here = Machine(name="local", path="/home/alice/milex", env_command="", slurm_account="")
    with pytest.raises(MilexError) as refused:
        set_watchdog(here)
    assert "on this host" in str(refused.value)
    assert str(refused.value).endswith("* * * * * milex-agent start --path /home/alice/milex --if-work")


# ---- whether the journal holds work ----------------------------------------------------------------


def job(key: str) -> TrackedJob:
    return TrackedJob(key=key, bundle="b_20240101000000", name=key, job_id="", state=JobState.SUBMITTED)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal(tmp_path / "agent" / JOURNAL)
    yield journal
    journal.close()


def test_no_journal_holds_no_work(tmp_path):
    assert not holds_work(tmp_path / JOURNAL)
    assert not (tmp_path / JOURNAL).exists()  # and none was made by asking


def test_a_job_in_doubt_is_work_until_it_is_found(journal):
    journal.begin(job("b/a"), scheduler="slurm", machine_path="/m")
    assert journal.has_work() and holds_work(journal.path)
    journal.submitted("b/a", "17")
    assert journal.has_work() and holds_work(journal.path)  # in SLURM, not ended
    journal.update([("b/a", JobStatus(job_id="17", state=JobState.RUNNING))])
    assert holds_work(journal.path)
    journal.update([("b/a", JobStatus(job_id="17", state=JobState.COMPLETED, exit_code=0))])
    assert not journal.has_work() and not holds_work(journal.path)


def test_a_queued_job_is_work_until_it_is_settled(journal):
    journal.enqueue("b_20240101000000", b"{}", [(job("b/q"), 1)], scheduler="slurm", machine_path="/m")
    assert journal.has_work() and holds_work(journal.path)
    journal.settle_unsubmitted(["b/q"], JobState.CANCELLED, "cancelled in the queue")
    assert not journal.has_work() and not holds_work(journal.path)


def test_a_journal_of_an_earlier_release_or_a_damaged_one_is_for_the_agent_to_judge(tmp_path):
    older = restore("release-0.1.sql", tmp_path / "older" / JOURNAL)
    assert holds_work(older)  # the agent started for it migrates it
    damaged = tmp_path / "damaged" / JOURNAL
    damaged.parent.mkdir()
    damaged.write_bytes(b"not a database!!" * 512)
    assert holds_work(damaged)  # the agent started for it sets it aside, saying so in its log


# ---- start --if-work ---------------------------------------------------------------------------------


@pytest.fixture
def agent_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "milex" / "agent" / "login1"
    yield directory
    daemon.stop(directory, timeout=5.0)


def with_work(directory: Path) -> None:
    """A journal in `directory` with a job the local scheduler runs (as an agent killed left it)."""
    journal = Journal(directory / JOURNAL)
    journal.begin(job("b/a"), scheduler="local", machine_path=str(directory.parent))
    journal.submitted("b/a", "1")
    journal.close()


def test_without_work_nothing_starts_and_nothing_is_made(agent_dir):
    assert daemon.start_if_work(agent_dir) is None
    assert not agent_dir.exists()
    agent_dir.mkdir(parents=True)
    Journal(agent_dir / JOURNAL).close()  # an agent ran and left nothing to do
    assert daemon.start_if_work(agent_dir) is None
    assert daemon.read_info(agent_dir) is None


def test_with_work_and_no_agent_it_starts_one_and_then_leaves_it_alone(agent_dir):
    with_work(agent_dir)
    info = daemon.start_if_work(agent_dir, poll_interval=0.1, max_interval=0.5)
    assert info is not None and daemon.read_info(agent_dir) == info
    assert (
        "INFO no agent runs and the journal holds work: the watchdog starts one"
        in (agent_dir / "agent.log").read_text()
    )
    assert daemon.start_if_work(agent_dir) is None  # it runs: nothing to do
    assert daemon.read_info(agent_dir) == info


def test_a_watchdog_and_a_laptop_starting_together_end_with_one_agent(agent_dir):
    with_work(agent_dir)
    settings = {"poll_interval": 0.1, "max_interval": 0.5}
    starts = [daemon.start_if_work, daemon.start, daemon.start_if_work, daemon.start]
    with ThreadPoolExecutor(len(starts)) as pool:  # each its own lock descriptor: they exclude each other
        results = list(pool.map(lambda start: start(agent_dir, **settings), starts))
    running = daemon.read_info(agent_dir)
    assert running is not None
    assert {info.pid for info in results if info is not None} == {running.pid}
    assert "already running" not in (agent_dir / "agent.log").read_text()


def test_the_cli_says_nothing_when_there_is_nothing_to_do_and_one_line_when_it_starts(agent_dir):
    quiet = CliRunner().invoke(agent_cli, ["start", "--if-work", "--dir", str(agent_dir)])
    assert (quiet.exit_code, quiet.output) == (0, "")
    with_work(agent_dir)
    said = CliRunner().invoke(
        agent_cli, ["start", "--if-work", "--dir", str(agent_dir), "--poll-interval", "0.1"]
    )
    info = daemon.read_info(agent_dir)
    assert said.exit_code == 0 and info is not None
    assert said.output == f"started agent {info.pid}: none ran for {agent_dir}, and its journal holds work\n"


def test_the_lines_command_run_as_cron_runs_it_starts_the_agent_when_work_is_left(tmp_path, home):
    activate = f"export PATH={Path(sys.executable).parent}:$PATH"  # milex-agent's venv, as activate does
    machine = Machine(name="cluster", path=str(tmp_path / "milex"), env_command=activate, slurm_account="",
                      hostname="login1")  # fmt: skip
    directory = agent_layout.agent_dir(machine.path)
    line = ["sh", "-c", commands.watchdog_command(machine)]  # what cron does with the line's command
    try:
        quiet = subprocess.run(line, capture_output=True, text=True, timeout=60, check=False)
        assert (quiet.returncode, quiet.stdout) == (0, ""), quiet.stderr
        assert not directory.exists()
        with_work(directory)
        started = subprocess.run(line, capture_output=True, text=True, timeout=60, check=False)
        info = daemon.read_info(directory)
        assert started.returncode == 0 and info is not None, started.stderr
        assert started.stdout.startswith(f"started agent {info.pid}: none ran for {directory}")
    finally:
        daemon.stop(directory, timeout=5.0)
