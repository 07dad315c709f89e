"""Section 6: how long the CLI takes to start, against a bare Python, and which imports it pays for."""

from __future__ import annotations

import random
import subprocess
import sys
import time

from bench.stats import summarize
from bench.world import BIN

TOP_IMPORTS = 12


def commands() -> dict[str, list[str]]:
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import milex'": [sys.executable, "-c", "import milex"],
        "milex --help": [str(BIN / "milex"), "--help"],
        "milex-schedule --help": [str(BIN / "milex-schedule"), "--help"],
        "milex-run --help": [str(BIN / "milex-run"), "--help"],
    }


def measure(runs: int) -> dict:
    timed = commands()
    samples: dict[str, list[float]] = {name: [] for name in timed}
    rng = random.Random(7)
    for _ in range(runs + 1):  # the first round warms the page cache and is dropped
        names = list(timed)
        rng.shuffle(names)
        for name in names:
            start = time.perf_counter()
            subprocess.run(timed[name], capture_output=True, check=True)
            samples[name].append(time.perf_counter() - start)
    results: dict[str, dict] = {
        name: {**summarize(values[1:]), "samples": values[1:]} for name, values in samples.items()
    }
    results["imports"] = {
        "milex --help": import_times("milex.cli.main"),
        "milex-schedule": import_times("milex.cli.schedule"),
    }
    return results


def import_times(module: str) -> dict:
    """`python -X importtime -c 'import MODULE'`: the total, and the modules with the most own time."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []  # (name, own seconds, cumulative seconds, nesting depth)
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cumulative, raw = line[len("import time:") :].split("|")
        depth = (len(raw) - len(raw.lstrip()) - 1) // 2
        rows.append((raw.strip(), int(own) / 1e6, int(cumulative) / 1e6, depth))
    at = next(index for index, row in enumerate(rows) if row[0] == module and row[3] == 0)
    first = at
    while first > 0 and rows[first - 1][3] > 0:  # importtime lists a module's imports before it
        first -= 1
    heaviest = sorted(rows, key=lambda row: row[1], reverse=True)[:TOP_IMPORTS]
    children = sorted((row for row in rows[first:at] if row[3] == 1), key=lambda row: -row[2])
    return {
        "total_seconds": rows[at][2],
        "site_seconds": next((row[2] for row in rows if row[0] == "site"), None),
        "heaviest_own": [{"module": row[0], "own": row[1], "cumulative": row[2]} for row in heaviest],
        "direct_imports": [{"module": row[0], "cumulative": row[2]} for row in children[:TOP_IMPORTS]],
    }
