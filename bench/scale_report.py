"""The goals and tables of the scale sections (8: bundles and clients, 9: jobs tracked)."""

from __future__ import annotations

from bench.growth import keyed

MEMORY_GOAL_MB = 150
RESTART_GOAL_SECONDS = 1.0
Goal = tuple[str, str, bool]  # (goal, measured, met)


def goals(results: dict) -> list[Goal]:
    """The scale goals this run measured (a goal whose section did not run is left out)."""
    found: list[Goal] = []
    scale, tracking = results.get("scale", {}), results.get("tracking", {})
    rates: list[str] = []
    met = True
    if tracking:
        rows = keyed(tracking["sizes"])
        rates += [f"{n:,} jobs {row['squeue_per_interval']:.2f}" for n, row in rows.items()]
        met = met and all(row["squeue_per_interval"] <= 1.0 for row in rows.values())
    if scale:
        counts = keyed(scale["clients"]["counts"])
        interval = scale["clients"]["poll_interval"]
        rates += [f"{n} clients {row['squeue_per_interval']:.2f}" for n, row in counts.items()]
        met = met and all(_one_per_interval(row, interval) for row in counts.values())
    if rates:
        found.append(("one SLURM query per poll interval up to 100,000 jobs and 50 clients",
                      "squeue per interval: " + ", ".join(rates), met))  # fmt: skip
    if tracking:
        largest, row = max(keyed(tracking["sizes"]).items())
        peak, now = row["memory_mb"]["VmHWM"], row["memory_mb"]["VmRSS"]
        measured = f"peak {peak:.0f} MB (after its polls {now:.0f} MB)"
        found.append((f"agent under {MEMORY_GOAL_MB} MB resident with 100,000 jobs (here {largest:,})",
                      measured, peak < MEMORY_GOAL_MB))  # fmt: skip
        hello = row["start_to_hello_seconds"]
        found.append((f"a restart answers within 1 s (with {largest:,} jobs)", f"{hello:.2f} s",
                      hello < RESTART_GOAL_SECONDS))  # fmt: skip
    return found


def _one_per_interval(row: dict, interval: float) -> bool:
    gap = row["min_gap_between_squeue"]
    return bool(row["squeue_per_interval"] <= 1.0 and (gap is None or gap >= 0.95 * interval))


def tables(results: dict) -> list[str]:
    return _scale(results.get("scale")) + _tracking(results.get("tracking"))


def _scale(scale: dict | None) -> list[str]:
    if not scale:
        return []
    bundles, clients = scale["bundles"], scale["clients"]
    sizes = {shape: keyed(rows) for shape, rows in bundles["sizes"].items()}
    lines = [
        "",
        "## 8. Scale: big bundles, many watching clients",
        "",
        "| jobs in one `milex.submit()` | independent: time | jobs/s | ms per job | chained: time | jobs/s "
        "| ms per job |",
        "|---|---|---|---|---|---|---|",
    ]
    for size in sorted(sizes["independent"]):
        cells = []
        for shape in ("independent", "chain"):
            row = sizes[shape][size]
            cells += [f"{row['seconds']:.2f} s", f"{row['jobs_per_second']:.0f}",
                      f"{row['seconds'] / size * 1000:.2f}"]  # fmt: skip
        lines.append(f"| {size:,} | " + " | ".join(cells) + " |")
    growth = bundles["growth"]
    lines += [
        "",
        f"Time grows as N^{_k(growth['independent']['exponent'])} for independent jobs and "
        f"N^{_k(growth['chain']['exponent'])} for a chain (least squares over log N, log time; 1 is "
        "linear: a constant time per job).",
        "",
        f"{clients['jobs_watched']:,} jobs watched, poll interval {clients['poll_interval']:g} s, each "
        f"count watched for {clients['window']:g} s; then one more job submitted, and the time from "
        "`milex.submit()` returning to each client's first event of it:",
        "",
        "| watching clients | squeue per interval | shortest gap | slurmctld RPCs per interval | agent CPU "
        "| agent resident | event at the clients: median | max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for count, row in sorted(keyed(clients["counts"]).items()):
        rpcs, delay = row["slurm_rpcs_per_interval"], row["event_delay_seconds"]
        missing = row["clients_without_the_event"]
        lines.append(
            f"| {count} | {row['squeue_per_interval']:.2f} | {_s(row['min_gap_between_squeue'])} | "
            f"{'n/a' if rpcs is None else f'{rpcs:.2f}'} | {row['agent_cpu_fraction'] * 100:.0f}% | "
            f"{row['agent_memory_mb']['VmRSS']:.0f} MB | {_ms(delay.get('median'))} | {_ms(delay.get('max'))}"
            + (f" ({missing} saw none)" if missing else "")
            + " |"
        )
    return lines


def _tracking(tracking: dict | None) -> list[str]:
    if not tracking:
        return []
    lines = [
        "",
        f"## 9. An agent tracking many jobs (local, all pending, poll every {tracking['interval']:g} s)",
        "",
        "| jobs | resident | peak | spawn to first answer | to first poll done | squeue per interval "
        "| CPU | one poll: read journal | squeue + parse | record | total |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, row in sorted(keyed(tracking["sizes"]).items()):
        memory, poll = row["memory_mb"], row["poll"]
        lines.append(
            f"| {size:,} | {memory['VmRSS']:.0f} MB | {memory['VmHWM']:.0f} MB | "
            f"{_s(row['start_to_hello_seconds'])} | {_s(row['start_to_first_poll_seconds'])} | "
            f"{row['squeue_per_interval']:.2f} | {row['cpu_fraction'] * 100:.0f}% | "
            + " | ".join(_s(poll[step]) for step in ("plan", "query", "apply", "total"))
            + " |"
        )
    growth = {name: _k(row["exponent"]) for name, row in tracking["growth"].items()}
    lines += [
        "",
        f"Growth with N (exponent of the log-log fit): resident memory N^{growth['memory_mb']}, first "
        f"answer N^{growth['start_to_hello_seconds']}, first poll N^{growth['start_to_first_poll_seconds']}, "
        f"one poll N^{growth['poll_seconds']}. A fake `squeue` prints a row for every job (no test "
        "controller holds 100,000), so the poll's squeue is only the printing of its rows.",
    ]
    return lines


def _k(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f} ms"
