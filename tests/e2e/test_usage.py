"""Resource usage end to end: on each namespaced cluster (accounting by slurmdbd), jobs that take a known
amount of memory show a peak near it in `milex status --usage`, with a suggestion, and `milex-schedule
--like` takes the suggested `--mem`; on the host's cluster (no accounting) usage is one line saying so;
on a machine without SLURM the local scheduler measures its jobs itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.clusters import LoginNode
from tests.e2e.conftest import REMOTE, MilexHome, wait_until

pytestmark = pytest.mark.timeout(600)
MiB = 1024**2
# The clusters sample a job's memory every 30 s (JobAcctGatherFrequency): jobs of a few seconds ask for
# a sample every second, or their peak is not measured at all.
SAMPLED = ("--sbatch", "acctg-freq=task=1")


def usage(laptop: MilexHome, bundle: str, machine: str = REMOTE) -> dict[str, dict]:
    """The usage of the jobs of `bundle` that have some, by job name."""
    shown = laptop.milex("milex", "status", bundle, "--machine", machine, "--usage", "--json").stdout
    reply = json.loads(shown)
    return {job["name"]: reply["usage"][job["key"]] for job in reply["jobs"] if job["key"] in reply["usage"]}


def recorded_slurm(laptop: MilexHome, bundle: str) -> dict[str, object]:
    """The SLURM options recorded for the job `big` of `bundle`."""
    [record] = laptop.jobs.glob(f"{bundle}_*[0-9].json")
    return json.loads(record.read_text())["big"]["slurm"]


def test_usage_shows_the_peak_a_job_allocated_and_like_schedules_with_the_suggested_mem(
    laptop: MilexHome, login_node: LoginNode
) -> None:
    laptop.milex("milex-schedule", "milex-example", "--name", "mem", "--job_name", "big",
                 "--allocate_mb", "200", "--sleep", "4", "--mem", "600M", "--time", "5",
                 *SAMPLED)  # fmt: skip
    laptop.milex("milex-schedule", "milex-example", "--name", "mem", "--append", "--job_name", "fan",
                 "--array", "0-1", "--allocate_mb", "100", "--sleep", "4", "--mem", "300M",
                 *SAMPLED)  # fmt: skip
    laptop.milex("milex-run", "mem", "--machine", REMOTE, "--wait", "--timeout", "150")

    wait_until(lambda: len(usage(laptop, "mem")) == 2, timeout=120, what="the usage of mem's jobs")
    used = usage(laptop, "mem")

    [big] = used["big"]["tasks"]
    assert 200 * MiB < big["max_rss"] < 260 * MiB, big
    assert (big["requested_memory"], big["time_limit"], big["state"]) == (600 * MiB, 300, "COMPLETED")
    assert big["elapsed"] >= 4 and big["cpus"] >= 1
    fan = used["fan"]["tasks"]
    assert [task["task"] for task in fan] == [0, 1]
    assert all(100 * MiB < task["max_rss"] < 160 * MiB for task in fan), fan

    table = laptop.milex("milex", "status", "mem", "--machine", REMOTE, "--usage").stdout
    print(table)  # (shown with -rP: the README's example)
    suggested = f"{-(-big['max_rss'] * 1.2 // MiB):.0f}M"  # the peak and 20%, in whole MiB
    assert f"next run of big: --mem {suggested} --time 00:01:00" in table, table
    rows = {line.split()[0]: line.split() for line in table.splitlines() if line.strip()}
    assert rows["big"][2:5] == ["COMPLETED", "00:00:0" + rows["big"][3][-1], "00:05:00"], table
    assert {"fan[0]", "fan[1]"} <= rows.keys(), table

    liked = laptop.milex("milex-schedule", "milex-example", "--name", "again", "--job_name", "big",
                         "--like", "mem", "--machine", REMOTE, "--allocate_mb", "200", "--sleep", "4",
                         *SAMPLED)  # fmt: skip
    assert f"From the usage of mem: --mem {suggested} --time 00:01:00" in liked.stdout, liked.stdout
    assert recorded_slurm(laptop, "again")["mem"] == suggested
    laptop.milex("milex-schedule", "milex-example", "--name", "typed", "--job_name", "big", "--like", "mem",
                 "--machine", REMOTE, "--mem", "1G")  # fmt: skip
    assert (recorded_slurm(laptop, "typed")["mem"], recorded_slurm(laptop, "typed")["time"]) == (
        "1G",
        "00:01:00",
    )

    laptop.milex("milex-run", "again", "--machine", REMOTE, "--wait", "--timeout", "150")
    wait_until(lambda: usage(laptop, "again"), timeout=120, what="the usage of again")
    [again] = usage(laptop, "again")["big"]["tasks"]
    assert again["requested_memory"] == int(suggested[:-1]) * MiB  # SLURM gave it what --like suggested
    assert again["max_rss"] < again["requested_memory"]


def test_without_accounting_usage_is_one_line_saying_so(milex_home: MilexHome) -> None:
    milex_home.milex("milex-schedule", "milex-example", "--name", "noacct")
    milex_home.milex("milex-run", "noacct", "--wait", "--timeout", "120")

    def said() -> str:
        return milex_home.milex("milex", "status", "noacct", "--usage").stdout

    wait_until(lambda: "No usage" in said(), timeout=30, what="the usage of noacct")
    assert said().strip() == "No usage for noacct on local: no accounting on this cluster."


def test_a_machine_without_slurm_measures_its_jobs_itself(milex_home: MilexHome) -> None:
    path = milex_home.root / "laptop"
    milex_home.milex("milex", "config", "set", "laptop", "path", str(path))
    milex_home.milex("milex", "config", "set", "laptop", "scheduler", "local")
    milex_home.milex("milex-schedule", "milex-example", "--name", "here", "--allocate_mb", "150",
                     "--sleep", "1", "--mem", "1G", "--cpus_per_task", "2")  # fmt: skip
    milex_home.milex("milex-run", "here", "--machine", "laptop", "--wait", "--timeout", "60")

    wait_until(lambda: usage(milex_home, "here", "laptop"), timeout=30, what="the usage of here")
    [here] = usage(milex_home, "here", "laptop")["milex-example"]["tasks"]
    assert 150 * MiB < here["max_rss"] < 250 * MiB, here
    assert (here["requested_memory"], here["cpus"]) == (1024 * MiB, 2)
    assert here["elapsed"] >= 1
    table = milex_home.milex("milex", "status", "here", "--machine", "laptop", "--usage").stdout
    assert "next run of milex-example: --mem" in table and "--cpus_per_task" not in table, table
    assert Path(path).is_dir()
