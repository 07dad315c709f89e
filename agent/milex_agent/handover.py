"""One agent per user and cluster, whichever login node its directory is seen from.

Behind a round-robin name, a command lands on any of a cluster's login nodes, which share the home
the agent's directory is in. The agent runs on one node at a time, where the last tunnel landed: a
command on another node asks it to leave (a request in the directory, which the agent reads every
second) and starts the agent there once its lock is free; the journal goes with the directory. An
agent is never signalled from another node: its pid means nothing there.

The cluster is SLURM's `ClusterName`, read from the node's slurm.conf (a login node of a configless
cluster has it in the cache of `sackd` or `slurmd`); without one, the node's own name stands for it
(no SLURM, or a configuration this node cannot read: one agent per node, as before).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import msgspec

from milex_common.agent_layout import node_name
from milex_common.errors import MilexError
from milex_common.files import atomic_write, is_locked
from milex_common.intervals import HOME_CHECK_INTERVAL

LEAVE_FILE = "leave.json"
HANDOVER_TIMEOUT = 30.0


class LeaveRequest(msgspec.Struct, kw_only=True):
    """`leave.json`: the agent `pid` on node `host` is asked to leave by a command on node `by`."""

    host: str
    pid: int
    by: str
    at: float


def elsewhere(host: str) -> bool:
    """Whether an agent that publishes `host` runs on another node (an older agent names none: here)."""
    return bool(host) and host != node_name()


def ask_to_leave(directory: Path, host: str, pid: int, timeout: float = HANDOVER_TIMEOUT) -> None:
    """Ask the agent `pid` of node `host` to leave `directory`, and wait until it has (its lock is free)."""
    request = LeaveRequest(host=host, pid=pid, by=node_name(), at=time.time())
    atomic_write(directory / LEAVE_FILE, msgspec.json.encode(request), mode=0o600)
    try:
        deadline = time.monotonic() + timeout
        while is_locked(directory / "agent.lock"):
            if time.monotonic() > deadline:
                raise MilexError(
                    f"the agent on {host} (pid {pid}) did not leave {directory} within {timeout:.0f} s. "
                    f"If {host} is down, its lock ends with the file system's lease (NFS: about 90 s): "
                    f"retry then. Otherwise stop it there: `ssh {host} milex-agent stop --dir {directory}`."
                )
            time.sleep(0.05)
    finally:
        (directory / LEAVE_FILE).unlink(missing_ok=True)


def beat(directory: Path) -> None:
    """The running agent's sign of life: its agent.json touched (every home check)."""
    with contextlib.suppress(FileNotFoundError):
        os.utime(directory / "agent.json")


def live_elsewhere(directory: Path, every: float = HOME_CHECK_INTERVAL) -> str | None:
    """Why an agent that has just taken the lock of `directory` must not run: agent.json names an
    agent of another node that still beats (the file changes within three beats), so the lock held
    only on this node (NFS `local_lock`, Lustre `localflock`); None otherwise. A record left by an
    agent that died costs this wait once; clocks of other nodes are never compared with ours."""
    path = directory / "agent.json"
    try:
        record = json.loads(path.read_bytes())
        first = path.stat().st_mtime_ns
    except (FileNotFoundError, ValueError):
        return None
    host, pid = str(record.get("host", "")), record.get("pid")
    if not elsewhere(host):
        return None
    deadline = time.monotonic() + 3 * every
    while time.monotonic() < deadline:
        time.sleep(every / 5)
        try:
            if path.stat().st_mtime_ns != first:
                return (
                    f"the agent on {host} (pid {pid}) still runs and keeps {path} fresh, yet this node "
                    f"({node_name()}) was granted the lock it holds: locks in {directory} do not reach "
                    "across login nodes"
                )
        except FileNotFoundError:
            return None  # it has just left
    return None


def leave_reason(directory: Path, host: str, pid: int) -> str | None:
    """Why the agent `pid` of node `host` must leave `directory`: a request naming it; else None."""
    try:
        request = msgspec.json.decode((directory / LEAVE_FILE).read_bytes(), type=LeaveRequest)
    except (FileNotFoundError, msgspec.DecodeError):
        return None
    if (request.host, request.pid) != (host, pid):
        return None  # a request for an agent that has already left
    return (
        f"asked to leave by a command on {request.by}: the agent moves to the login node its tunnel "
        "is on, and its journal with it"
    )
