"""The machine a run measured, the goals it checks, and its Markdown report."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import version
from pathlib import Path

from bench import scale_report
from bench.login_node import REPO, source_digest
from bench.stats import ratio

LATENCY_ORDER = (
    "raw_sbatch",
    "paramiko_exec",
    "ssh_controlmaster",
    "ssh_fresh",
    "milex_protocol",
    "milex_api",
    "milex_api_burst",
    "milex_run",
    "milex_cold",
)
RUN_GOALS = (("0", 0.5), ("80", 0.2))  # warm `milex-run` over a fresh `ssh host sbatch`, by RTT (ms)


def machine_info() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    git = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "slurm": _output(["sbatch", "--version"]),
        "openssh": _output(["ssh", "-V"]),
        "python": platform.python_version(),
        "paramiko": version("paramiko"),
        "pyzmq": version("pyzmq"),
        "milex": f"{version('milex-scheduler')} ({git or 'no git'}, source {source_digest()})",
        "load_average": os.getloadavg(),
    }


def _output(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return (done.stdout + done.stderr).strip().splitlines()[0]


def goals(results: dict) -> list[dict]:
    """Each goal of the issue with what this run measured and whether it is met."""
    latency, sections = results.get("latency", {}), results
    found = []

    def goal(name: str, measured: str, met: bool | None) -> None:
        if met is not None:  # a goal whose section did not run is left out
            found.append({"goal": name, "measured": measured, "met": met})

    loopback = latency.get("0", {})
    raw, api = _median(loopback, "raw_sbatch"), _median(loopback, "milex_api")
    api_ratio = ratio(api, raw)
    goal(
        "warm Python API within 1.5x of raw `sbatch`",
        _x(api_ratio),
        None if api_ratio is None else api_ratio <= 1.5,
    )
    for rtt, limit in RUN_GOALS:
        rows = latency.get(rtt, {})
        run_ratio = ratio(_median(rows, "milex_run"), _median(rows, "ssh_fresh"))
        goal(
            f"warm `milex-run` within {limit}x of a fresh `ssh host sbatch` at RTT {rtt} ms",
            f"{_x(run_ratio)} of ssh",
            None if run_ratio is None else run_ratio <= limit,
        )
    throughput = sections.get("throughput", {})
    for shape, name, least in (("", "independent jobs", 0.8), ("_chain", "a chain", 1.0)):
        tp = ratio(_rate(throughput, f"milex_bundle{shape}"), _rate(throughput, f"raw_sbatch_loop{shape}"))
        goal(
            f"a bundle of {name} at least {least}x a raw `sbatch` loop of the same shape",
            _x(tp),
            None if tp is None else tp >= least,
        )
    load = sections.get("load", {})
    if load:
        windows = [load["watching"], load["watching_and_submitting"]]
        one = all(_one_per_interval(window, load["poll_interval"]) for window in windows)
        per = " / ".join(f"{window['squeue_per_interval']:.2f}" for window in windows)
        goal(
            "one SLURM status query per poll interval, whatever the jobs and clients",
            f"{per} squeue per interval ({load['clients']} clients, {load['jobs_watched']} jobs; "
            "watching / one more submitting)",
            one,
        )
    footprint = sections.get("footprint", {})
    if footprint:
        jobs = footprint["completed"]["jobs"]
        rss = max(footprint[v]["memory_mb"]["VmRSS"] for v in ("completed", "unfinished"))
        goal(f"agent under 100 MB resident with 10,000 jobs (here {jobs:,})", f"{rss:.0f} MB", rss < 100)
    startup = sections.get("startup", {})
    if startup:
        median = startup["milex --help"]["median"]
        goal("`milex --help` under 150 ms", f"{median * 1000:.0f} ms", median < 0.150)
    for name, measured, met in scale_report.goals(results):
        goal(name, measured, met)
    return found


def _one_per_interval(window: dict, interval: float) -> bool:
    """At most one squeue per interval, and never two within one interval of each other."""
    gap = window["min_gap_between_squeue"]
    return window["squeue_per_interval"] <= 1.0 and (gap is None or gap >= 0.95 * interval)


def _median(section: dict, key: str) -> float | None:
    return section.get(key, {}).get("median")


def _rate(section: dict, key: str) -> float | None:
    return section.get(key, {}).get("jobs_per_second")


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.1f} ms"


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def markdown(results: dict) -> str:
    info = results["machine"]
    lines = [
        f"# Milex benchmarks: {results['mode']} run of {results['started']}",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, Linux {info['kernel']}; {info['slurm']}; "
        f"{info['openssh']}; Python {info['python']}, paramiko {info['paramiko']}, pyzmq {info['pyzmq']}; "
        f"Milex {info['milex']}. Load average at start {_load(info['load_average'])}, at end "
        f"{_load(results['load_average_end'])}; the run took {results['duration_seconds']:.0f} s.",
        "",
        "## Goals",
        "",
        "| goal | measured | met |",
        "|---|---|---|",
        *(f"| {g['goal']} | {g['measured']} | {_met(g['met'])} |" for g in results["goals"]),
    ]
    for section in (_latency, _throughput, _load_section, _status, _footprint, _startup, _queue):
        if table := section(results):
            lines += ["", *table]
    lines += scale_report.tables(results)
    for name, error in results["errors"].items():
        lines += [
            "",
            f"Section {name} failed: `{error.strip().splitlines()[-1]}` (traceback in latest.json).",
        ]
    return "\n".join(lines) + "\n"


def _load(values: list[float] | tuple[float, ...]) -> str:
    return " / ".join(f"{value:.2f}" for value in values)


def _met(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "n/a"}[met]


def _latency(results: dict) -> list[str]:
    latency = results.get("latency")
    if not latency:
        return []
    loopback = latency["0"]
    raw, ssh = loopback["raw_sbatch"], loopback["ssh_fresh"]
    lines = [
        "## 1. Submission latency, one job (until its id is known)",
        "",
        "At RTT 0 (loopback):",
        "",
        "| method | n | median | p95 | median / raw sbatch | p95 / raw sbatch | median / fresh ssh |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in LATENCY_ORDER:
        row = loopback.get(key)
        if row and row.get("n"):
            lines.append(
                f"| {row['label']} | {row['n']} | {_ms(row['median'])} | {_ms(row['p95'])} | "
                f"{_x(ratio(row['median'], raw['median']))} | {_x(ratio(row['p95'], raw['p95']))} | "
                f"{_x(ratio(row['median'], ssh['median']))} |"
            )
    return lines + _over_rtt(latency)


def _over_rtt(latency: dict[str, dict]) -> list[str]:
    """Each method's median at every RTT, and what the link costs it in round trips."""
    rtts = sorted(latency, key=int)
    delayed = [rtt for rtt in rtts if int(rtt) > 0]
    methods = rtt_methods(latency)
    if not delayed:
        return []
    counts = [latency[rtt][key]["n"] for rtt in delayed for key in methods]
    at = " / ".join(delayed)
    lines = [
        "",
        f"Over a link (bench/relay.py between the laptop and sshd), medians; n {min(counts)} to "
        f"{max(counts)} at each RTT above 0; round trips = (median at RTT - median at 0) / RTT:",
        "",
        "| method | "
        + " | ".join(f"RTT {rtt} ms" for rtt in rtts)
        + f" | round trips at {at} ms | time / RTT at {at} ms |",
        "|---|" + "---|" * (len(rtts) + 2),
    ]
    for key in methods:
        medians = {rtt: latency[rtt][key]["median"] for rtt in rtts}
        lines.append(
            f"| {latency['0'][key]['label']} | "
            + " | ".join(_ms(medians[rtt]) for rtt in rtts)
            + f" | {' / '.join(_trips(medians[rtt] - medians['0'], rtt) for rtt in delayed)} | "
            + f"{' / '.join(_trips(medians[rtt], rtt) for rtt in delayed)} |"
        )
    last = delayed[-1]
    added = {key: latency[last][key]["median"] - latency["0"][key]["median"] for key in methods}
    trips = {
        key: _trips(added.get(key), last) for key in ("milex_api", "milex_protocol", "milex_run", "ssh_fresh")
    }
    lines += [
        "",
        "Warm Milex should cost one round trip plus its floor (its own time at RTT 0: one request and "
        f"its reply on the tunnel's open session). At {last} ms the warm Python API adds "
        f"{trips['milex_api']} round trips, the request alone {trips['milex_protocol']}, warm `milex-run` "
        f"{trips['milex_run']}; a fresh `ssh host sbatch` adds {trips['ssh_fresh']}.",
    ]
    return lines


def rtt_methods(latency: dict[str, dict]) -> list[str]:
    """The methods measured at every RTT, in the report's order."""
    return [key for key in LATENCY_ORDER if all(latency[rtt].get(key, {}).get("n") for rtt in latency)]


def _trips(seconds: float | None, rtt: str) -> str:
    return "n/a" if seconds is None or not int(rtt) else f"{seconds * 1000 / int(rtt):.1f}"


def _throughput(results: dict) -> list[str]:
    throughput = results.get("throughput")
    if not throughput:
        return []
    ssh = throughput["ssh_fresh_loop"]["jobs_per_second"]
    lines = [
        "## 2. Throughput",
        "",
        "| method | jobs | time | jobs/s | / raw sbatch loop (same shape) | / ssh loop |",
        "|---|---|---|---|---|---|",
    ]
    for key, row in throughput.items():
        floor = throughput["raw_sbatch_loop_chain" if key.endswith("_chain") else "raw_sbatch_loop"]
        lines.append(
            f"| {row['label']} | {row['jobs']} | {_s(row['seconds'])} | {row['jobs_per_second']:.1f} | "
            f"{_x(ratio(row['jobs_per_second'], floor['jobs_per_second']))} | "
            f"{_x(ratio(row['jobs_per_second'], ssh))} |"
        )
    bundle = throughput.get("milex_bundle", {})
    hello = bundle.get("hello_during_submission", {})
    if hello.get("n"):
        blocked = hello["max"] > 0.5 * bundle["seconds"]
        lines += [
            "",
            f"Another client connecting while the bundle was submitted waited up to {_s(hello['max'])} "
            f"(median {_ms(hello['median'])}, {hello['n']} tries): the agent "
            + ("answered nobody until the bundle was submitted." if blocked else "kept answering."),
        ]
    return lines


def _load_section(results: dict) -> list[str]:
    load = results.get("load")
    if not load:
        return []
    single = load["single_job_squeue_seconds"]["median"]
    lines = [
        f"## 3. Load on SLURM: {load['clients']} clients watching {load['jobs_watched']} jobs, "
        f"poll interval {load['poll_interval']} s, counted over {load['window']:.0f} s",
        "",
        "| who queries | SLURM commands per poll interval |",
        "|---|---|",
    ]
    for key, label in (("watching", "clients watching"), ("watching_and_submitting", "one more submitting")):
        window = load[key]
        ids, took = window["squeue_job_ids"].get("median", 0), _ms(window["squeue_seconds"].get("median"))
        rpcs = window["slurm_rpcs_per_interval"]
        only_squeue = sum(window["commands"].values()) == window["commands"]["squeue"] > 0
        per_squeue = (
            f" ({rpcs / window['squeue_per_interval']:.1f} per squeue)" if rpcs and only_squeue else ""
        )
        lines += [
            f"| Milex agent, {label}: squeue | {window['squeue_per_interval']:.2f} "
            f"(each on {ids:.0f} job ids, {took}; shortest gap {_s(window['min_gap_between_squeue'])}) |",
            f"| Milex agent, {label}: all SLURM commands | {window['commands_per_interval']:.2f} "
            f"({_counts(window['commands'])}) |",
            f"| Milex agent, {label}: slurmctld RPCs from the account (sdiag) | "
            f"{'n/a' if rpcs is None else f'{rpcs:.2f}'}{per_squeue} |",
        ]
    lines += [
        f"| each client its own batched squeue | {load['naive_per_client_batched']} |",
        f"| one squeue per job per client | {load['naive_per_job_per_client']:,} (at {_ms(single)} each: "
        f"{load['naive_squeue_seconds_per_interval']:.0f} s of squeue per interval) |",
        "",
        f"Agent CPU while the clients watched: {load['watching']['agent_cpu_fraction'] * 100:.0f}%, with "
        f"one submitting ({load['watching_and_submitting']['submitted']} jobs): "
        f"{load['watching_and_submitting']['agent_cpu_fraction'] * 100:.0f}%; "
        f"resident memory {load['agent_memory_mb']['VmRSS']:.0f} MB.",
    ]
    return lines


def _counts(commands: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in commands.items() if count) or "none"


def _status(results: dict) -> list[str]:
    status = results.get("status")
    if not status:
        return []
    lines = [
        "## 4. Status latency: state change in SLURM to event at a watching client",
        "",
        f"Agent poll: {status['poll']}.",
        "",
        "| transition | n | median | p95 | max |",
        "|---|---|---|---|---|",
    ]
    labels = {
        "running": "RUNNING (job's first line ran)",
        "completed": "COMPLETED (job's last line ran)",
        "lone_completed": "COMPLETED, a job alone in the queue (poll backed off)",
    }
    for key, label in labels.items():
        row = status[key]
        if row.get("n"):
            lines.append(
                f"| {label} | {row['n']} | {_s(row['median'])} | {_s(row['p95'])} | {_s(row['max'])} |"
            )
    return lines


def _footprint(results: dict) -> list[str]:
    footprint = results.get("footprint")
    if not footprint:
        return []
    lines = [
        "## 5. Agent footprint (local agent, journal filled through its API)",
        "",
        "| journal | jobs | resident | peak | start to first answer | start to first poll done | "
        "CPU while idle |",
        "|---|---|---|---|---|---|---|",
    ]
    labels = {
        "empty": "empty",
        "completed": "all COMPLETED",
        "unfinished": "all unfinished, unknown to squeue",
    }
    for key, label in labels.items():
        row = footprint[key]
        memory = row["memory_mb"]
        lines.append(
            f"| {label} | {row['jobs']:,} | {memory['VmRSS']:.0f} MB | {memory['VmHWM']:.0f} MB | "
            f"{_s(row['start_to_hello_seconds'])} | {_s(row['start_to_first_poll_done_seconds'])} | "
            f"{row['cpu_fraction_while_idle'] * 100:.0f}% |"
        )
    cost = footprint.get("poll_cost")
    if cost:
        sizes = ", ".join(f"{int(size):,} jobs {_s(seconds)}" for size, seconds in cost["seconds"].items())
        lines += [
            "",
            f"One status query (run squeue, parse, combine) for jobs squeue knows: {sizes}; it grows as "
            f"N^{cost['exponent']:.1f}, so about {_s(cost['at_10000'])} at 10,000 jobs (a fake squeue prints "
            "the rows: only Milex's side is timed).",
        ]
    return lines


def _startup(results: dict) -> list[str]:
    startup = results.get("startup")
    if not startup:
        return []
    base = startup["python -c pass"]["median"]
    lines = [
        "## 6. CLI start-up",
        "",
        "| command | n | median | p95 | / python -c pass |",
        "|---|---|---|---|---|",
    ]
    for name, row in startup.items():
        if name != "imports":
            lines.append(
                f"| `{name}` | {row['n']} | {_ms(row['median'])} | {_ms(row['p95'])} | "
                f"{_x(ratio(row['median'], base))} |"
            )
    for name, imports in startup["imports"].items():
        heaviest = ", ".join(
            f"{row['module']} {_ms(row['cumulative'])}" for row in imports["direct_imports"][:5]
        )
        lines += [
            "",
            f"`{name}` imports in {_ms(imports['total_seconds'])} (site {_ms(imports['site_seconds'])}); "
            f"its heaviest direct imports: {heaviest}.",
        ]
    return lines


def _queue(results: dict) -> list[str]:
    queue = results.get("queue")
    if not queue:
        return []
    lines = [
        f"## 7. The agent's queue: {queue['jobs']} jobs of {queue['length']:g} s, a cap of {queue['cap']}",
        "",
        f"Ideal (the cap full at all times): {queue['waves']} waves x {queue['length']:g} s = "
        f"{_s(queue['ideal'])}. The node runs {queue['cap']} jobs at once; {queue['poll']}.",
        "",
        "| alternative | wall (SLURM's last end) | / ideal | overhead per wave | slot refill median "
        "| p95 | max | most at once |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in queue["runs"].values():
        refill = run["refill"]
        lines.append(
            f"| {run['label']} | {_s(run['wall'])} | {_x(run['over_ideal'])} | "
            f"{_s(run['overhead_per_wave'])} | "
            f"{_s(refill.get('median'))} | {_s(refill.get('p95'))} | {_s(refill.get('max'))} | "
            f"{run['most_at_once']} |"
        )
    for run in queue["runs"].values():
        if steps := run.get("steps"):
            lines += [
                "",
                f"{run['label']}, a refill step by step (median / p95): the job's end seen by a poll "
                + ", released by sbatch after that poll ".join(
                    f"{_s(steps[step].get('median'))} / {_s(steps[step].get('p95'))}"
                    for step in ("seen", "released")
                )
                + f", started by SLURM after sbatch {_s(steps['started'].get('median'))} / "
                f"{_s(steps['started'].get('p95'))}.",
            ]
    lines += [
        "",
        f"Queue / no cap: {_x(queue['queue_over_uncapped'])}; queue / all at once in SLURM: "
        f"{_x(queue['queue_over_raw'])}. Jobs of ours SLURM ran that no run knows (submitted twice): "
        + ", ".join(f"{run['other_jobs']} ({tag})" for tag, run in queue["runs"].items())
        + ".",
    ]
    return lines
