"""`milex-run BUNDLE [--machine M]` without click: which words take that road, that it loads neither
click nor rich nor paramiko for a whole submission, and that it prints what the click command prints."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from milex.cli import terminal as plain
from milex.cli.run import common_form, main
from milex.cli.run_command import run
from milex.records import save_bundle
from tests.unit.agent_fakes import chain_bundle
from tests.unit.conftest import MilexSetup
from tests.unit.served import Served


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["exp"], ("exp", None)),
        (["exp", "--machine", "cluster"], ("exp", "cluster")),
        (["--machine", "cluster", "exp"], ("exp", "cluster")),
        (["exp", "--machine=cluster"], ("exp", "cluster")),
        (["--machine=", "exp"], ("exp", "")),
    ],
)
def test_the_common_form_is_read_here(argv: list[str], words: tuple[str, str | None]) -> None:
    assert common_form(argv) == words


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["-h"],
        ["--help"],
        ["exp", "--wait"],
        ["exp", "--date", "20240101000000"],
        ["exp", "--machine"],  # its value missing: click says so
        ["exp", "--machine", "--wait"],
        ["exp", "--machine", "a", "--machine", "b"],
        ["exp", "other"],
        ["--", "exp"],
        ["-x"],
    ],
)
def test_any_other_form_is_left_to_click(argv: list[str]) -> None:
    assert common_form(argv) is None


def _serve_bundle(served: Served, milex_config: MilexSetup) -> None:
    served.start()
    save_bundle(milex_config.jobs_dir, chain_bundle("exp", "a", "b", created="20240101000000"))


def _run_a_bundle(served: Served, milex_config: MilexSetup, before: str, after: str) -> str:
    """What a new process printed that ran `milex-run exp` against `served`, with `before` run ahead
    of the CLI's import and `after` once it returned; the submission checked as done."""
    _serve_bundle(served, milex_config)
    probe = (
        "import gc, sys\n"
        "from milex.machine import endpoint\n"
        f"endpoint.endpoint = lambda machine: {served.endpoint!r}\n"
        "sys.argv = ['milex-run', 'exp']\n"
        f"{before}"
        "from milex.cli.run import main\n"
        "main()\n"
        f"{after}"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr
    assert "exp_20240101000000 on local (run " in done.stdout
    return done.stdout


def test_a_whole_submission_of_the_common_form_loads_no_click_rich_or_paramiko(
    served: Served, milex_config: MilexSetup
) -> None:
    """The contract behind a fast warm `milex-run`: a new process that submits a bundle and prints its
    jobs imports none of them (click alone is ~10 ms of every run), nor tempfile (shutil, bz2 and lzma
    with it, ~3 ms: the records' temporary files are made by milex_common.files.temporary_beside)."""
    unloaded = ("click", "rich", "paramiko", "tempfile", "shutil")
    loaded = f"print('loaded:', ','.join(m for m in {unloaded!r} if m in sys.modules))\n"
    printed = _run_a_bundle(served, milex_config, "", loaded)
    assert printed.rstrip().endswith("loaded:"), printed


def test_the_common_form_runs_without_garbage_collection_and_leaves_its_objects_frozen(
    served: Served, milex_config: MilexSetup
) -> None:
    """A warm `milex-run` neither collects while it imports (~40 young collections) nor has the
    interpreter traverse its objects again at exit (gc.freeze): ~15 ms of ~100. The collector is on
    again afterwards, for a caller in the same process."""
    count = (
        "collected = []\n"
        "gc.callbacks.append(lambda phase, info: phase == 'start' and collected.append(info))\n"
    )
    frozen = (
        "print('collections:', len(collected), 'frozen:', gc.get_freeze_count() > 10000, gc.isenabled())\n"
    )
    printed = _run_a_bundle(served, milex_config, count, frozen)
    assert printed.rstrip().endswith("collections: 0 frozen: True True"), printed


def test_a_local_agent_found_running_costs_no_logging_subprocess_signal_or_sqlite3(tmp_path) -> None:
    """A local machine's warm road (milex.machine.local, the agent's info read under its lock) leaves
    what starts, stops or runs an agent unimported: ~7 ms of a warm `milex-run`."""
    probe = (
        "import sys, pathlib, milex.machine.local\n"
        f"pathlib.Path({str(tmp_path / 'agent.lock')!r}).touch()\n"
        "from milex_agent import daemon\n"
        f"assert daemon.read_info(pathlib.Path({str(tmp_path)!r})) is None\n"
        "print(','.join(m for m in ('logging', 'subprocess', 'signal', 'sqlite3') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == ""


# What a warm remote run imports beside the above: the tunnel's client side (start_tunnel, check_link).
REMOTE_ROAD = (
    "milex.cli.run", "milex.cli.submitting", "milex.api", "milex.cli.output", "milex.machine.submitter",
    "milex.machine.endpoint", "milex.machine.commands", "milex.machine.ssh.errors",
    "milex.machine.tunnel.control", "milex.provenance.check",
)  # fmt: skip


def test_the_road_to_a_remote_machine_whose_tunnel_is_up_loads_no_paramiko_click_or_rich() -> None:
    """paramiko (~270 ms) is the tunnel's own: a command that finds its tunnel up never pays for it;
    nor for socket (only the link's check uses it, ~2.5 ms)."""
    unloaded = ("paramiko", "click", "rich", "socket")
    probe = (
        f"import sys, {', '.join(REMOTE_ROAD)}\nprint(','.join(m for m in {unloaded!r} if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == ""


def _without_run_ids(output: str) -> str:
    return re.sub(r"\d{14}-[0-9a-f]{8}", "RUN", output)


def test_the_common_form_prints_what_the_click_command_prints(
    served: Served,
    milex_config: MilexSetup,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _serve_bundle(served, milex_config)
    from milex.machine import endpoint

    monkeypatch.setattr(endpoint, "endpoint", lambda machine: served.endpoint)
    by_click = CliRunner().invoke(run, ["exp"])
    assert by_click.exit_code == 0, by_click.output
    monkeypatch.setattr(sys, "argv", ["milex-run", "exp"])
    main()
    here = capsys.readouterr()
    assert here.err == ""
    # The same lines; the second run has ids of its own (the fake scheduler counts on).
    ids = re.compile(r"(?m)^(\w)\s+\d+\s+")
    assert ids.sub(r"\1 ID ", _without_run_ids(here.out)) == ids.sub(
        r"\1 ID ", _without_run_ids(by_click.output)
    )


def test_an_error_of_the_common_form_is_the_click_command_s(
    milex_config: MilexSetup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    by_click = CliRunner().invoke(run, ["nothing", "--machine", "cluster"])
    monkeypatch.setattr(sys, "argv", ["milex-run", "nothing", "--machine", "cluster"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == by_click.exit_code == 1
    here = capsys.readouterr()
    assert here.out == ""
    assert here.err == by_click.stderr
    assert here.err.startswith("error: no bundle named 'nothing'")


class _Stream(io.StringIO):
    def __init__(self, tty: bool, encoding: str = "utf-8") -> None:
        super().__init__()
        self.tty, self._encoding = tty, encoding

    def isatty(self) -> bool:
        return self.tty

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._encoding


@pytest.mark.parametrize("encoding", ["utf-8", "ascii"])
@pytest.mark.parametrize("tty", [True, False])
@pytest.mark.parametrize("err", [False, True])
def test_echo_and_style_write_what_click_writes(
    tty: bool, err: bool, encoding: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ASCII stream included: click re-opens such a stream as UTF-8 where it can, and ours lets it."""
    written = {}
    for name, echo, style in (("ours", plain.echo, plain.style), ("click's", click.echo, click.style)):
        stream = _Stream(tty, encoding)
        monkeypatch.setattr(sys, "stderr" if err else "stdout", stream)
        for color in ("green", "cyan", "yellow", "blue", "red"):
            echo(f"cli  {style('RUNNING', fg=color)}  é", err=err)
        echo("", err=err)
        written[name] = stream.getvalue()
    assert written["ours"] == written["click's"]
    assert ("\033[" in written["ours"]) is tty
