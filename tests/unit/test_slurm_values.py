"""Validation of the SLURM values users type, and SlurmOptions.validate() which applies it."""

from __future__ import annotations

import pytest

from milex_common import slurm_values
from milex_common.errors import InvalidValue
from milex_common.model import DEPENDENCY_TYPES, SlurmOptions

# --- time -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "30",  # minutes
        "0",
        "10:00",  # minutes:seconds
        "90:59",  # minutes are not bounded without hours
        "12:30:00",  # hours:minutes:seconds
        "48:00:00",  # hours are not bounded without days
        "1-0",  # days-hours
        "00-01:00",  # days-hours:minutes
        "1-00:00:00",
        "7-23:59:59",
        "UNLIMITED",
        "unlimited",
        "INFINITE",
    ],
)
def test_time_accepted(value: str) -> None:
    assert slurm_values.validate_time(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "1h",
        "",
        "1.5",
        "-1",
        "10:60",  # seconds < 60
        "25:61:00",  # minutes < 60
        "1:00:60",
        "1-24:00",  # hours < 24 once there is a day field
        "1-24",
        "0-00:60",
        "1-00:00:60",
        "1:2:3:4",
        "1-2-3",
        " 30",
        "30 ",
        "١٢",  # Arabic-Indic digits: a regex \d accepts them, SLURM does not
    ],
)
def test_time_rejected_naming_option_and_value(value: str) -> None:
    with pytest.raises(InvalidValue) as error:
        slurm_values.validate_time(value)
    assert "--time" in str(error.value)
    assert repr(value) in str(error.value)


def test_time_error_shows_the_accepted_formats() -> None:
    with pytest.raises(InvalidValue, match="D-HH:MM"):
        slurm_values.validate_time("1h")


def test_time_out_of_range_error_names_the_field() -> None:
    with pytest.raises(InvalidValue, match="'61'"):
        slurm_values.validate_time("25:61:00")


# --- memory ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["16G", "500M", "100", "0", "2T", "1024K", "16g"])
def test_memory_accepted(value: str) -> None:
    assert slurm_values.validate_memory(value) == value


@pytest.mark.parametrize("value", ["16GB", "-1", "1.5G", "", "G", "16 G", "16X", "١٦G"])
def test_memory_rejected_naming_option_and_value(value: str) -> None:
    with pytest.raises(InvalidValue) as error:
        slurm_values.validate_memory(value)
    assert "--mem" in str(error.value)
    assert repr(value) in str(error.value)


# --- array ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1-10", "1-10:2", "0,3,5-7", "1-100%10", "7", "5-5", "0-9:3,20%2"])
def test_array_accepted(value: str) -> None:
    assert slurm_values.validate_array(value) == value


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("10-1", "ends before it starts"),
        ("1-10:0", "step of 0"),
        ("a-b", "'a-b' is not an index"),
        ("1-10%x", "limit after '%'"),
        ("1-10%", "limit after '%'"),
        ("", "'' is not an index"),
        ("1,,2", "'' is not an index"),
        ("1-", "'1-' is not an index"),
        ("1:2", "'1:2' is not an index"),
        ("-5", "'-5' is not an index"),
        ("1-10%²", "limit after '%'"),  # "²".isdigit() is True, but it is no number SLURM reads
    ],
)
def test_array_rejected_with_reason(value: str, problem: str) -> None:
    with pytest.raises(InvalidValue) as error:
        slurm_values.validate_array(value)
    message = str(error.value)
    assert f"--array {value!r}" in message
    assert problem in message


def test_array_error_shows_examples() -> None:
    with pytest.raises(InvalidValue, match=r"1-10:2"):
        slurm_values.validate_array("10-1")


# --- names, counts, sbatch options ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["train", "train_big", "resnet-50", "v1.2", "a+b", "1st", "X"])
def test_name_accepted(value: str) -> None:
    assert slurm_values.validate_name("job name", value) == value


@pytest.mark.parametrize(
    "value", ["", "-train", "_milex", ".hidden", "a b", "a/b", "../x", "a$b", "naïve", "a\nb", "a*"]
)
def test_name_rejected_naming_kind_and_value(value: str) -> None:
    with pytest.raises(InvalidValue) as error:
        slurm_values.validate_name("bundle name", value)
    assert str(error.value).startswith(f"bundle name {value!r} is not a valid name")


@pytest.mark.parametrize("count", [0, -1])
def test_count_below_one_rejected(count: int) -> None:
    with pytest.raises(InvalidValue, match=rf"--nodes must be at least 1, not {count}\."):
        slurm_values.validate_positive("nodes", count)


def test_count_of_one_accepted() -> None:
    assert slurm_values.validate_positive("nodes", 1) == 1


@pytest.mark.parametrize("name", ["constraint", "mail-type", "x11"])
def test_sbatch_option_name_accepted(name: str) -> None:
    slurm_values.validate_sbatch_option(name, "value")


@pytest.mark.parametrize("name", ["Constraint", "mail_type", "-x", "", "a b", "1x", "a=b"])
def test_sbatch_option_name_rejected(name: str) -> None:
    with pytest.raises(InvalidValue, match="not a long option name"):
        slurm_values.validate_sbatch_option(name, None)


@pytest.mark.parametrize("value", ["a\nb", "a\rb"])
def test_sbatch_option_value_with_line_break_rejected(value: str) -> None:
    with pytest.raises(InvalidValue, match="--comment has a line break"):
        slurm_values.validate_sbatch_option("comment", value)


# --- SlurmOptions.validate ------------------------------------------------------------------------------


def test_validate_accepts_a_full_set_and_returns_itself() -> None:
    options = SlurmOptions(
        time="00-01:00",
        cpus_per_task=4,
        gres="gpu:1",
        mem="16G",
        array="1-10%2",
        tasks=1,
        nodes=1,
        partition="gpu",
        qos="normal",
        job_name="train",
        dependency_type="afterany",
        extra={"constraint": "v100", "exclusive": True, "requeue": False},
    )
    assert options.validate() is options


def test_validate_accepts_defaults() -> None:
    SlurmOptions().validate()


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (SlurmOptions(time="1h"), "--time '1h'"),
        (SlurmOptions(mem="16GB"), "--mem '16GB'"),
        (SlurmOptions(array="10-1"), "--array '10-1'"),
        (SlurmOptions(cpus_per_task=0), "--cpus-per-task must be at least 1, not 0"),
        (SlurmOptions(tasks=0), "--tasks must be at least 1, not 0"),
        (SlurmOptions(nodes=-2), "--nodes must be at least 1, not -2"),
        (SlurmOptions(job_name="my job"), "job name 'my job'"),
        (SlurmOptions(dependency_type="afterwards"), "--dependency-type 'afterwards'"),
        (SlurmOptions(extra={"Constraint": "v100"}), "sbatch option 'Constraint'"),
        (SlurmOptions(extra={"comment": "a\nb"}), "--comment has a line break"),
    ],
)
def test_validate_rejects_naming_option_and_value(options: SlurmOptions, fragment: str) -> None:
    with pytest.raises(InvalidValue) as error:
        options.validate()
    assert fragment in str(error.value)


@pytest.mark.parametrize("dependency_type", DEPENDENCY_TYPES)
def test_every_dependency_type_accepted(dependency_type: str) -> None:
    SlurmOptions(dependency_type=dependency_type).validate()


def test_dependency_type_error_lists_valid_types() -> None:
    with pytest.raises(InvalidValue, match="afterok, afterany, afternotok, after, aftercorr"):
        SlurmOptions(dependency_type="singleton").validate()


@pytest.mark.parametrize(
    ("spec", "indices", "limit"),
    [
        ("1-3", [1, 2, 3], None),
        ("1-10:4", [1, 5, 9], None),
        ("0,3,5-7", [0, 3, 5, 6, 7], None),
        ("1-100%10", list(range(1, 101)), 10),
    ],
)
def test_array_indices(spec, indices, limit):
    assert slurm_values.array_indices(spec) == (indices, limit)


@pytest.mark.parametrize(
    ("indices", "limit", "spec"),
    [
        ([1, 2, 3, 7], None, "1-3,7"),
        ([5], None, "5"),
        ([0, 2, 4], 2, "0,2,4%2"),
        ([3, 4, 7, 8, 9], 4, "3-4,7-9%4"),
    ],
)
def test_array_spec_writes_indices_as_ranges_that_read_back(
    indices: list[int], limit: int | None, spec: str
) -> None:
    assert slurm_values.array_spec(indices, limit) == spec
    assert slurm_values.array_indices(spec) == (indices, limit)
