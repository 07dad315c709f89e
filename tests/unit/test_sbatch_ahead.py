"""sbatch started ahead of its call (agent/milex_agent/scheduler/slurm/sbatch.py): the options argv
would carry, written into the script's header instead; the spare used, replaced when old or dead, and
stopped without submitting anything. A stand-in `sbatch` on PATH records what it was given;
tests/e2e/test_sbatch_ahead.py submits through the real one."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from milex_agent.scheduler.slurm import sbatch
from milex_agent.scheduler.slurm.command import CommandResult
from milex_agent.scheduler.slurm.sbatch import Sbatch, with_directives

SCRIPT = "#!/bin/bash\n#SBATCH --job-name=a\n\n# setup\n#SBATCH --time=5\necho hi\n#SBATCH --late\n"

# Records its pid when it starts, then what it reads; an empty script is refused, as sbatch does.
STAND_IN = """#!/bin/sh
echo $$ >> "$SBATCH_SEEN/started"
for last; do :; done
case "$last" in --*) script=$(cat) ;; *) script="(read from $last)" ;; esac
if [ -z "$script" ]; then echo "sbatch: error: Batch script is empty!" >&2; exit 1; fi
printf '%s' "$script" > "$SBATCH_SEEN/$$.sh"
echo "$$;cluster"
"""


def test_the_options_go_last_in_the_header_where_they_override_the_scripts_own() -> None:
    headed = with_directives(SCRIPT, ["--dependency=afterok:1:2", "--comment=milex:k~3"])
    assert headed == (
        "#!/bin/bash\n#SBATCH --job-name=a\n\n# setup\n#SBATCH --time=5\n"
        "#SBATCH --dependency=afterok:1:2\n#SBATCH --comment=milex:k~3\n"
        "echo hi\n#SBATCH --late\n"
    )


def test_a_script_of_header_only_gets_the_options_at_its_end() -> None:
    assert with_directives("#!/bin/sh\n#SBATCH --hold", ["--comment=c"]) == (
        "#!/bin/sh\n#SBATCH --hold\n#SBATCH --comment=c\n"
    )
    assert with_directives("#!/bin/sh\n", []) == "#!/bin/sh\n"


@pytest.mark.parametrize(
    ("text", "option"),
    [
        ("echo no interpreter line\n", "--comment=c"),
        (SCRIPT, "--comment=two words"),
        (SCRIPT, "--comment='quoted'"),
        (SCRIPT, "--comment=a#b"),
        (SCRIPT, "--comment=back\\slash"),
    ],
)
def test_what_a_header_line_cannot_say_as_argv_does_is_left_to_argv(text: str, option: str) -> None:
    assert with_directives(text, [option]) is None


@pytest.fixture
def seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory the stand-in sbatch (first on PATH) writes what it was given to."""
    bin_dir, seen = tmp_path / "bin", tmp_path / "seen"
    bin_dir.mkdir()
    seen.mkdir()
    (bin_dir / "sbatch").write_text(STAND_IN)
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SBATCH_SEEN", str(seen))
    yield seen


def spare(runner: Sbatch, seen: Path, *used: str) -> str:
    """The pid of the stand-in `runner` keeps waiting for a script: started, none of the `used` ones."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = (seen / "started").read_text().split() if (seen / "started").exists() else []
        waiting = set(pids) - set(used)
        if waiting and runner.waiting is not None:
            assert waiting == {str(runner.waiting)}, f"stand-ins started and not used: {waiting}"
            return waiting.pop()
        time.sleep(0.01)
    raise AssertionError("no stand-in sbatch was started ahead")


def pid(result: CommandResult) -> str:
    return result.stdout.strip().removesuffix(";cluster")


def submitted(seen: Path) -> dict[str, str]:
    return {path.stem: path.read_text() for path in seen.glob("*.sh")}


def test_the_next_call_is_given_to_the_sbatch_started_after_the_one_before(seen: Path) -> None:
    runner = Sbatch()
    try:
        first = runner.start(["--comment=c1"], Path("a.sh"), SCRIPT)()
        ahead = spare(runner, seen, pid(first))  # started once the first call was
        second = runner.start(["--dependency=afterok:1", "--comment=c2"], Path("b.sh"), SCRIPT)()
        spare(runner, seen, pid(first), ahead)  # and another for the next
    finally:
        runner.close()
    assert pid(second) == ahead
    assert first.argv == second.argv == sbatch.SBATCH  # the options went into the header
    scripts = submitted(seen)
    assert "#SBATCH --dependency=afterok:1\n#SBATCH --comment=c2\necho hi" in scripts[ahead]
    assert len(scripts) == 2  # the third one, started for a next call, was stopped unused


def test_a_stopped_spare_submits_nothing(seen: Path) -> None:
    runner = Sbatch()
    first = runner.start([], Path("a.sh"), SCRIPT)()
    spare(runner, seen, pid(first))
    runner.close()
    runner.close()  # nothing left to stop
    assert len(submitted(seen)) == 1


def test_a_spare_found_old_is_stopped_not_used(seen: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = Sbatch()
    try:
        first = runner.start([], Path("a.sh"), SCRIPT)()
        old = spare(runner, seen, pid(first))
        monkeypatch.setattr(sbatch, "SPARE_FOR", 0.0)  # older than that now, before the maker replaced it
        second = runner.start([], Path("b.sh"), SCRIPT)()
    finally:
        runner.close()
    assert second.returncode == 0 and pid(second) != old
    assert old not in submitted(seen)


def test_a_dead_spare_is_replaced_not_used(seen: Path) -> None:
    runner = Sbatch()
    try:
        first = runner.start([], Path("a.sh"), SCRIPT)()
        dead = spare(runner, seen, pid(first))
        os.kill(int(dead), 9)
        time.sleep(0.2)
        second = runner.start([], Path("b.sh"), SCRIPT)()
        assert second.returncode == 0 and pid(second) != dead
    finally:
        runner.close()
    assert dead not in submitted(seen)


def test_a_spare_that_waited_its_time_is_replaced_by_a_fresh_one(
    seen: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sbatch, "SPARE_FOR", 0.5)
    runner = Sbatch()
    try:
        first = runner.start([], Path("a.sh"), SCRIPT)()
        old = spare(runner, seen, pid(first))
        deadline = time.monotonic() + 10
        while runner.waiting in (None, int(old)) and time.monotonic() < deadline:
            time.sleep(0.01)
        fresh = runner.waiting
        assert fresh not in (None, int(old)), "the old spare was not replaced"
        second = runner.start([], Path("b.sh"), SCRIPT)()
    finally:
        runner.close()
    started = (seen / "started").read_text().split()
    assert started.index(pid(second)) > started.index(old)  # a spare started after the old one
    assert old not in submitted(seen)
    with pytest.raises(ProcessLookupError):
        os.kill(int(old), 0)  # stopped, and reaped


def test_a_script_sbatch_must_read_from_its_file_is_given_by_path_in_argv(seen: Path) -> None:
    runner = Sbatch()
    result = runner.start(["--comment=c"], Path("/x/job.sh"), None)()
    runner.close()
    assert result.argv == (*sbatch.SBATCH, "--comment=c", "/x/job.sh")
    assert submitted(seen) == {pid(result): "(read from /x/job.sh)"}


def test_a_script_larger_than_a_pipe_holds_is_written_by_the_waiting_thread(seen: Path) -> None:
    """The loop never waits on sbatch's reading: a large script is written by `finish`, on a worker."""
    runner = Sbatch()
    large = SCRIPT + "# padding\n" * (sbatch.PIPE_TAKES // 10)
    try:
        waiting = runner.start(["--comment=c"], Path("a.sh"), large)
        result = waiting()
    finally:
        runner.close()
    assert submitted(seen)[pid(result)] == with_directives(large, ["--comment=c"]).rstrip("\n")


def test_calls_made_together_start_no_spare_until_at_most_one_is_in_flight(seen: Path) -> None:
    """A bundle's independent jobs keep the login node's cores to themselves: while two calls are in
    flight, no spare waits (one started as the first call began is stopped); once one call is left,
    the next call's is started."""
    runner = Sbatch()
    try:
        first = runner.start([], Path("1.sh"), SCRIPT)
        second = runner.start([], Path("2.sh"), SCRIPT)
        time.sleep(0.5)  # the stand-ins have ended; their calls are still in flight until answered
        assert runner.waiting is None
        started = (seen / "started").read_text().split()  # the calls', and a spare stopped, if any
        both = [pid(first()), pid(second())]
        ahead = spare(runner, seen, *started)  # started once one call was answered
        assert pid(runner.start([], Path("3.sh"), SCRIPT)()) == ahead
    finally:
        runner.close()
    assert set(submitted(seen)) == {*both, ahead}


def test_a_chains_next_sbatch_starts_while_the_one_before_runs(seen: Path) -> None:
    """One call in flight: the next call's sbatch is started meanwhile, and the next call takes it."""
    runner = Sbatch()
    try:
        first = runner.start([], Path("1.sh"), SCRIPT)
        deadline = time.monotonic() + 10
        while runner.waiting is None and time.monotonic() < deadline:
            time.sleep(0.01)
        ahead = runner.waiting  # started while the first call was still in flight
        assert ahead is not None and pid(first()) != str(ahead)
        assert pid(runner.start(["--dependency=afterok:1"], Path("2.sh"), SCRIPT)()) == str(ahead)
    finally:
        runner.close()
