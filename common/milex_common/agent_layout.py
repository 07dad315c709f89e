"""The agent's directory, as both sides know it: `PATH/agent/CLUSTER` (or under a machine's
`state_dir`), the socket in it (or in the node's /tmp when that path is too long), and `agent.json`,
what a running agent publishes there. The cluster is SLURM's `ClusterName` from the node's
slurm.conf, or the node's own name without one (see milex_agent.handover)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import tempfile
from pathlib import Path

import msgspec

from milex_common.files import private_directory

SOCKET_PATH_LIMIT = 100  # sun_path holds 108 bytes on Linux; keep a margin
SLURM_CONF_PLACES = (
    "/etc/slurm/slurm.conf",
    "/run/slurm/conf/slurm.conf",  # sackd's cache (configless, 23.11+)
    "/var/spool/slurmd/conf-cache/slurm.conf",  # slurmd's cache (configless)
)
JOURNAL = "journal.sqlite"  # the agent's journal, in its directory (milex_agent.journal)
_CLUSTER_NAME = re.compile(r"^\s*ClusterName\s*=\s*([^\s#]+)", re.IGNORECASE | re.MULTILINE)


def node_name() -> str:
    """This node's short hostname (`login1` of `login1.cluster.example.org`)."""
    return socket.gethostname().split(".")[0]


def cluster_name(places: tuple[str, ...] = SLURM_CONF_PLACES) -> str:
    """SLURM's name for this node's cluster; the node's name when no slurm.conf here says it."""
    configured = os.environ.get("SLURM_CONF")
    for place in ((configured,) if configured else ()) + places:
        try:
            text = Path(place).read_text(errors="replace")
        except OSError:
            continue
        found = _CLUSTER_NAME.search(text)
        if found:
            return found[1].lower()  # slurmctld lowercases it too
    return node_name()


class AgentInfo(msgspec.Struct, kw_only=True):
    """What a running agent publishes in its directory, and what `milex-agent start` prints."""

    pid: int
    socket: str
    version: str
    started_at: float
    directory: str
    running: bool = True
    host: str = ""  # the node it runs on (its short hostname): a shared home is seen from several


def agent_dir(milex_path: str | Path, cluster: str | None = None) -> Path:
    """The agent's directory for this node's cluster: `PATH/agent/CLUSTER`, seen from each of its login
    nodes when the home is shared (milex_agent.handover). An agent directory of this node from before
    (`PATH/agent/NODE`, one agent per node) becomes the cluster's when the cluster has none yet."""
    agents = Path(milex_path).expanduser() / "agent"
    directory = agents / (cluster or cluster_name())
    former = agents / node_name()
    if former != directory and not directory.exists() and (former / JOURNAL).exists():
        with contextlib.suppress(FileNotFoundError):  # another node moved it first
            former.rename(directory)
    return directory


def machine_agent_dir(path: str, state_dir: str | None) -> Path:
    """The agent's directory for a machine: under its `state_dir` (a disk of the node, where the
    filesystem of its Milex path has no working locks) when it has one, else under its path."""
    if state_dir is None:
        return agent_dir(path)
    private_directory(Path(state_dir).expanduser())  # not one another user made for us in /var/tmp
    return agent_dir(state_dir, cluster=node_name())  # a disk of this node: this node's agent alone


def socket_path(directory: Path) -> Path:
    """`DIR/run/agent.sock`, or the node's (`node_socket_path`) when that path is too long for a socket."""
    preferred = directory / "run" / "agent.sock"
    return preferred if len(str(preferred)) <= SOCKET_PATH_LIMIT else node_socket_path(directory)


def node_socket_path(directory: Path) -> Path:
    """The socket of the agent of `directory` in a private directory of this node's /tmp."""
    digest = hashlib.sha256(str(directory).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"milex-agent-{os.getuid()}" / f"{digest}.sock"
