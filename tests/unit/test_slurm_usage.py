"""What ended jobs used, read from sacct's own output on both test clusters (slurm_captured/usage: 22.05
and 24.11, see its README), and the units it comes in."""

from __future__ import annotations

from pathlib import Path

import pytest

from milex_agent.scheduler.slurm import scheduler as slurm
from milex_agent.scheduler.slurm import usage as slurm_usage
from milex_agent.scheduler.slurm.command import CommandResult
from milex_agent.scheduler.slurm.poll import MAX_LISTED_JOBS
from milex_agent.scheduler.slurm.scheduler import SlurmScheduler
from milex_agent.scheduler.slurm.usage import FORMAT, requested_memory, usage_query, usage_rows
from milex_common.errors import SchedulerError
from milex_common.usage import (
    NO_ACCOUNTING,
    describe_size,
    duration,
    format_duration,
    format_size,
    memory_bytes,
    time_limit_seconds,
)

CAPTURES = Path(__file__).parent / "slurm_captured" / "usage"
VERSIONS = ("2205", "2411")
MiB = 1024**2
DISABLED = "Slurm accounting storage is disabled"


def captured(version: str, name: str) -> str:
    return (CAPTURES / version / name).read_text()


def ids(version: str) -> dict[str, str]:
    return dict(line.split() for line in captured(version, "ids.txt").splitlines())


@pytest.mark.parametrize("version", VERSIONS)
def test_a_job_that_touched_200_mib_peaks_near_it_against_the_500m_it_asked(version):
    job = ids(version)
    [memory] = usage_rows(captured(version, "sacct_usage.txt"))[job["memory"]].tasks

    assert memory.task is None and memory.state == "COMPLETED"
    assert 200 * MiB < memory.max_rss < 220 * MiB  # the python and its 200 MiB
    assert memory.requested_memory == 500 * MiB
    assert (memory.cpus, memory.time_limit) == (2, 300.0)
    assert 5 <= memory.elapsed <= 8 and 0 < memory.cpu_time < memory.elapsed * 2
    assert [step.name for step in memory.steps] == ["batch"]
    assert memory.memory_efficiency == pytest.approx(memory.max_rss / (500 * MiB))
    assert memory.cpu_efficiency == pytest.approx(memory.cpu_time / (memory.elapsed * 2))


@pytest.mark.parametrize("version", VERSIONS)
def test_an_array_has_a_row_per_task_each_with_its_own_peak(version):
    job = ids(version)
    tasks = usage_rows(captured(version, "sacct_usage.txt"))[job["array"]].tasks

    assert [task.task for task in tasks] == [0, 1]
    assert [round(task.max_rss / MiB, -2) for task in tasks] == [100, 200]  # 100 MiB x (index + 1)
    assert {task.requested_memory for task in tasks} == {400 * MiB}


@pytest.mark.parametrize("version", VERSIONS)
def test_per_cpu_memory_failed_and_unlimited_jobs(version):
    job = ids(version)
    usage = usage_rows(captured(version, "sacct_usage.txt"))
    [per_cpu] = usage[job["percpu"]].tasks
    [failed] = usage[job["failed"]].tasks
    [unlimited] = usage[job["unlimited"]].tasks

    assert per_cpu.requested_memory == 300 * MiB  # --mem-per-cpu=300M, one CPU: ReqMem is the total
    assert per_cpu.time_limit == 600.0  # --time=10: minutes
    assert failed.state == "FAILED"
    assert failed.max_rss is None and failed.memory_efficiency is None  # too short for a sample
    assert unlimited.time_limit is None


@pytest.mark.parametrize("version", VERSIONS)
def test_jobs_still_running_in_accounting_are_left_out_to_be_asked_again(version):
    job = ids(version)
    running = usage_rows(captured(version, "sacct_usage_running.txt"))

    assert job["memory"] not in running and job["array"] not in running  # RUNNING there
    assert {job["percpu"], job["failed"], job["unlimited"]} <= running.keys()
    assert usage_rows(captured(version, "sacct_usage_unknown.txt")) == {}


def test_pending_array_tasks_and_heterogeneous_components():
    text = "\n".join([
        "55_0|CANCELLED by 1000|00:00:04|00:00.010||100M|1|1|00:01:00",
        "55_0.batch|CANCELLED|00:00:04|00:00.010|2048K||1|1|",
        "55_[1-3%1]|CANCELLED by 1000|00:00:00|00:00:00||100M|1|1|00:01:00",
        "58+0|COMPLETED|00:00:02|00:01.500||100M|1|1|00:01:00",
        "58+0.batch|COMPLETED|00:00:02|00:01.500|1.50M||1|1|",
        "58+1|COMPLETED|00:00:02|00:00.500||100M|1|1|00:01:00",
    ])  # fmt: skip
    usage = usage_rows(text)

    assert [(task.task, task.max_rss) for task in usage["55"].tasks] == [(0, 2 * MiB)]
    assert [task.max_rss for task in usage["58"].tasks] == [round(1.5 * MiB), None]
    still_pending = text.replace("55_[1-3%1]|CANCELLED by 1000", "55_[1-3%1]|PENDING")
    assert "55" not in usage_rows(still_pending)  # its last tasks are yet to run: asked again


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("00:00.684", 0.684), ("00:00:07", 7), ("01:02:03", 3723), ("2-00:00:01", 172801),
     ("12:34.5", 754.5), ("UNLIMITED", None), ("Partition_Limit", None), ("", None)],
)  # fmt: skip
def test_durations_as_sacct_prints_them(text, seconds):
    assert duration(text) == (None if seconds is None else pytest.approx(seconds))


@pytest.mark.parametrize(
    ("text", "cpus", "nodes", "size"),
    [("500M", 2, 1, 500 * MiB), ("4G", 1, 1, 4096 * MiB), ("4000Mc", 4, 1, 16000 * MiB),
     ("4000Mn", 8, 2, 8000 * MiB), ("0", 1, 1, None), ("", 1, 1, None)],
)  # fmt: skip
def test_reqmem_of_every_version_is_the_whole_request(text, cpus, nodes, size):
    assert requested_memory(text, cpus=cpus, nodes=nodes) == size


def test_sizes_and_limits_in_the_units_users_type():
    assert memory_bytes("215704K", base="K") == 215704 * 1024
    assert memory_bytes("0", base="K") == 0
    assert memory_bytes("1.20G") == round(1.2 * 1024 * MiB)
    assert memory_bytes("16") == 16 * MiB  # sbatch's --mem: megabytes
    assert memory_bytes("lots") is None
    assert [time_limit_seconds(t) for t in ("30", "1:30", "1:30:00", "2-12", "0-01:00", "1-0:0:5")] == [
        1800,
        90,
        5400,
        216000,
        3600,
        86405,  # M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
    ]
    assert time_limit_seconds("UNLIMITED") is None
    assert (format_size(4.8 * 1.2 * 1024 * MiB), format_size(300 * MiB), format_size(1000 * MiB)) == (
        "6G", "300M", "1G",
    )  # fmt: skip
    assert (describe_size(4.8 * 1024 * MiB), describe_size(211 * MiB)) == ("4.8G", "211M")
    assert (format_duration(59.2), format_duration(3723), format_duration(90000)) == (
        "00:01:00", "01:02:03", "1-01:00:00",
    )  # fmt: skip


def test_one_sacct_call_names_the_jobs_or_past_a_few_hundred_the_week():
    assert usage_query(["5", "7"]) == [
        "sacct", "--noheader", "--parsable2", f"--format={FORMAT}", "--jobs=5,7",
    ]  # fmt: skip
    many = usage_query([str(i) for i in range(MAX_LISTED_JOBS + 1)])
    assert many[-1] == "--starttime=now-7days"


class Sacct:
    """run_command answering sacct as a cluster would: from a capture, or with an error."""

    def __init__(self, printed: str = "", error: str = "") -> None:
        self.printed, self.error, self.calls = printed, error, 0

    def __call__(self, argv: list[str], **_: object) -> CommandResult:
        assert argv[0] == "sacct", argv
        self.calls += 1
        return CommandResult(tuple(argv), 1 if self.error else 0, self.printed, self.error)


def test_the_scheduler_gives_the_usage_of_the_jobs_asked_for_alone(monkeypatch):
    sacct = Sacct(captured("2411", "sacct_usage.txt"))
    monkeypatch.setattr(slurm_usage, "run_command", sacct)
    job = ids("2411")

    usage = SlurmScheduler().usage([job["memory"], job["array"], "999999"])

    assert sorted(usage) == sorted([job["memory"], job["array"]]) and sacct.calls == 1


def test_without_accounting_every_job_says_so_and_sacct_is_asked_once(monkeypatch):
    sacct = Sacct(error=(Path(__file__).parent / "slurm_captured/2205/sacct_disabled.stderr").read_text())
    assert DISABLED in sacct.error
    monkeypatch.setattr(slurm_usage, "run_command", sacct)
    monkeypatch.setattr(slurm, "read_usage", slurm_usage.read_usage)
    scheduler = SlurmScheduler()

    first, second = scheduler.usage(["1", "2"]), scheduler.usage(["3"])

    assert {used.note for used in (*first.values(), *second.values())} == {NO_ACCOUNTING}
    assert sorted(first) == ["1", "2"] and sacct.calls == 1


def test_accounting_that_fails_is_an_error_to_ask_again_later(monkeypatch):
    sacct = Sacct(error="sacct: error: Problem talking to the database: Connection refused")
    monkeypatch.setattr(slurm_usage, "run_command", sacct)

    with pytest.raises(SchedulerError, match="Connection refused"):
        SlurmScheduler().usage(["1"])
    scheduler = SlurmScheduler()
    with pytest.raises(SchedulerError):
        scheduler.usage(["1"])
    assert scheduler.history.accounting  # still asked at the next poll
