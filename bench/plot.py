"""The PNG of the latency distributions: submission latency by method, and status latency (matplotlib)."""

from __future__ import annotations

from pathlib import Path

from bench.report import LATENCY_ORDER


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(14, 6.5), gridspec_kw={"width_ratios": [3, 2]})
    latency = results.get("latency", {})
    rows = [latency[key] for key in LATENCY_ORDER if latency.get(key, {}).get("samples")]
    for row in rows:
        values = sorted(row["samples"])
        fractions = [index / len(values) for index in range(len(values) + 1)]
        times = [values[0] * 1000] + [value * 1000 for value in values]
        left.step(times, fractions, where="post", label=row["label"])
    left.set_xscale("log")
    left.set_xlabel("submission latency, one job (ms, log scale)")
    left.set_ylabel("fraction of submissions")
    left.set_title("Submission latency (ECDF)")
    left.grid(True, which="both", alpha=0.3)
    if rows:
        left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)

    status = results.get("status", {})
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
        right.boxplot([samples for _, samples in groups], vert=False, showfliers=True)
        right.set_yticks(range(1, len(groups) + 1), [name for name, _ in groups])
    right.set_xlabel("seconds from the state change in SLURM to the client")
    right.set_title(f"Status latency ({status.get('poll', 'agent defaults')})")
    right.grid(True, axis="x", alpha=0.3)
    figure.suptitle(f"Milex benchmarks, {results['mode']} run of {results['started']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
