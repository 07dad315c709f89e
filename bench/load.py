"""Section 3: the SLURM commands the agent issues while many clients watch many jobs.

The agent is restarted with logging wrappers of squeue, sacct, scontrol, sbatch and scancel first
on its PATH and a fixed poll interval; it resumes the pending bundle of section 2 from its journal.
Then N watching clients (separate processes) follow its events while the wrappers' log and
slurmctld's own per-user RPC counter (`sdiag`) are read over a window; a second window adds a
client that submits one job every 0.2 s (each submission makes the agent poll soon).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.login_node import REPO, LoginNode
from bench.methods import MilexApi, NodeTimer
from bench.modes import Mode
from bench.stats import summarize
from bench.world import MACHINE, Laptop, Ledger

SUBMIT_GAP = 0.2  # seconds between the submissions of the second window
COMMANDS = ("squeue", "sacct", "scontrol", "sbatch", "scancel")
WRAPPER = """#!/bin/bash
# Milex bench: log this call of {name} (start, end, exit status, job ids asked about), then pass it on.
# Not `--version`: the agent asks it once, to choose its poll, and it never reaches slurmctld.
[[ $1 == --version ]] && exec /usr/bin/{name} "$@"
start=$EPOCHREALTIME
ids=0
for arg in "$@"; do
    if [[ $arg == --jobs=* ]]; then IFS=, read -ra list <<< "${{arg#--jobs=}}"; ids=${{#list[@]}}; fi
done
/usr/bin/{name} "$@"
status=$?
echo "$start $EPOCHREALTIME {name} $status $ids" >> {log}
exit $status
"""


@dataclass(frozen=True)
class Call:
    start: float
    end: float
    name: str
    status: int
    ids: int


def install_wrappers(directory: Path, log: Path, owner: LoginNode | None = None) -> None:
    for name in COMMANDS:
        path = directory / name
        path.write_text(WRAPPER.format(name=name, log=log))
        path.chmod(0o755)
        if owner is not None:
            os.chown(path, owner.uid, owner.gid)


def read_calls(log: Path) -> list[Call]:
    if not log.exists():
        return []
    calls = []
    for line in log.read_text().splitlines():
        start, end, name, status, ids = line.split()
        calls.append(Call(float(start), float(end), name, int(status), int(ids)))
    return calls


def rpcs_by_user(user: str) -> int | None:
    """slurmctld's count of RPCs from `user` (sdiag), None if sdiag does not say."""
    text = subprocess.run(["sdiag"], capture_output=True, text=True, check=False).stdout
    match = re.search(rf"^\s*{re.escape(user)}\s*\(\s*\d+\)\s*count:(\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def agent_memory(node: LoginNode) -> dict[str, float]:
    """Resident memory (MB) of the run's remote agent."""
    return process_memory(agent_pid(node))


def process_memory(pid: int) -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def agent_pid(node: LoginNode) -> int:
    [info] = node.machine_path.glob("agent/*/agent.json")
    return int(json.loads(info.read_text())["pid"])


@dataclass
class Window:
    """What happened during one counting window."""

    start: float
    end: float = 0.0
    rpcs: int | None = None
    cpu_seconds: float = 0.0
    submitted: int = 0


def measure(laptop: Laptop, ledger: Ledger, node: NodeTimer, watched: list[str], mode: Mode) -> dict:
    interval = mode.load_interval
    install_wrappers(laptop.node.wrappers, laptop.node.calls_log, laptop.node)
    laptop.restart_remote(counted=True, poll=(interval, interval))
    laptop.milex("milex", "status", "--machine", MACHINE, "--json")  # the tunnel up, the agent serving
    time.sleep(3 * interval)  # a few polls: the chained bundle's cancellation is seen
    clients = [start_watcher(laptop) for _ in range(mode.clients)]
    try:
        for client in clients:
            assert client.stdout is not None
            if client.stdout.readline().strip() != "ready":
                raise RuntimeError(
                    f"a watching client failed: {client.stderr.read() if client.stderr else ''}"
                )
        watching = _window(laptop, mode, None)
        submitting = _window(laptop, mode, ledger)
        memory = agent_memory(laptop.node)
    finally:
        for client in clients:
            client.terminate()
            client.wait(10)
    calls = read_calls(laptop.node.calls_log)
    single = node.squeue_one(watched[0], 20)
    laptop.restart_remote()  # back to the defaults, without wrappers
    naive = mode.clients * len(watched)
    return {
        "clients": mode.clients,
        "jobs_watched": len(watched),
        "poll_interval": interval,
        "window": mode.window,
        "watching": _summary(calls, watching, interval),
        "watching_and_submitting": _summary(calls, submitting, interval),
        "naive_per_job_per_client": naive,
        "naive_per_client_batched": mode.clients,
        "single_job_squeue_seconds": summarize(single),
        "naive_squeue_seconds_per_interval": naive * summarize(single)["median"],
        "agent_memory_mb": memory,
    }


def _window(laptop: Laptop, mode: Mode, ledger: Ledger | None) -> Window:
    """Count over `mode.window` seconds; with a `ledger`, one more client submits a job every 0.2 s."""
    pid = agent_pid(laptop.node)
    before, cpu = rpcs_by_user(laptop.node.name), cpu_seconds(pid)
    window = Window(start=time.time())
    if ledger is None:
        time.sleep(mode.window)
    else:
        api = MilexApi()
        while time.time() < window.start + mode.window:
            ledger.add(api.sample().job_ids)
            window.submitted += 1
            time.sleep(SUBMIT_GAP)
    window.end = time.time()
    after = rpcs_by_user(laptop.node.name)
    window.rpcs = None if before is None or after is None else after - before
    window.cpu_seconds = cpu_seconds(pid) - cpu
    return window


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_watcher(laptop: Laptop) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.watcher", MACHINE],
        cwd=REPO,
        env=laptop.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _summary(all_calls: list[Call], window: Window, interval: float) -> dict:
    seconds = window.end - window.start
    intervals = seconds / interval
    calls = [call for call in all_calls if window.start <= call.start < window.end]
    squeue = [call for call in calls if call.name == "squeue"]
    gaps = [later.start - earlier.start for earlier, later in itertools.pairwise(squeue)]
    return {
        "seconds": seconds,
        "submitted": window.submitted,
        "commands": {name: sum(call.name == name for call in calls) for name in COMMANDS},
        "commands_per_interval": len(calls) / intervals,
        "squeue_per_interval": len(squeue) / intervals,
        "squeue_job_ids": summarize([call.ids for call in squeue]),
        "squeue_seconds": summarize([call.end - call.start for call in squeue]),
        "min_gap_between_squeue": min(gaps) if gaps else None,
        "slurm_rpcs_per_interval": None if window.rpcs is None else window.rpcs / intervals,
        "agent_cpu_fraction": window.cpu_seconds / seconds,
    }
