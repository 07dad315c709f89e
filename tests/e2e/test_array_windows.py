"""An array past the cluster's MaxArraySize, cut into windows, on the real cluster: SLURM takes every
window, and every task sees the index the user asked for."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from milex_agent.array_windows import array_windows, window_dependencies, window_script
from milex_agent.scheduler.base import SubmitCall
from milex_agent.scheduler.slurm.scheduler import SlurmScheduler
from milex_common.errors import SubmitError
from milex_common.model import Job, JobState, MachineSettings, SlurmOptions
from milex_common.render import render_script
from tests.e2e.conftest import wait_until

STEM = "sweep_20260101000000_sweep"
# The app: one file per task, named by the index it sees, holding what it sees (window 0 needs no shift).
RECORD_APP = """\
#!/bin/bash
dir=${1#--dir=}
echo "$SLURM_ARRAY_TASK_MIN $SLURM_ARRAY_TASK_MAX ${MILEX_ARRAY_OFFSET:-0} $SLURM_ARRAY_JOB_ID \
$SLURM_JOB_ID" > "$dir/$SLURM_ARRAY_TASK_ID.tmp"
mv "$dir/$SLURM_ARRAY_TASK_ID.tmp" "$dir/$SLURM_ARRAY_TASK_ID"
[ "$SLURM_ARRAY_TASK_ID" != "${2#--fail=}" ]
"""


def max_array_size() -> int:
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True)
    line = next(line for line in config.stdout.splitlines() if line.startswith("MaxArraySize"))
    return int(line.split("=")[1])


def app_and_job(
    tmp_path: Path, spec: str, name: str = "sweep", **options: Any
) -> tuple[Job, MachineSettings, Path]:
    """A job of the recording app, the machine it runs on, and where its tasks record what they see."""
    app, seen = tmp_path / "record-index", tmp_path / f"seen-{name}"
    if not app.exists():
        app.write_text(RECORD_APP)
        app.chmod(0o755)
        (tmp_path / "milex" / "slurm").mkdir(parents=True)
    seen.mkdir()
    job = Job(name=name, script=str(app), script_args={"dir": str(seen), **options},
              slurm=SlurmOptions(array=spec, time="5", extra={"hold": True}))  # fmt: skip
    return job, MachineSettings(name="local", path=str(tmp_path / "milex")), seen


def indices_seen(seen: Path) -> list[int]:
    return sorted(int(path.name) for path in seen.iterdir() if not path.name.endswith(".tmp"))


def run_held(scheduler: SlurmScheduler, ids: list[str]) -> None:
    """Release jobs submitted held (so none ends before its dependents are in) and wait for their end."""
    subprocess.run(["scontrol", "release", ",".join(ids)], check=True, capture_output=True)
    wait_until(
        lambda: all(s.state.finished for s in scheduler.states(ids).values()),
        timeout=120,
        what="every job to end",
    )


@pytest.fixture
def scheduler() -> Iterator[SlurmScheduler]:
    """The agent's SLURM scheduler, closed after the test (its sbatch started ahead stopped)."""
    made = SlurmScheduler()
    yield made
    made.close()


def test_array_past_max_array_size_runs_in_windows_with_the_original_indices(
    slurm_cluster: None, tmp_path: Path, scheduler: SlurmScheduler
) -> None:
    spec, size = "0-2499:500", 1000
    assert max_array_size() <= 2000, "the test needs an array SLURM refuses whole"
    job, settings, seen = app_and_job(tmp_path, spec)
    with pytest.raises(SubmitError, match="array"):  # whole, SLURM refuses it
        scheduler.submit(SubmitCall(tmp_path / "whole.sh", text=render_script(job, settings, STEM)))

    windows = array_windows(spec, size)
    assert [(w.offset, w.spec) for w in windows] == [(0, "0,500"), (1000, "0,500"), (2000, "0")]
    ids = [
        scheduler.submit(
            SubmitCall(tmp_path / f"window{w.offset}.sh", text=window_script(job, settings, STEM, w))
        )
        for w in windows
    ]
    run_held(scheduler, ids)

    assert {s.state for s in scheduler.states(ids).values()} == {JobState.COMPLETED}
    seen_by = {int(path.name): path.read_text().split() for path in seen.iterdir()}
    assert sorted(seen_by) == [0, 500, 1000, 1500, 2000]
    window_job_ids = dict(zip([w.offset for w in windows], ids, strict=True))
    for index, (low, high, offset, array_job_id, _) in seen_by.items():
        window = index // size * size
        # MIN and MAX are the window's, shifted up: the task knows its place in the user's array.
        assert (int(low), int(high), int(offset)) == {
            0: (0, 500, 0), 1000: (1000, 1500, 1000), 2000: (2000, 2000, 2000)
        }[window]  # fmt: skip
        assert array_job_id == window_job_ids[window]
        # The logs keep SLURM's %A_%a: the window's job id and the index SLURM ran.
        assert (tmp_path / "milex" / "slurm" / f"{STEM}-{array_job_id}_{index - window}.out").exists()


def test_aftercorr_through_windows_runs_the_tasks_slurm_runs_for_the_whole_arrays(
    slurm_cluster: None, tmp_path: Path, scheduler: SlurmScheduler
) -> None:
    # Task 1 of the dependency fails. SLURM runs a dependent task whose counterpart succeeded (0, 2,
    # 3), not task 1, and not 4 or 5, which have no counterpart: they need the whole array to succeed.
    size = 2
    ran: dict[str, list[int]] = {}
    for how in ("whole", "windows"):
        dependency, settings, _ = app_and_job(tmp_path, "0-3", f"dependency-{how}", fail="1")
        dependent, _, seen = app_and_job(tmp_path, "0-5", f"dependent-{how}")
        dependent.slurm.dependency_type = "aftercorr"
        if how == "whole":
            first = scheduler.submit(
                SubmitCall(tmp_path / "d.sh", text=render_script(dependency, settings, STEM))
            )
            text = render_script(dependent, settings, STEM)
            ids = [first, scheduler.submit(SubmitCall(tmp_path / "e.sh", text=text, after=[first],
                                                      dependency_type="aftercorr"))]  # fmt: skip
        else:
            ids = submit_windows(scheduler, tmp_path, dependency, dependent, size)
        run_held(scheduler, ids)
        ran[how] = indices_seen(seen)
    assert ran == {"whole": [0, 2, 3], "windows": [0, 2, 3]}


def submit_windows(
    scheduler: SlurmScheduler, tmp_path: Path, dependency: Job, dependent: Job, size: int
) -> list[str]:
    """Both arrays cut at `size`, each window of the dependent submitted after the windows it waits for."""
    settings = MachineSettings(name="local", path=str(tmp_path / "milex"))
    assert dependency.slurm.array and dependent.slurm.array
    ids = {}
    dependency_windows = array_windows(dependency.slurm.array, size)
    for window in dependency_windows:
        ids[window] = scheduler.submit(
            SubmitCall(tmp_path / "d.sh", text=window_script(dependency, settings, STEM, window))
        )
    dependent_ids = []
    for window in array_windows(dependent.slurm.array, size):
        [*waits] = window_dependencies(window, dependency_windows, dependent.slurm.dependency_type)
        [kind] = {kind for _, kind in waits}  # one dependency: one type
        text = window_script(dependent, settings, STEM, window)
        after = [ids[waited] for waited, _ in waits]
        dependent_ids.append(
            scheduler.submit(SubmitCall(tmp_path / "e.sh", text=text, after=after, dependency_type=kind))
        )
    return [*ids.values(), *dependent_ids]
