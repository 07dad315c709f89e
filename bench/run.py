"""`python -m bench [--quick] [--only SECTION,...] [--out DIR]`: run the sections, write the results.

Writes DIR/latest.json (every sample), DIR/latest.md (the tables), DIR/latency.png and
DIR/latency-rtt.png; a full run that measured latency also copies both PNGs to docs/figures/ (the
README shows them). Needs root (it creates the benchmark's login-node account and runs commands as
it), the test cluster and sshd.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench.modes import FULL, QUICK, Mode

SECTIONS = ("latency", "throughput", "load", "status", "footprint", "startup", "queue", "scale", "tracking")
REMOTE = ("latency", "throughput", "load", "status", "queue", "scale")
DEFAULT_OUT = Path(__file__).parent / "results"
FIGURES = Path(__file__).parents[1] / "docs" / "figures"  # committed, shown in the README
PLOTS = ("latency.png", "latency-rtt.png")
HEADROOM = 1000  # job records left free for everybody else


def main(argv: list[str] | None = None) -> None:
    options = _parser().parse_args(argv)
    mode = QUICK if options.quick else FULL
    sections = (
        [name for name in SECTIONS if name in options.only.split(",")] if options.only else list(SECTIONS)
    )
    _preflight(mode, sections, options.no_plot)
    _compiled()
    results = run(mode, sections)
    write(results, options.out, plot=not options.no_plot)
    print(f"bench: wrote {options.out}/latest.json, latest.md and {', '.join(PLOTS)}", file=sys.stderr)
    if results["errors"]:
        sys.exit(1)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions, small bundles (the smoke run)")
    parser.add_argument("--only", help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the results")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    return parser


def _preflight(mode: Mode, sections: list[str], no_plot: bool) -> None:
    if os.geteuid() != 0:
        sys.exit("bench: run as root: it creates the benchmark's login-node account and runs commands as it.")
    if not no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            sys.exit("bench: the plot needs matplotlib: pip install -e '.[bench]' (or pass --no-plot).")
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, check=False).stdout
    if "is UP" not in ping:
        sys.exit("bench: the SLURM test cluster is not running; start it with deploy/slurm-up.sh.")
    if any(name in REMOTE for name in sections):
        from bench.world import job_records

        count, limit = job_records()
        wanted = {*sections, *(["throughput"] if "load" in sections else [])}  # load watches its bundle
        made = sum(jobs for name, jobs in mode.jobs_by_section().items() if name in wanted)
        if count + made + HEADROOM > limit:
            sys.exit(
                f"bench: slurmctld holds {count} job records of MaxJobCount {limit}, and this {mode.name} "
                f"run makes about {made}; finished jobs leave after MinJobAge: retry later."
            )


def _compiled() -> None:
    """Milex's bytecode written, as installing a wheel leaves it: a source tree run with
    PYTHONDONTWRITEBYTECODE=1 (some shells and CI set it) compiles every module at each command's
    start (~30 ms of a warm `milex-run` here), which no installed release pays. (The login node's
    overlay is installed by pip, which compiles.)"""
    import compileall

    import milex
    import milex_agent
    import milex_common

    for package in (milex, milex_agent, milex_common):
        compileall.compile_dir(Path(package.__file__).parent, quiet=1)


def run(mode: Mode, sections: list[str]) -> dict:
    from bench.report import machine_info

    started = time.monotonic()
    results: dict = {
        "mode": mode.name,
        "started": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine_info(),
        "errors": {},
    }
    if any(name in REMOTE for name in sections):
        _remote_sections(results, mode, sections)
    if "footprint" in sections:
        from bench import footprint

        results["footprint"] = _section(results, "footprint", lambda: footprint.measure(mode))
    if "tracking" in sections:
        from bench import tracking

        results["tracking"] = _section(results, "tracking", lambda: tracking.measure(mode))
    if "startup" in sections:
        from bench import startup

        results["startup"] = _section(results, "startup", lambda: startup.measure(mode.startup_runs))
    for name in SECTIONS:  # a failed section has its traceback in "errors"
        if name in results and results[name] is None:
            del results[name]
    results["duration_seconds"] = time.monotonic() - started
    results["load_average_end"] = os.getloadavg()
    return results


def _section(results: dict, name: str, measure: Callable[[], object]) -> object:
    print(f"bench: {name} ...", file=sys.stderr, flush=True)
    began = time.monotonic()
    try:
        value = measure()
    except Exception:  # a failed section is reported, the others still run
        results["errors"][name] = traceback.format_exc()
        print(results["errors"][name], file=sys.stderr)
        return None
    print(f"bench: {name} done in {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
    return value


def _remote_sections(results: dict, mode: Mode, sections: list[str]) -> None:
    from bench import latency, load, queue, status, throughput
    from bench.methods import NodeTimer
    from bench.world import Ledger, set_up

    laptop = set_up(f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    ledger = Ledger()
    node = NodeTimer(laptop)
    try:
        if "latency" in sections:
            results["latency"] = _section(
                results, "latency", lambda: latency.measure(laptop, ledger, node, mode)
            )
        pending: list[str] = []
        if "throughput" in sections or "load" in sections:
            found = _section(results, "throughput", lambda: throughput.measure(laptop, ledger, node, mode))
            if found:
                results["throughput"], pending = found  # type: ignore[misc]
                if "throughput" not in sections:
                    del results["throughput"]
        if "load" in sections and pending:
            results["load"] = _section(
                results, "load", lambda: load.measure(laptop, ledger, node, pending, mode)
            )
        ledger.cancel(pending)
        if "status" in sections:
            results["status"] = _section(results, "status", lambda: status.measure(laptop, ledger, mode))
        if "queue" in sections:
            results["queue"] = _section(results, "queue", lambda: queue.measure(laptop, ledger, mode))
        if "scale" in sections:
            from bench import scale

            results["scale"] = _section(results, "scale", lambda: scale.measure(laptop, ledger, mode))
    finally:
        ledger.cancel()
        node.close()
        laptop.close()


def write(results: dict, out: Path, *, plot: bool) -> None:
    from bench.report import goals, markdown

    out.mkdir(parents=True, exist_ok=True)
    results["goals"] = goals(results)
    (out / "latest.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "latest.md").write_text(markdown(results))
    if plot:
        from bench.plot import plot as draw
        from bench.plot import plot_rtt

        draw(results, out / PLOTS[0])
        plot_rtt(results, out / PLOTS[1])
        if results["mode"] == "full" and "latency" in results:
            FIGURES.mkdir(parents=True, exist_ok=True)
            for name in PLOTS:
                shutil.copyfile(out / name, FIGURES / name)
