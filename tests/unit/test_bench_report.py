"""The benchmark's latency report over RTTs: goals, the round-trip table, the PNGs, the copied figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import run
from bench.report import goals, markdown

MEDIANS_MS = {  # method: median at RTT 0, 20, 80 ms
    "paramiko_exec": (10, 50, 170),
    "ssh_controlmaster": (17, 57, 177),
    "ssh_fresh": (280, 460, 1000),
    "milex_protocol": (9, 29, 89),
    "milex_api": (11, 31, 91),
    "milex_run": (120, 180, 360),
    "milex_cold": (760, 1000, 1700),
}


def row(key: str, median_ms: float) -> dict:
    samples = [median_ms / 1000] * 3
    return {"label": key, "n": 3, "median": median_ms / 1000, "p95": median_ms / 1000, "samples": samples}


def results(mode: str = "full", rtts: tuple[int, ...] = (0, 20, 80)) -> dict:
    latency = {
        str(rtt): {key: row(key, medians[index]) for key, medians in MEDIANS_MS.items()}
        for index, rtt in enumerate(rtts)
    }
    latency["0"]["raw_sbatch"] = row("raw_sbatch", 7)
    latency["0"]["milex_api_burst"] = row("milex_api_burst", 10)
    machine = {
        key: "x"
        for key in ("cpu", "cores", "kernel", "slurm", "openssh", "python", "paramiko", "pyzmq", "milex")
    }
    return {
        "mode": mode,
        "started": "2026-12-07 05:00",
        "machine": {**machine, "load_average": (0.5, 0.5, 0.5)},
        "errors": {},
        "latency": latency,
        "load_average_end": (0.5, 0.5, 0.5),
        "duration_seconds": 200.0,
    }


def test_warm_milex_run_is_held_to_half_of_fresh_ssh_at_rtt_0_and_a_fifth_at_80_ms() -> None:
    found = {g["goal"]: g for g in goals(results())}

    at_0 = found["warm `milex-run` within 0.5x of a fresh `ssh host sbatch` at RTT 0 ms"]
    at_80 = found["warm `milex-run` within 0.2x of a fresh `ssh host sbatch` at RTT 80 ms"]
    assert (at_0["measured"], at_0["met"]) == ("0.43x of ssh", True)
    assert (at_80["measured"], at_80["met"]) == ("0.36x of ssh", False)
    assert found["warm Python API within 1.5x of raw `sbatch`"]["measured"] == "1.57x"


def test_a_run_without_80_ms_leaves_that_goal_out() -> None:
    names = [g["goal"] for g in goals(results("quick", (0, 20)))]

    assert names == [
        "warm Python API within 1.5x of raw `sbatch`",
        "warm `milex-run` within 0.5x of a fresh `ssh host sbatch` at RTT 0 ms",
    ]


def test_the_report_gives_each_method_its_median_at_every_rtt_and_its_cost_in_round_trips() -> None:
    measured = results()
    measured["goals"] = goals(measured)
    report = markdown(measured)

    assert (
        "| method | RTT 0 ms | RTT 20 ms | RTT 80 ms | round trips at 20 / 80 ms | time / RTT at 20 / 80 ms |"
        in report
    )
    # (91 - 11) / 80 = 1.0 round trip added; 91 / 80 = 1.1 RTTs in all
    assert "| milex_api | 11.0 ms | 31.0 ms | 91.0 ms | 1.0 / 1.0 | 1.6 / 1.1 |" in report
    assert "| ssh_fresh | 280.0 ms | 460.0 ms | 1000.0 ms | 9.0 / 9.0 | 23.0 / 12.5 |" in report
    assert "raw_sbatch | 3 | 7.0 ms" in report  # the floor, at RTT 0 only
    assert "At 80 ms the warm Python API adds 1.0 round trips" in report


def test_a_full_run_copies_both_figures_and_a_quick_one_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(run, "FIGURES", tmp_path / "figures")

    run.write(results("quick", (0, 20)), tmp_path / "quick", plot=True)
    assert not (tmp_path / "figures").exists()
    run.write(results(), tmp_path / "full", plot=True)

    for name in ("latency.png", "latency-rtt.png"):
        drawn = (tmp_path / "full" / name).read_bytes()
        assert drawn.startswith(b"\x89PNG")
        assert (tmp_path / "figures" / name).read_bytes() == drawn
        assert (tmp_path / "quick" / name).read_bytes().startswith(b"\x89PNG")
