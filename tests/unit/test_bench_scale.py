"""The scale sections' pure parts: how a cost grows with N, and their goals and tables."""

from __future__ import annotations

import json

import pytest

from bench.growth import exponent, keyed, per_unit
from bench.scale_report import goals, tables


def test_the_exponent_of_a_power_law_is_found() -> None:
    assert exponent({1000: 2.0, 3000: 6.0, 10_000: 20.0}) == pytest.approx(1.0)
    assert exponent({10: 1.0, 100: 100.0}) == pytest.approx(2.0)
    assert exponent({10: 5.0, 1000: 5.0}) == pytest.approx(0.0)


def test_no_exponent_without_two_sizes_or_with_a_cost_of_zero() -> None:
    assert exponent({1000: 2.0}) is None
    assert exponent({1000: 2.0, 3000: 0.0}) is None


def test_per_unit_and_keys_read_back_from_json() -> None:
    assert per_unit({1000: 2.0, 4000: 4.0}) == {1000: 0.002, 4000: 0.001}
    assert keyed(json.loads(json.dumps({1000: "a", 30: "b"}))) == {1000: "a", 30: "b"}


def tracking_row(squeue: float, peak: float, hello: float) -> dict:
    return {"memory_mb": {"VmRSS": peak / 2, "VmHWM": peak}, "start_to_hello_seconds": hello,
            "start_to_first_poll_seconds": hello + 1, "squeue_per_interval": squeue, "cpu_fraction": 0.5,
            "poll": {"plan": 0.1, "query": 0.2, "apply": 0.0, "total": 0.3}}  # fmt: skip


def clients_row(squeue: float, gap: float | None) -> dict:
    return {"squeue_per_interval": squeue, "min_gap_between_squeue": gap, "slurm_rpcs_per_interval": 2.0,
            "agent_cpu_fraction": 0.1, "agent_memory_mb": {"VmRSS": 60.0},
            "event_delay_seconds": {"n": 2, "median": 0.004, "max": 0.009},
            "clients_without_the_event": 0}  # fmt: skip


def results(*, peak: float = 120, hello: float = 0.4, squeue: float = 0.9, gap: float = 1.0) -> dict:
    """A run's scale results as latest.json keeps them (keys of N are strings there)."""
    growth = {"exponent": 1.0, "per_job": {}}
    found = {
        "tracking": {
            "interval": 1.0,
            "sizes": {10_000: tracking_row(0.9, 50, 0.2), 100_000: tracking_row(squeue, peak, hello)},
            "growth": {
                name: growth
                for name in (
                    "memory_mb",
                    "start_to_hello_seconds",
                    "start_to_first_poll_seconds",
                    "poll_seconds",
                )
            },
        },
        "scale": {
            "bundles": {
                "sizes": {
                    shape: {n: {"seconds": n / 200, "jobs_per_second": 200.0} for n in (1000, 10_000)}
                    for shape in ("independent", "chain")
                },
                "growth": {shape: {"exponent": 1.02} for shape in ("independent", "chain")},
            },
            "clients": {
                "jobs_watched": 10_000,
                "poll_interval": 1.0,
                "window": 10.0,
                "counts": {1: clients_row(0.9, 1.0), 50: clients_row(0.9, gap)},
            },
        },
    }
    return json.loads(json.dumps(found))


def test_the_goals_are_met_by_a_run_within_them() -> None:
    met = {name: (measured, ok) for name, measured, ok in goals(results())}
    assert all(ok for _, ok in met.values())
    [query] = [name for name in met if name.startswith("one SLURM query")]
    assert "100,000 jobs 0.90" in met[query][0] and "50 clients 0.90" in met[query][0]
    assert met["agent under 150 MB resident with 100,000 jobs (here 100,000)"] == (
        "peak 120 MB (after its polls 60 MB)",
        True,
    )


@pytest.mark.parametrize(
    ("run", "missed"),
    [
        ({"peak": 151}, "agent under 150 MB"),
        ({"hello": 1.2}, "a restart answers"),
        ({"squeue": 1.1}, "one SLURM query"),
        ({"gap": 0.5}, "one SLURM query"),  # two squeue calls within one interval
    ],
)
def test_each_goal_is_missed_alone(run: dict, missed: str) -> None:
    assert [name for name, _, ok in goals(results(**run)) if not ok] == [
        name for name, _, _ in goals(results()) if name.startswith(missed)
    ]


def test_no_goal_for_a_section_that_did_not_run() -> None:
    assert goals({}) == []
    assert tables({}) == []


def test_the_tables_have_a_row_per_size_and_per_client_count() -> None:
    text = "\n".join(tables(results()))
    assert "## 8. Scale" in text and "## 9. An agent tracking" in text
    assert "| 10,000 | 50.00 s | 200 | 5.00 | 50.00 s | 200 | 5.00 |" in text
    assert "N^1.02 for independent jobs" in text
    assert "| 50 | 0.90 | 1.00 s | 2.00 | 10% | 60 MB | 4 ms | 9 ms |" in text
    assert (
        "| 100,000 | 60 MB | 120 MB | 0.40 s | 1.40 s | 0.90 | 50% | 0.10 s | 0.20 s | 0.00 s | 0.30 s |"
        in text
    )
