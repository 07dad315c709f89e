"""The benchmark harness in its quick mode, so that it cannot rot: every section runs and is reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("latency", "throughput", "load", "status", "footprint", "startup", "queue", "scale", "tracking")
# About 45 s once the benchmark account exists; its first run also installs Milex's dependencies
# into that account's venv (from the package index), and each new source tree into an overlay.
pytestmark = pytest.mark.timeout(420)


def test_quick_run_writes_every_section(tmp_path: Path, slurm_cluster: None) -> None:
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=400, check=False)  # fmt: skip

    assert done.returncode == 0, done.stderr[-5000:]
    results = json.loads((tmp_path / "latest.json").read_text())
    assert results["errors"] == {}
    for section in SECTIONS:
        assert results[section], section
    latency = results["latency"]  # by RTT: loopback, and 20 ms through bench/relay.py
    assert set(latency) == {"0", "20"}
    assert {"raw_sbatch", "ssh_fresh", "milex_api", "milex_run", "milex_cold"} <= set(latency["0"])
    over_link = {"ssh_fresh", "ssh_controlmaster", "paramiko_exec", "milex_api", "milex_run", "milex_cold"}
    assert over_link <= set(latency["20"])
    assert all(row["n"] >= 1 for rows in latency.values() for row in rows.values())
    assert latency["20"]["milex_api"]["median"] > 0.020  # at least the round trip the relay adds
    assert results["load"]["watching"]["commands"]["squeue"] >= 1  # the wrappers saw the agent's polls
    assert len(results["goals"]) == 10
    assert [row["clients"] for row in results["scale"]["clients"]["counts"].values()] == [1, 3]
    assert all(
        row["clients_without_the_event"] == 0 for row in results["scale"]["clients"]["counts"].values()
    )
    report = (tmp_path / "latest.md").read_text()
    assert all(run["other_jobs"] == 0 for run in results["queue"]["runs"].values())  # none submitted twice
    for heading in (
        "## Goals",
        "## 1.",
        "## 2.",
        "## 3.",
        "## 4.",
        "## 5.",
        "## 6.",
        "## 7.",
        "## 8.",
        "## 9.",
    ):
        assert heading in report
    assert "| RTT 0 ms | RTT 20 ms |" in report
    for figure in ("latency.png", "latency-rtt.png"):
        assert (tmp_path / figure).read_bytes().startswith(b"\x89PNG")
