"""The `milex-schedule` command line: Milex's own options, and everything else for the app."""

from __future__ import annotations

import pytest

from milex.schedule_args import parse_sbatch_options, parse_schedule_args
from milex_common.errors import InvalidValue
from milex_common.model import SlurmOptions


def test_app_name_and_no_options() -> None:
    request = parse_schedule_args(["train"])
    assert request.app == "train"
    assert request.app_arguments == []
    assert request.slurm == SlurmOptions()
    assert (request.bundle, request.job_name, request.machine) == (None, None, None)
    assert not (request.append or request.run_now or request.wait)
    assert request.overrides == {}


def test_unknown_options_go_to_the_app_in_order() -> None:
    request = parse_schedule_args(["train", "--lr", "0.1", "--time", "10", "--epochs=3", "data.csv"])
    assert request.app_arguments == ["--lr", "0.1", "--epochs=3", "data.csv"]
    assert request.slurm.time == "10"


def test_after_double_dash_everything_goes_to_the_app() -> None:
    request = parse_schedule_args(["train", "--time", "00-01:00", "--", "--time", "5", "--mem", "1"])
    assert request.slurm.time == "00-01:00"
    assert request.slurm.mem is None
    assert request.app_arguments == ["--time", "5", "--mem", "1"]


def test_app_arguments_before_double_dash_come_first() -> None:
    request = parse_schedule_args(["train", "--lr", "0.1", "--", "--time", "5"])
    assert request.app_arguments == ["--lr", "0.1", "--time", "5"]


def test_no_abbreviation_of_milex_options() -> None:
    request = parse_schedule_args(["train", "--me", "1", "--part", "x", "--run", "--sub"])
    assert request.slurm.mem is None
    assert request.slurm.partition is None
    assert not request.run_now
    assert request.app_arguments == ["--me", "1", "--part", "x", "--run", "--sub"]


def test_app_option_sharing_a_prefix_is_the_apps() -> None:
    request = parse_schedule_args(["train", "--time-steps", "100", "--memory=2"])
    assert request.slurm.time is None
    assert request.app_arguments == ["--time-steps", "100", "--memory=2"]


@pytest.mark.parametrize("spelling", ["--cpus-per-task", "--cpus_per_task"])
def test_cpus_per_task_spellings(spelling: str) -> None:
    assert parse_schedule_args(["train", spelling, "4"]).slurm.cpus_per_task == 4


@pytest.mark.parametrize("spelling", ["--run-now", "--run_now"])
def test_run_now_spellings(spelling: str) -> None:
    assert parse_schedule_args(["train", spelling]).run_now


@pytest.mark.parametrize(
    ("removed", "name"),
    [(["--submit"], "--run-now"), (["--ntasks", "3"], "--tasks"), (["--ntasks=3"], "--tasks")],
)
def test_a_removed_second_name_is_an_error_naming_the_option(capsys, removed: list[str], name: str) -> None:
    """One name per option: `--submit` and `--ntasks` went, and must not reach the app unnoticed."""
    with pytest.raises(SystemExit) as exited:
        parse_schedule_args(["train", *removed, "--lr", "1"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert f"{removed[0].partition('=')[0]} is not an option of milex-schedule: use {name}" in error
    assert "after `--`" in error


@pytest.mark.parametrize("spelling", ["--pre-commands", "--pre_commands"])
def test_pre_commands_spellings(spelling: str) -> None:
    request = parse_schedule_args(["train", spelling, "module load cuda", "cp a $SLURM_TMPDIR/", "--lr", "1"])
    assert request.pre_commands == ["module load cuda", "cp a $SLURM_TMPDIR/"]
    assert request.app_arguments == ["--lr", "1"]


@pytest.mark.parametrize("spelling", ["--job-name", "--job_name"])
def test_job_name_spellings(spelling: str) -> None:
    assert parse_schedule_args(["train", spelling, "big"]).job_name == "big"


@pytest.mark.parametrize("spelling", ["--dependency-type", "--dependency_type"])
def test_dependency_type_spellings(spelling: str) -> None:
    assert parse_schedule_args(["train", spelling, "afterany"]).slurm.dependency_type == "afterany"


def test_bundle_name_and_append() -> None:
    request = parse_schedule_args(["evaluate", "--name", "pipeline", "--append", "--dependencies", "a", "b"])
    assert (request.bundle, request.append, request.dependencies) == ("pipeline", True, ["a", "b"])


def test_every_slurm_option() -> None:
    request = parse_schedule_args(
        [
            "train",
            "--time=1-00:00",
            "--cpus_per_task=2",
            "--gres=gpu:1",
            "--mem=16G",
            "--array=1-10:2",
            "--tasks=3",
            "--nodes=1",
            "--partition=gpu",
            "--qos=high",
        ]
    )
    assert request.slurm == SlurmOptions(
        time="1-00:00",
        cpus_per_task=2,
        gres="gpu:1",
        mem="16G",
        array="1-10:2",
        tasks=3,
        nodes=1,
        partition="gpu",
        qos="high",
    )


def test_options_are_not_validated_here() -> None:
    # Validation happens once, in make_job, before anything is written.
    assert parse_schedule_args(["train", "--time", "1h"]).slurm.time == "1h"


def test_run_options() -> None:
    request = parse_schedule_args(["train", "--run-now", "--wait", "--machine", "cluster"])
    assert (request.run_now, request.wait, request.machine) == (True, True, "cluster")


def test_machine_overrides_in_both_spellings() -> None:
    request = parse_schedule_args(
        ["train", "--slurm-account", "rrg-x", "--env_command", "source venv/bin/activate", "--path", "/p"]
    )
    assert request.overrides == {
        "slurm_account": "rrg-x",
        "env_command": "source venv/bin/activate",
        "path": "/p",
    }


def test_sbatch_options_go_to_extra() -> None:
    request = parse_schedule_args(["train", "--sbatch", "constraint=v100", "--sbatch=--exclusive"])
    assert request.slurm.extra == {"constraint": "v100", "exclusive": True}
    assert request.app_arguments == []


def test_sbatch_option_with_dashes_as_separate_word() -> None:
    # parse_sbatch_options strips leading dashes, so `--sbatch --exclusive` is meant to work too.
    request = parse_schedule_args(["train", "--sbatch", "constraint=v100", "--sbatch", "--exclusive"])
    assert request.slurm.extra == {"constraint": "v100", "exclusive": True}


def test_parse_sbatch_options_keeps_text_after_first_equals() -> None:
    assert parse_sbatch_options(["comment=a=b", "exclusive", "--mail-type=END"]) == {
        "comment": "a=b",
        "exclusive": True,
        "mail-type": "END",
    }


@pytest.mark.parametrize("item", ["", "--", "=v100"])
def test_parse_sbatch_options_refuses_missing_name(item: str) -> None:
    with pytest.raises(InvalidValue, match="give an sbatch option"):
        parse_sbatch_options([item])


def test_missing_app_name_exits() -> None:
    with pytest.raises(SystemExit):
        parse_schedule_args([])


def test_non_integer_count_exits() -> None:
    with pytest.raises(SystemExit):
        parse_schedule_args(["train", "--cpus-per-task", "four"])


def test_like_names_a_bundle_and_is_not_the_apps() -> None:
    request = parse_schedule_args(["app", "--like", "sweep", "--lr", "1", "--mem", "2G"])
    assert (request.like, request.slurm.mem, request.app_arguments) == ("sweep", "2G", ["--lr", "1"])
    assert parse_schedule_args(["app"]).like is None
