"""The sbatch script renderer: golden files, and bash running the rendered command line for real.

Regenerate the golden files after an intended change with
`MILEX_UPDATE_GOLDEN=1 pytest tests/unit/test_render.py`, then review the diff.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from milex_common.model import Job, MachineSettings, SlurmOptions
from milex_common.render import app_command, log_paths, render_script, script_stem

GOLDEN_DIR = Path(__file__).parent / "golden"
STEM = script_stem("train_20240102030405", "train")

CLUSTER = MachineSettings(
    name="cluster",
    path="/scratch/alice/milex",
    env_command="source /home/alice/venvs/ml/bin/activate",
    slurm_account="def-alice",
)
BARE_MACHINE = MachineSettings(name="laptop", path="/home/alice/milex", scheduler="local")

# Values a shell would mangle if the renderer quoted them wrongly, and the argv the app must receive.
NASTY_ARGS: dict[str, Any] = {
    "message": "hello world",
    "single": "it's",
    "double": 'say "hi"',
    "home": "$HOME",
    "backticks": "`echo pwned`",
    "subshell": "$(echo pwned)",
    "multiline": "line one\nline two",
    "dashed": "--not-a-flag",
    "empty": "",
    "unicode": "héllo ☃",
    "glob": "*.csv",
    "semicolon": "a; echo pwned",
    "verbose": True,
    "quiet": False,
    "checkpoint": None,
    "files": ["a b.txt", "it's.txt", "$HOME"],
    "no_items": [],
    "numbers": [1, 2.5],
    "epochs": 10,
    "offset": -3,
    "lr": 0.001,
    "tiny": 1e-05,
    "options": {"b": [1, 2], "a": "x y"},
}
NASTY_ARGV = [
    "--message=hello world",
    "--single=it's",
    '--double=say "hi"',
    "--home=$HOME",
    "--backticks=`echo pwned`",
    "--subshell=$(echo pwned)",
    "--multiline=line one\nline two",
    "--dashed=--not-a-flag",
    "--empty=",
    "--unicode=héllo ☃",
    "--glob=*.csv",
    "--semicolon=a; echo pwned",
    "--verbose",
    "--files",
    "a b.txt",
    "it's.txt",
    "$HOME",
    "--numbers",
    "1",
    "2.5",
    "--epochs=10",
    "--offset=-3",
    "--lr=0.001",
    "--tiny=1e-05",
    '--options={"a": "x y", "b": [1, 2]}',
]


def plain_job() -> Job:
    return Job(
        name="train",
        script="train",
        script_args={"lr": 0.001, "epochs": 10, "data": "/data/cifar10"},
        slurm=SlurmOptions(time="00-01:00"),
    )


def full_options_job() -> Job:
    return Job(
        name="train",
        script="train",
        script_args={"lr": 0.001},
        dependencies=["prepare"],
        pre_commands=["module load cuda/12.2", 'cp "$MILEX/data/train.h5" "$SLURM_TMPDIR/"'],
        slurm=SlurmOptions(
            time="1-12:00:00",
            cpus_per_task=8,
            gres="gpu:a100:2",
            mem="64G",
            array="0-9%2",
            tasks=2,
            nodes=1,
            partition="gpu",
            qos="high",
            job_name="resnet50",
            dependency_type="afterany",
            extra={"constraint": "v100", "exclusive": True, "requeue": False, "mail-type": "END"},
        ),
    )


def array_job() -> Job:
    return Job(
        name="sweep",
        script="sweep",
        script_args={"grid": "small"},
        slurm=SlurmOptions(time="30", array="1-10:2"),
    )


def nasty_job(script: str = "train") -> Job:
    return Job(name="train", script=script, script_args=dict(NASTY_ARGS))


def window_job(script: str = "sweep") -> Job:
    """The window at 1000 of the array `0-2499:7%10` cut at 1000 (see milex_agent.array_windows)."""
    return Job(
        name="sweep",
        script=script,
        script_args={"grid": "small"},
        pre_commands=["export PRE=ran"],
        slurm=SlurmOptions(time="30", array="1-995:7%10"),
    )


WINDOW_OFFSET = 1000
# name -> (job, machine, array offset)
GOLDEN_CASES = {
    "plain": (plain_job, CLUSTER, 0),
    "plain_no_account": (plain_job, BARE_MACHINE, 0),
    "all_options": (full_options_job, CLUSTER, 0),
    "array": (array_job, CLUSTER, 0),
    "array_window": (window_job, CLUSTER, WINDOW_OFFSET),
    "nasty_args": (nasty_job, CLUSTER, 0),
}


def assert_matches_golden(name: str, text: str) -> None:
    golden = GOLDEN_DIR / f"{name}.sh"
    if os.environ.get("MILEX_UPDATE_GOLDEN"):
        golden.write_text(text)
        return
    assert golden.exists(), f"{golden} is missing: run with MILEX_UPDATE_GOLDEN=1 to create it"
    assert text == golden.read_text(), (
        f"the script differs from {golden}; if the change is intended, run with MILEX_UPDATE_GOLDEN=1 "
        "and review the diff"
    )


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_script_matches_golden_file(case: str) -> None:
    make_job, settings, offset = GOLDEN_CASES[case]
    assert_matches_golden(case, render_script(make_job(), settings, STEM, array_offset=offset))


def test_golden_directory_has_no_stale_files() -> None:
    assert {path.stem for path in GOLDEN_DIR.glob("*.sh")} == set(GOLDEN_CASES)


# --- #SBATCH header --------------------------------------------------------------------------------


def sbatch_header(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


def sbatch_arguments(line: str) -> list[str]:
    """The arguments sbatch reads from one `#SBATCH` line (a port of `_get_argument` in sbatch/opt.c).

    Whitespace separates arguments unless quoted with ' or " (a backslash does not escape it); a
    backslash escapes any other character; an unescaped `#` starts a comment.
    """
    assert line.startswith("#SBATCH")
    text, position, arguments = line[len("#SBATCH") :], 0, []
    while True:
        argument, position, comment = _next_sbatch_argument(text, position)
        if argument:
            arguments.append(argument)
        if comment or not argument:
            return arguments


def _next_sbatch_argument(text: str, position: int) -> tuple[str, int, bool]:
    """The argument starting at or after `position`, where the next one starts, and whether `#` ended it."""
    while position < len(text) and text[position].isspace():
        position += 1
    argument, quote, escaped = [], "", False
    while position < len(text) and (quote or not text[position].isspace()):
        char = text[position]
        position += 1
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
            continue
        elif (quote and char == quote) or (not quote and char in "\"'"):
            quote = "" if quote else char
            continue
        elif not quote and char == "#":
            return "".join(argument), position, True
        argument.append(char)
    assert not quote, f"sbatch rejects {text!r}: unmatched {quote}"
    return "".join(argument), position, False


def test_sbatch_argument_parser_port_follows_sbatch_rules() -> None:
    assert sbatch_arguments("#SBATCH --time=10") == ["--time=10"]
    assert sbatch_arguments('#SBATCH --comment="a b" --x') == ["--comment=a b", "--x"]
    assert sbatch_arguments("#SBATCH --comment=a b") == ["--comment=a", "b"]
    assert sbatch_arguments("#SBATCH --comment=run#3") == ["--comment=run"]
    assert sbatch_arguments(r"#SBATCH --comment=run\#3") == ["--comment=run#3"]


def test_header_lists_every_option_in_order() -> None:
    header = sbatch_header(render_script(full_options_job(), CLUSTER, STEM))
    assert header == [
        "#SBATCH --job-name=resnet50",
        "#SBATCH --account=def-alice",
        f"#SBATCH --output=/scratch/alice/milex/slurm/{STEM}-%A_%a.out",
        f"#SBATCH --error=/scratch/alice/milex/slurm/{STEM}-%A_%a.err",
        "#SBATCH --time=1-12:00:00",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=2",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=64G",
        "#SBATCH --gres=gpu:a100:2",
        "#SBATCH --partition=gpu",
        "#SBATCH --qos=high",
        "#SBATCH --array=0-9%2",
        "#SBATCH --constraint=v100",
        "#SBATCH --exclusive",
        "#SBATCH --mail-type=END",
    ]


def test_header_lines_are_one_sbatch_argument_each() -> None:
    for line in sbatch_header(render_script(full_options_job(), CLUSTER, STEM)):
        assert len(sbatch_arguments(line)) == 1, line


def test_false_extra_flag_is_left_out() -> None:
    assert "requeue" not in render_script(full_options_job(), CLUSTER, STEM)


def test_job_name_defaults_to_the_job_name() -> None:
    assert "#SBATCH --job-name=train" in sbatch_header(render_script(plain_job(), CLUSTER, STEM))


def test_no_account_line_without_an_account() -> None:
    script = render_script(plain_job(), BARE_MACHINE, STEM)
    assert "--account" not in script
    assert "activate" not in script


def test_dependency_type_is_not_an_sbatch_line() -> None:
    # Dependencies are wired at submission time, with the ids the scheduler gives.
    script = render_script(full_options_job(), CLUSTER, STEM)
    assert "dependency" not in script
    assert "afterany" not in script


def test_array_job_logs_use_array_pattern() -> None:
    assert log_paths(array_job(), CLUSTER, "s") == (
        "/scratch/alice/milex/slurm/s-%A_%a.out",
        "/scratch/alice/milex/slurm/s-%A_%a.err",
    )


def test_plain_job_logs_use_job_id_pattern() -> None:
    assert log_paths(plain_job(), CLUSTER, "s") == (
        "/scratch/alice/milex/slurm/s-%j.out",
        "/scratch/alice/milex/slurm/s-%j.err",
    )


def test_machine_path_with_space_stays_one_sbatch_argument() -> None:
    settings = MachineSettings(name="laptop", path="/home/alice/My Drive/milex")
    header = sbatch_header(render_script(plain_job(), settings, STEM))
    output = next(line for line in header if line.startswith("#SBATCH --output"))
    assert sbatch_arguments(output) == [f"--output=/home/alice/My Drive/milex/slurm/{STEM}-%j.out"]


def test_extra_option_value_with_space_and_hash_stays_one_sbatch_argument() -> None:
    job = Job(name="train", script="train", slurm=SlurmOptions(extra={"comment": "run #3 of sweep"}))
    header = sbatch_header(render_script(job, CLUSTER, STEM))
    comment = next(line for line in header if "--comment" in line)
    assert sbatch_arguments(comment) == ["--comment=run #3 of sweep"]


# --- The script body ----------------------------------------------------------------------------------


def test_body_exports_milex_then_env_then_pre_commands_then_app() -> None:
    script = render_script(full_options_job(), CLUSTER, STEM)
    body = script.split("\n\n", 1)[1].splitlines()
    assert body[:4] == [
        "export MILEX=/scratch/alice/milex",
        "source /home/alice/venvs/ml/bin/activate",
        "module load cuda/12.2",
        'cp "$MILEX/data/train.h5" "$SLURM_TMPDIR/"',
    ]
    assert body[4].startswith("train ")


def test_array_window_exports_real_indices_first_thing() -> None:
    script = render_script(window_job(), CLUSTER, STEM, array_offset=WINDOW_OFFSET)
    body = script.split("\n\n", 1)[1].splitlines()
    assert body[1:5] == [
        "export MILEX_ARRAY_OFFSET=1000",
        "export SLURM_ARRAY_TASK_ID="
        "$((${SLURM_ARRAY_TASK_ID:?this script runs as a SLURM array task} + 1000))",
        "export SLURM_ARRAY_TASK_MIN="
        "$((${SLURM_ARRAY_TASK_MIN:?this script runs as a SLURM array task} + 1000))",
        "export SLURM_ARRAY_TASK_MAX="
        "$((${SLURM_ARRAY_TASK_MAX:?this script runs as a SLURM array task} + 1000))",
    ]
    assert body[5] == "export MILEX=/scratch/alice/milex"
    assert "#SBATCH --array=1-995:7%10" in sbatch_header(script)


def test_offset_zero_renders_no_window_lines() -> None:
    script = render_script(array_job(), CLUSTER, STEM)
    assert render_script(array_job(), CLUSTER, STEM, array_offset=0) == script
    assert "MILEX_ARRAY_OFFSET" not in script


def test_an_offset_needs_an_array_job() -> None:
    with pytest.raises(ValueError, match="array"):
        render_script(plain_job(), CLUSTER, STEM, array_offset=1000)


def test_app_command_word_per_argument() -> None:
    job = Job(name="t", script="train", script_args={"lr": 0.1, "fast": True, "layers": [1, 2]})
    assert app_command(job) == ["train", "--lr=0.1", "--fast", "--layers", "1", "2"]


@pytest.mark.parametrize("value", [None, False, []])
def test_unset_values_render_nothing(value: Any) -> None:
    assert app_command(Job(name="t", script="train", script_args={"x": value})) == ["train"]


def test_booleans_inside_lists_render_as_json() -> None:
    job = Job(name="t", script="train", script_args={"flags": [True, False]})
    assert app_command(job) == ["train", "--flags", "true", "false"]


# --- bash runs the rendered command: the app receives exactly the recorded values ---------------------

ARGV_APP = """\
import json, os, sys
with open(os.environ["ARGV_OUT"], "w") as out:
    json.dump({"argv": sys.argv[1:], "milex": os.environ.get("MILEX"), "pre": os.environ.get("PRE")}, out)
"""

ARGPARSE_APP = """\
import argparse, json, os
parser = argparse.ArgumentParser()
parser.add_argument("--message")
parser.add_argument("--dashed")
parser.add_argument("--empty")
parser.add_argument("--home")
parser.add_argument("--verbose", action="store_true")
parser.add_argument("--quiet", action="store_true")
parser.add_argument("--checkpoint")
parser.add_argument("--files", nargs="+")
parser.add_argument("--numbers", nargs="*", type=float, default=[])
parser.add_argument("--epochs", type=int)
parser.add_argument("--offset", type=int)
parser.add_argument("--lr", type=float)
with open(os.environ["ARGV_OUT"], "w") as out:
    json.dump(vars(parser.parse_args()), out)
"""


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory first on PATH where tests put a fake app; its output file is `$ARGV_OUT`."""
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("ARGV_OUT", str(tmp_path / "out.json"))
    monkeypatch.setenv("HOME", "/home/should-not-appear")
    return directory


def install_app(directory: Path, name: str, source: str) -> None:
    app = directory / name
    app.write_text(f"#!{sys.executable}\n{source}")
    app.chmod(0o755)


def run_bash(arguments: list[str], tmp_path: Path) -> dict[str, Any]:
    subprocess.run(["bash", *arguments], check=True, timeout=30, cwd=tmp_path)
    return json.loads((tmp_path / "out.json").read_text())


def test_app_command_run_by_bash_receives_exact_argv(app_dir: Path, tmp_path: Path) -> None:
    install_app(app_dir, "nasty-app", ARGV_APP)
    command = " ".join(app_command(nasty_job("nasty-app")))
    assert run_bash(["-c", command], tmp_path)["argv"] == NASTY_ARGV


def test_whole_script_run_by_bash_receives_exact_argv(app_dir: Path, tmp_path: Path) -> None:
    install_app(app_dir, "nasty-app", ARGV_APP)
    job = nasty_job("nasty-app")
    job.pre_commands = ["export PRE=ran"]
    settings = MachineSettings(name="laptop", path=str(tmp_path / "it's milex"), env_command="true")
    script = tmp_path / "job.sh"
    script.write_text(render_script(job, settings, STEM))
    result = run_bash([str(script)], tmp_path)
    assert result == {"argv": NASTY_ARGV, "milex": str(tmp_path / "it's milex"), "pre": "ran"}


def test_argparse_app_gets_back_the_captured_values(app_dir: Path, tmp_path: Path) -> None:
    # What `NAME-cli` printed is what `NAME`'s own parser reads back from the rendered command.
    captured = {
        "message": "hello 'world' \"$HOME\"",
        "dashed": "--not-a-flag",
        "empty": "",
        "home": "`id`",
        "verbose": True,
        "quiet": False,
        "checkpoint": None,
        "files": ["a b.txt", "c.txt"],
        "numbers": [],
        "epochs": 10,
        "offset": -3,
        "lr": 0.001,
    }
    install_app(app_dir, "argparse-app", ARGPARSE_APP)
    job = Job(name="train", script="argparse-app", script_args=captured)
    script = tmp_path / "job.sh"
    script.write_text(render_script(job, BARE_MACHINE, STEM))
    assert run_bash([str(script)], tmp_path) == captured


ENV_APP = """\
import json, os
names = ["SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX", "MILEX_ARRAY_OFFSET", "PRE"]
with open(os.environ["ARGV_OUT"], "w") as out:
    json.dump({name: os.environ.get(name) for name in names}, out)
"""


def test_window_script_run_by_bash_gives_the_app_the_real_index(
    app_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_app(app_dir, "env-app", ENV_APP)
    script = tmp_path / "job.sh"
    script.write_text(render_script(window_job("env-app"), BARE_MACHINE, STEM, array_offset=WINDOW_OFFSET))
    # What SLURM sets for the task of local index 8 of the window `1-995:7`.
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "8")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MAX", "995")
    assert run_bash([str(script)], tmp_path) == {
        "SLURM_ARRAY_TASK_ID": "1008",
        "SLURM_ARRAY_TASK_MIN": "1001",
        "SLURM_ARRAY_TASK_MAX": "1995",
        "MILEX_ARRAY_OFFSET": "1000",
        "PRE": "ran",
    }


def test_window_script_outside_an_array_task_stops_before_the_app(app_dir: Path, tmp_path: Path) -> None:
    install_app(app_dir, "env-app", ENV_APP)
    script = tmp_path / "job.sh"
    script.write_text(render_script(window_job("env-app"), BARE_MACHINE, STEM, array_offset=WINDOW_OFFSET))
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_ARRAY")}
    ran = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, timeout=30, cwd=tmp_path, env=env
    )
    assert ran.returncode != 0
    assert "this script runs as a SLURM array task" in ran.stderr
    assert not (tmp_path / "out.json").exists()
