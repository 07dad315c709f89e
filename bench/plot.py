"""The PNGs: submission latency by method and status latency (latency.png), and each method's median
submission time against the link's round-trip time (latency-rtt.png). matplotlib."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report import LATENCY_ORDER, rtt_methods


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(results: dict, path: Path) -> None:
    """ECDFs of submission latency at RTT 0; beside them, if the status section ran, its latencies."""
    plt = _pyplot()
    status = results.get("status", {})
    if status:
        figure, (left, right) = plt.subplots(1, 2, figsize=(14, 6.5), gridspec_kw={"width_ratios": [3, 2]})
        _status(right, status)
    else:
        figure, left = plt.subplots(figsize=(9, 6.5))
    latency = results.get("latency", {}).get("0", {})
    rows = [latency[key] for key in LATENCY_ORDER if latency.get(key, {}).get("samples")]
    for row in rows:
        values = sorted(row["samples"])
        fractions = [index / len(values) for index in range(len(values) + 1)]
        times = [values[0] * 1000] + [value * 1000 for value in values]
        left.step(times, fractions, where="post", label=row["label"])
    left.set_xscale("log")
    left.set_xlabel("submission latency, one job (ms, log scale)")
    left.set_ylabel("fraction of submissions")
    left.set_title("Submission latency at RTT 0 (ECDF)")
    _finish(plt, figure, left, results, path, legend_below=0.13 if rows else None)


def _status(axes: Any, status: dict) -> None:
    groups = [
        (name, status.get(key, {}).get("samples", []))
        for name, key in (
            ("RUNNING", "running"),
            ("COMPLETED", "completed"),
            ("COMPLETED, alone", "lone_completed"),
        )
    ]
    groups = [(name, samples) for name, samples in groups if samples]
    if groups:
        axes.boxplot([samples for _, samples in groups], vert=False, showfliers=True)
        axes.set_yticks(range(1, len(groups) + 1), [name for name, _ in groups])
    axes.set_xlabel("seconds from the state change in SLURM to the client")
    axes.set_title(f"Status latency ({status.get('poll', 'agent defaults')})")
    axes.grid(True, axis="x", alpha=0.3)


def plot_rtt(results: dict, path: Path) -> None:
    """Median submission time against RTT, one line per method, with the floor and the ideal of warm
    Milex (its time at RTT 0 plus one round trip)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(9, 6.5))
    latency = results.get("latency", {})
    rtts = sorted(latency, key=int)
    for key in rtt_methods(latency) if rtts else []:
        medians = [latency[rtt][key]["median"] * 1000 for rtt in rtts]
        axes.plot([int(rtt) for rtt in rtts], medians, marker="o", label=latency["0"][key]["label"])
    if rtts and latency["0"].get("milex_api", {}).get("n"):
        base = latency["0"]["milex_api"]["median"] * 1000
        axes.plot(
            [int(rtt) for rtt in rtts],
            [base + int(rtt) for rtt in rtts],
            linestyle=":",
            color="gray",
            label="warm API at RTT 0 + one round trip (the ideal)",
        )
    if rtts and latency["0"].get("raw_sbatch", {}).get("n"):
        floor = latency["0"]["raw_sbatch"]["median"] * 1000
        axes.axhline(
            floor, linestyle="--", color="black", linewidth=0.8, label="raw `sbatch` on the node (floor)"
        )
    axes.set_yscale("log")
    axes.set_xticks([int(rtt) for rtt in rtts])
    axes.set_xlabel("round-trip time between laptop and login node (ms)")
    axes.set_ylabel("median submission latency, one job (ms, log scale)")
    axes.set_title("Submission latency against RTT")
    _finish(plt, figure, axes, results, path, legend_below=0.12 if rtts else None)


def _finish(
    plt: Any, figure: Any, axes: Any, results: dict, path: Path, *, legend_below: float | None
) -> None:
    """Grid, the legend under the axes (if there are lines: `legend_below` is its offset), the run's
    title; saved to `path`."""
    axes.grid(True, which="both", alpha=0.3)
    if legend_below is not None:
        axes.legend(
            fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -legend_below), ncol=2, frameon=False
        )
    figure.suptitle(f"Milex benchmarks, {results['mode']} run of {results['started']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
