"""The arithmetic of `milex status --usage`: seff's efficiencies, the suggestion for the next run, and
`--like` taking it under the options the user typed; the table and the one line without accounting."""

from __future__ import annotations

import pytest
from rich.console import Console

from milex.cli.usage_view import show_usage
from milex.usage_advice import Suggestion, suggest
from milex_common.model import JobState, SlurmOptions
from milex_common.protocol import TrackedJob
from milex_common.usage import NO_ACCOUNTING, TaskUsage, Usage

GiB, MiB = 1024**3, 1024**2


def task(**fields: object) -> TaskUsage:
    defaults: dict[str, object] = {
        "state": "COMPLETED", "elapsed": 100.0, "cpu_time": 100.0, "cpus": 1,
        "max_rss": GiB, "requested_memory": 2 * GiB, "time_limit": 3600.0,
    }  # fmt: skip
    return TaskUsage(**{**defaults, **fields})  # type: ignore[arg-type]


def test_efficiencies_are_seffs():
    used = task(elapsed=100, cpu_time=150, cpus=4, max_rss=3 * GiB, requested_memory=4 * GiB)
    assert used.cpu_efficiency == pytest.approx(150 / 400)
    assert used.memory_efficiency == pytest.approx(0.75)
    assert task(elapsed=0).cpu_efficiency is None
    assert (
        task(max_rss=None).memory_efficiency is None and task(requested_memory=None).memory_efficiency is None
    )


def test_memory_from_the_peak_with_its_headroom():
    advice = suggest([task(max_rss=round(4.8 * GiB)), task(max_rss=2 * GiB), task(max_rss=None)])
    assert advice.mem == "6G"  # 4.8G and 20%: 5.76G, up to a whole G
    assert "a peak of 4.8G and 20% headroom" in advice.reasons[0]
    assert suggest([task(max_rss=10 * MiB)]).mem == "64M"  # never below a floor
    assert suggest([task(max_rss=None)]).mem is None


def test_time_from_the_longest_run_or_twice_a_limit_it_hit():
    assert suggest([task(elapsed=600), task(elapsed=1000)]).time == "00:25:00"  # 1000 s x 1.5, up to minutes
    assert suggest([task(elapsed=3)]).time == "00:01:00"
    timed_out = suggest([task(state="TIMEOUT", elapsed=3600, time_limit=3600), task(elapsed=10)])
    assert timed_out.time == "02:00:00" and "hit its limit of 01:00:00" in timed_out.reasons[-1]
    assert suggest([task(elapsed=0)]).time is None


def test_fewer_cpus_only_when_they_were_mostly_idle_on_a_run_long_enough_to_tell():
    idle = suggest([task(cpus=8, elapsed=100, cpu_time=150)])  # 1.5 of 8 busy: 19%
    assert idle.cpus_per_task == 2 and "8 CPUs held, 1.5 kept busy (19%)" in idle.reasons[-1]
    assert suggest([task(cpus=4, elapsed=100, cpu_time=300)]).cpus_per_task is None  # 75%
    assert suggest([task(cpus=8, elapsed=2, cpu_time=0.1)]).cpus_per_task is None  # too short to tell
    assert suggest([task(cpus=1, elapsed=100, cpu_time=1)]).cpus_per_task is None


def test_like_takes_the_suggestions_under_what_the_user_typed():
    advice = Suggestion(mem="6G", time="00:25:00", cpus_per_task=2)
    typed = SlurmOptions(time="02:00:00", partition="gpu")
    assert advice.under(typed) == SlurmOptions(time="02:00:00", partition="gpu", mem="6G", cpus_per_task=2)
    assert advice.options == ["--mem 6G", "--time 00:25:00", "--cpus_per_task 2"]
    assert Suggestion().under(typed) == typed


def job(name: str, key: str, state: JobState = JobState.COMPLETED) -> TrackedJob:
    return TrackedJob(key=key, bundle="b_20240101000000", name=name, job_id=key[-2:], state=state)


def shown(jobs: list[TrackedJob], usage: dict[str, Usage]) -> str:
    console = Console(record=True, width=200)
    show_usage(console, jobs, usage, "b on hpc")
    return console.export_text()


def test_the_table_has_a_row_per_task_and_a_suggestion_per_job_name():
    jobs = [
        job("train", "k/11"),
        job("fan", "k/12"),
        job("late", "k/13"),
        job("run", "k/14", JobState.RUNNING),
    ]
    usage = {"k/11": Usage(tasks=[task(max_rss=round(4.8 * GiB), requested_memory=8 * GiB)]),
             "k/12": Usage(tasks=[task(task=0), task(task=1, max_rss=None)])}  # fmt: skip

    text = shown(jobs, usage)

    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    assert rows["train"] == [
        "train",
        "11",
        "COMPLETED",
        "00:01:40",
        "01:00:00",
        "1",
        "100%",
        "4.8G",
        "8.0G",
        "60%",
    ]
    assert rows["fan[0]"][-3:] == ["1.0G", "2.0G", "50%"] and rows["fan[1]"][-2:] == ["-", "2.0G"]
    assert "late 13 COMPLETED: no usage recorded (yet)" in text and "run 14 RUNNING: not ended" in text
    assert "next run of train: --mem 6G --time 00:03:00" in text
    assert "next run of fan: --mem 2G" in text


def test_without_accounting_it_says_so_in_one_line():
    jobs = [job("a", "k/11"), job("b", "k/12")]
    text = shown(jobs, {"k/11": Usage(note=NO_ACCOUNTING), "k/12": Usage(note=NO_ACCOUNTING)})
    assert text.strip() == f"No usage for b on hpc: {NO_ACCOUNTING}."
