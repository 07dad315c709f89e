"""End to end on a machine without SLURM: the same records run as local processes."""

from __future__ import annotations

from tests.e2e.conftest import MilexHome

MESSAGE = "spaces, 'quotes', $VARS and `ticks`"


def test_local_scheduler_runs_a_bundle_with_dependency_and_array(milex_home: MilexHome) -> None:
    milex_home.milex("milex", "config", "set", "laptop", "path", str(milex_home.root / "laptop"))
    milex_home.milex("milex", "config", "set", "laptop", "scheduler", "local")
    milex_home.milex("milex-schedule", "milex-example", "--name", "offline", "--job_name", "first",
                     "--message", MESSAGE, "--sleep", "1")  # fmt: skip
    milex_home.milex("milex-schedule", "milex-example", "--name", "offline", "--job_name", "fanout",
                     "--append", "--dependencies", "first", "--array", "0-2")  # fmt: skip

    result = milex_home.milex("milex-run", "offline", "--machine", "laptop", "--wait", "--timeout", "60")

    assert result.stdout.count("COMPLETED") == 2, result.stdout
    logs = milex_home.root / "laptop" / "slurm"
    [first] = [MilexHome.read_report(p) for p in logs.glob("offline_*_first-*.out")]
    fanout = [MilexHome.read_report(p) for p in logs.glob("offline_*_fanout-*.out")]
    assert first["arguments"]["message"] == MESSAGE
    assert sorted(int(r["array_task_id"]) for r in fanout) == [0, 1, 2]
    assert min(r["started_at"] for r in fanout) >= first["started_at"] + 1
