"""Cutting arrays into windows SLURM accepts: specs, task counts, the index map, dependencies."""

from __future__ import annotations

import pytest

from milex_agent.array_windows import (
    ArrayWindow,
    array_windows,
    window_dependencies,
    window_job,
    window_name,
    window_of,
    window_script,
    window_size,
)
from milex_common.errors import InvalidValue, SubmitError
from milex_common.model import Job, MachineSettings, SlurmOptions
from milex_common.render import render_script
from milex_common.slurm_values import array_indices, validate_array


def original_indices(windows: list[ArrayWindow]) -> list[int]:
    """The indices the windows stand for, shifted back up: what the user's tasks must see."""
    return [window.offset + index for window in windows for index in array_indices(window.spec)[0]]


@pytest.mark.parametrize(
    ("spec", "size"),
    [
        ("0-2499:7", 1000),
        ("5,999,1000,2400", 1000),
        ("0-2499%10", 1000),
        ("1-10000", 1001),
        ("3-17:4,20-40,41,1000-1003", 7),
        ("0-99", 1),
        ("7", 1000),
        ("0-999", 1000),
        ("2,0-1,1", 2),
    ],
)
def test_windows_cover_exactly_the_arrays_indices_each_below_size(spec: str, size: int) -> None:
    windows = array_windows(spec, size)
    indices, limit = array_indices(spec)
    assert original_indices(windows) == indices
    assert [window.offset for window in windows] == sorted({index // size * size for index in indices})
    for window in windows:
        validate_array(window.spec)  # SLURM's syntax
        local, window_limit = array_indices(window.spec)
        assert max(local) < size
        assert window.tasks == len(local)
        assert window_limit == limit


def test_steps_across_window_boundaries_stay_ranges() -> None:
    assert array_windows("0-2499:7", 1000) == [
        ArrayWindow(offset=0, spec="0-994:7", tasks=143),
        ArrayWindow(offset=1000, spec="1-995:7", tasks=143),
        ArrayWindow(offset=2000, spec="2-499:7", tasks=72),
    ]


def test_a_list_falls_into_the_windows_of_its_indices() -> None:
    assert array_windows("5,999,1000,2400", 1000) == [
        ArrayWindow(offset=0, spec="5,999", tasks=2),
        ArrayWindow(offset=1000, spec="0", tasks=1),
        ArrayWindow(offset=2000, spec="400", tasks=1),
    ]


def test_the_throttle_applies_to_each_window() -> None:
    assert array_windows("0-2499%10", 1000) == [
        ArrayWindow(offset=0, spec="0-999%10", tasks=1000),
        ArrayWindow(offset=1000, spec="0-999%10", tasks=1000),
        ArrayWindow(offset=2000, spec="0-499%10", tasks=500),
    ]


def test_empty_windows_are_left_out() -> None:
    assert array_windows("0-2499:2000", 1000) == [
        ArrayWindow(offset=0, spec="0", tasks=1),
        ArrayWindow(offset=2000, spec="0", tasks=1),
    ]


def test_one_index_beyond_the_size_is_one_window_of_one_task() -> None:
    assert array_windows("4321", 1000) == [ArrayWindow(offset=4000, spec="321", tasks=1)]


@pytest.mark.parametrize("spec", ["0-999", "1-10:2%3", "999", "3,1,2", "0-999:1"])
def test_an_array_that_fits_is_one_window_with_its_spec_unchanged(spec: str) -> None:
    assert array_windows(spec, 1000) == [ArrayWindow(offset=0, spec=spec, tasks=len(array_indices(spec)[0]))]


def test_size_one_is_a_window_per_index() -> None:
    assert array_windows("3-5%2", 1) == [
        ArrayWindow(offset=3, spec="0%2", tasks=1),
        ArrayWindow(offset=4, spec="0%2", tasks=1),
        ArrayWindow(offset=5, spec="0%2", tasks=1),
    ]


@pytest.mark.parametrize(
    ("indices", "spec"),
    [
        ("1000,1001", "0,1"),
        ("1000,1002,1003,1004", "0,2-4"),
        ("1000,1001,1002,1004,1006,1008", "0-2,4-8:2"),
        ("1000,1003,1010,1020,1030", "0,3,10-30:10"),
    ],
)
def test_window_specs_are_compact(indices: str, spec: str) -> None:
    [window] = array_windows(indices, 1000)
    assert window.spec == spec


def test_cutting_aligns_windows_of_different_arrays() -> None:
    first, second = array_windows("0-2499", 1000), array_windows("1500-2200:3", 1000)
    assert [w.offset for w in first] == [0, 1000, 2000]
    assert [w.offset for w in second] == [1000, 2000]


@pytest.mark.parametrize("spec", ["1-", "5-2", "1-10:0", "a"])
def test_a_bad_spec_is_refused_with_the_usual_message(spec: str) -> None:
    with pytest.raises(InvalidValue, match="--array"):
        array_windows(spec, 1000)


def test_size_below_one_is_refused() -> None:
    with pytest.raises(InvalidValue):
        array_windows("0-9", 0)


# --- window_size -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_array_size", "max_submitted", "size"),
    [(1001, None, 1001), (None, 50, 50), (1001, 50, 50), (1000, 5000, 1000), (None, None, None)],
)
def test_window_size_is_the_tighter_limit(
    max_array_size: int | None, max_submitted: int | None, size: int | None
) -> None:
    assert window_size(max_array_size, max_submitted) == size


def test_a_lower_max_array_tasks_bounds_the_size() -> None:
    assert window_size(100001, None, max_array_tasks=1000) == 1000
    assert window_size(1001, 50, max_array_tasks=1000) == 50


def test_a_cluster_without_arrays_is_told() -> None:
    with pytest.raises(SubmitError, match="MaxArraySize=0"):
        window_size(0, 100)


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(InvalidValue, match="max_submitted"):
        window_size(1001, 0)


# --- window_of -------------------------------------------------------------------------------------------


def test_every_index_maps_to_its_window_and_local_index() -> None:
    windows = {window.offset: window for window in array_windows("0-2499:7", 1000)}
    for index in range(0, 2500, 7):
        offset, local = window_of(index, 1000)
        assert offset + local == index
        assert local in array_indices(windows[offset].spec)[0]


def test_window_of_names_window_offset_and_local_index() -> None:
    assert window_of(2400, 1000) == (2000, 400)
    assert window_of(999, 1000) == (0, 999)
    assert window_of(1000, 1000) == (1000, 0)


def test_a_window_is_named_after_its_array_and_offset() -> None:
    assert window_name("sweep", 2000) == "sweep~2000"


# --- window_dependencies ---------------------------------------------------------------------------------

DEPENDENCY = array_windows("0-1999", 1000)  # windows at 0 and 1000


@pytest.mark.parametrize("kind", ["afterok", "afterany", "after"])
def test_a_whole_array_dependency_waits_for_every_window(kind: str) -> None:
    dependent = array_windows("0-2499", 1000)[2]
    assert window_dependencies(dependent, DEPENDENCY, kind) == [(window, kind) for window in DEPENDENCY]
    assert window_dependencies(None, DEPENDENCY, kind) == [(window, kind) for window in DEPENDENCY]


def test_aftercorr_pairs_the_window_of_the_same_offset() -> None:
    dependent = array_windows("0-2499", 1000)[1]
    assert window_dependencies(dependent, DEPENDENCY, "aftercorr") == [(DEPENDENCY[1], "aftercorr")]


def test_aftercorr_without_a_counterpart_window_waits_for_all_to_succeed() -> None:
    # slurmctld: a task with no counterpart waits for the whole dependency array, and needs it complete.
    dependent = array_windows("0-2499", 1000)[2]
    assert window_dependencies(dependent, DEPENDENCY, "aftercorr") == [(w, "afterok") for w in DEPENDENCY]
    assert window_dependencies(None, DEPENDENCY, "aftercorr") == [(w, "afterok") for w in DEPENDENCY]


def test_afternotok_on_one_window_is_kept() -> None:
    [window] = array_windows("0-99", 1000)
    assert window_dependencies(None, [window], "afternotok") == [(window, "afternotok")]


def test_afternotok_on_several_windows_is_refused() -> None:
    with pytest.raises(InvalidValue, match="afternotok on an array cut into 2 windows"):
        window_dependencies(None, DEPENDENCY, "afternotok")


def test_window_job_carries_the_window_spec_and_nothing_else_changes() -> None:
    job = Job(name="sweep", script="sweep", slurm=SlurmOptions(array="0-2499%10", time="5"))
    window = array_windows("0-2499%10", 1000)[2]
    assert window_job(job, window).slurm == SlurmOptions(array="0-499%10", time="5")
    assert window_job(job, window).name == "sweep"
    assert job.slurm.array == "0-2499%10"


def test_window_script_is_the_window_job_rendered_with_its_offset() -> None:
    job = Job(name="sweep", script="sweep", slurm=SlurmOptions(array="0-2499%10"))
    settings, window = MachineSettings(name="m", path="/m"), array_windows("0-2499%10", 1000)[2]
    assert window_script(job, settings, "stem", window) == render_script(
        window_job(job, window), settings, "stem", array_offset=2000
    )
    assert "#SBATCH --array=0-499%10" in window_script(job, settings, "stem", window)
