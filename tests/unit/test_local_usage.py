"""The `local` scheduler's usage: each task measured by its runner (wall and CPU time, peak memory),
with what the script's header asked for, so a machine without SLURM has usage too."""

from __future__ import annotations

import sys

import pytest

from milex_agent.scheduler.base import SubmitCall
from milex_agent.scheduler.local.scheduler import parse_header
from milex_common.usage import NOT_RECORDED
from tests.unit.test_local_scheduler import scheduler, wait_for_state, wait_until, write_script  # noqa: F401

MiB = 1024**2
# Python that touches MB MiB (its argument), and spins a little.
TOUCH = (
    "import sys; b = bytearray(int(sys.argv[1]) * 2**20); "
    'b[::4096] = b"\\1" * len(b[::4096]); sum(range(10**6))'
)
HOG = f"{sys.executable} -c '{TOUCH}'"


def test_a_local_job_has_its_peak_its_times_and_what_it_asked(scheduler, tmp_path):  # noqa: F811
    script = write_script(tmp_path, "hog", f"{HOG} 80", "--mem=200M", "--cpus-per-task=2", "--time=5")
    job_id = scheduler.submit(SubmitCall(script))
    wait_for_state(scheduler, job_id)

    [used] = scheduler.usage([job_id])[job_id].tasks

    assert used.task is None and used.state == "COMPLETED"
    assert 80 * MiB < used.max_rss < 200 * MiB
    assert (used.requested_memory, used.cpus, used.time_limit) == (200 * MiB, 2, 300.0)
    assert 0 < used.cpu_time <= used.elapsed * 2 + 0.5
    assert used.memory_efficiency == pytest.approx(used.max_rss / (200 * MiB))


def test_an_array_has_each_task_measured_by_its_index(scheduler, tmp_path):  # noqa: F811
    body = f"{HOG} $((40 * (SLURM_ARRAY_TASK_ID + 1)))"
    job_id = scheduler.submit(SubmitCall(write_script(tmp_path, "fan", body, "--array=0-1")))
    wait_for_state(scheduler, job_id)

    tasks = scheduler.usage([job_id])[job_id].tasks

    assert [task.task for task in tasks] == [0, 1]
    assert tasks[0].max_rss < tasks[1].max_rss  # 40 and 80 MiB
    assert {task.requested_memory for task in tasks} == {None} and {task.cpus for task in tasks} == {1}


def test_a_job_cancelled_while_running_has_none_and_an_unfinished_one_is_not_asked(scheduler, tmp_path):  # noqa: F811
    job_id = scheduler.submit(SubmitCall(write_script(tmp_path, "long", "sleep 30")))
    wait_until(lambda: (tmp_path / "logs").exists())
    assert scheduler.usage([job_id]) == {}
    scheduler.cancel([job_id])
    wait_for_state(scheduler, job_id)
    assert scheduler.usage([job_id])[job_id].note == NOT_RECORDED


def test_the_header_gives_the_resources_asked():
    text = "#!/bin/bash\n#SBATCH -c 4\n#SBATCH --mem=1G\n#SBATCH -t 1:00:00\necho\n"
    assert parse_header(text) == {"cpus-per-task": "4", "mem": "1G", "time": "1:00:00"}
