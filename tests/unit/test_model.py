"""The job model: dependency order of a bundle, and SLURM state strings mapped to JobState."""

from __future__ import annotations

import pytest

from milex_common.errors import BundleError
from milex_common.model import Bundle, Job, JobState


def bundle(**dependencies: list[str]) -> Bundle:
    """A bundle `b` whose jobs, in keyword order, depend on the jobs listed."""
    jobs = {name: Job(name=name, script="app", dependencies=deps) for name, deps in dependencies.items()}
    return Bundle(name="b", created="20240102030405", jobs=jobs)


def names(jobs: list[Job]) -> list[str]:
    return [job.name for job in jobs]


def test_independent_jobs_keep_their_order() -> None:
    assert names(bundle(c=[], a=[], b=[]).ordered_jobs()) == ["c", "a", "b"]


def test_dependencies_come_first() -> None:
    assert names(bundle(evaluate=["train"], train=["prepare"], prepare=[]).ordered_jobs()) == [
        "prepare",
        "train",
        "evaluate",
    ]


def test_diamond_is_ordered_stably() -> None:
    ordered = names(bundle(report=["left", "right"], left=["root"], right=["root"], root=[]).ordered_jobs())
    assert ordered == ["root", "left", "right", "report"]


def test_each_job_appears_once() -> None:
    ordered = names(bundle(a=[], b=["a"], c=["a", "b"], d=["c", "a"]).ordered_jobs())
    assert ordered == ["a", "b", "c", "d"]


def test_empty_bundle_orders_to_nothing() -> None:
    assert bundle().ordered_jobs() == []


def test_unknown_dependency_names_job_dependency_and_known_jobs() -> None:
    with pytest.raises(BundleError) as error:
        bundle(train=["prepare"], evaluate=[]).ordered_jobs()
    message = str(error.value)
    assert "job 'train'" in message
    assert "'prepare'" in message
    assert "b_20240102030405" in message
    assert "evaluate, train" in message


def test_cycle_error_shows_the_cycle_path() -> None:
    with pytest.raises(BundleError, match="dependency cycle: a -> b -> c -> a"):
        bundle(a=["b"], b=["c"], c=["a"]).ordered_jobs()


def test_cycle_path_leaves_out_the_jobs_leading_to_it() -> None:
    with pytest.raises(BundleError, match=r"dependency cycle: b -> c -> b\.$"):
        bundle(a=["b"], b=["c"], c=["b"]).ordered_jobs()


def test_self_dependency_is_a_cycle() -> None:
    with pytest.raises(BundleError, match="a -> a"):
        bundle(a=["a"]).ordered_jobs()


def test_stem_is_name_and_date() -> None:
    assert bundle().stem == "b_20240102030405"


@pytest.mark.parametrize(
    ("text", "state"),
    [
        ("CANCELLED by 0", JobState.CANCELLED),
        ("CANCELLED by 1234", JobState.CANCELLED),
        ("CANCELLED+", JobState.CANCELLED),
        ("COMPLETED", JobState.COMPLETED),
        ("CD", JobState.COMPLETED),
        ("completed", JobState.COMPLETED),
        ("  RUNNING\n", JobState.RUNNING),
        ("PD", JobState.PENDING),
        ("OOM", JobState.OUT_OF_MEMORY),
        ("OUT_OF_MEMORY", JobState.OUT_OF_MEMORY),
        ("TIMEOUT", JobState.TIMEOUT),
        ("DEADLINE", JobState.TIMEOUT),
        ("NODE_FAIL", JobState.NODE_FAIL),
        ("BOOT_FAIL", JobState.FAILED),
        ("PREEMPTED", JobState.PREEMPTED),
        ("weird", JobState.UNKNOWN),
        ("", JobState.UNKNOWN),
        ("COMPLETEDX", JobState.UNKNOWN),
    ],
)
def test_from_slurm(text: str, state: JobState) -> None:
    assert JobState.from_slurm(text) is state


@pytest.mark.parametrize(
    "state",
    [
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.OUT_OF_MEMORY,
        JobState.NODE_FAIL,
        JobState.PREEMPTED,
    ],
)
def test_end_states_are_finished(state: JobState) -> None:
    assert state.finished


@pytest.mark.parametrize("state", [JobState.SUBMITTED, JobState.PENDING, JobState.RUNNING, JobState.UNKNOWN])
def test_other_states_are_not_finished(state: JobState) -> None:
    assert not state.finished


def test_a_long_chain_listed_backwards_is_ordered_without_recursion_limits() -> None:
    from milex_common.model import Bundle, Job

    jobs = {
        f"j{i}": Job(name=f"j{i}", script="true", dependencies=[f"j{i - 1}"] if i else [])
        for i in range(3000)
    }
    bundle = Bundle(name="chain", created="20240101000000", jobs=dict(reversed(list(jobs.items()))))
    assert [job.name for job in bundle.ordered_jobs()] == [f"j{i}" for i in range(3000)]
