"""The laptop side of the benchmark: a private HOME with an SSH key and known_hosts, the Milex
configuration (`local`, and `cluster` behind the test sshd), and the SLURM jobs this run made."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.login_node import LoginNode, prepare, release
from milex_common.intervals import MAX_POLL_INTERVAL, POLL_INTERVAL
from tests.e2e.sshd import PORT, generate_key, known_hosts_line, start_sshd

BIN = Path(sys.executable).parent
MACHINE = "cluster"
DEFAULT_POLL = (POLL_INTERVAL, MAX_POLL_INTERVAL)  # the agent's own defaults
ACTIVE_STATES = "PD,R,CG,CF,S"


@dataclass
class Laptop:
    """The client's files and environment, and the remote account it reaches."""

    root: Path
    node: LoginNode
    public_key: str
    port: int = PORT
    env: dict[str, str] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def key(self) -> Path:
        return self.home / ".ssh" / "id_bench"

    @property
    def known_hosts(self) -> Path:
        return self.home / ".ssh" / "known_hosts"

    @property
    def config(self) -> Path:
        return self.root / "milexconfig"

    def configure(self, *, counted: bool = False, poll: tuple[float, float] = DEFAULT_POLL) -> None:
        """Write the configuration; `counted` puts the logging SLURM wrappers first on the agent's PATH.

        The poll settings reach an agent when it starts (a running one keeps its own).
        """
        cluster = {
            "hostname": "127.0.0.1",
            "port": self.port,
            "username": self.node.name,
            "key_path": str(self.key),
            "path": str(self.node.machine_path),
            "env_command": self.node.env_command(counted=counted),
            "slurm_account": "",
        }
        local = {
            "path": str(self.root / "local"),
            "env_command": "",
            "slurm_account": "",
            "scheduler": "local",
        }
        self.config.write_text(json.dumps({"local": local, MACHINE: cluster}, indent=4))
        self.env["MILEX_AGENT_POLL_INTERVAL"], self.env["MILEX_AGENT_MAX_INTERVAL"] = map(str, poll)
        os.environ.update(self.env)

    def ssh(self, *remote: str, control: Path | None = None) -> list[str]:
        """An OpenSSH command line to the login node (no user ssh_config, our key and known_hosts)."""
        options = [
            "-F",
            "/dev/null",
            "-p",
            str(self.port),
            "-i",
            str(self.key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
        ]
        if control is not None:
            options += ["-S", str(control)]
        return ["ssh", *options, f"{self.node.name}@127.0.0.1", *remote]

    def milex(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A Milex command run as the user would, from the venv's bin directory."""
        done = subprocess.run(
            [str(BIN / argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.root,
            timeout=300,
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def reach_through(self, port: int) -> None:
        """Reach the login node's sshd at `port` of 127.0.0.1 (a relay in front of it, or sshd itself):
        its host key trusted there, the configuration rewritten (agent defaults), the tunnel down so
        that the next command reconnects through it, this process's connection to the agent dropped."""
        from milex.config.file import load_config
        from milex.machine.endpoint import drop_shared_connection

        lines = self.known_hosts.read_text().splitlines()
        keys = {line.split(" ", 1)[1] for line in lines if line.startswith("[127.0.0.1]:")}
        added = [entry for key in sorted(keys) if (entry := f"[127.0.0.1]:{port} {key}") not in lines]
        self.known_hosts.write_text("\n".join([*lines, *added]) + "\n")
        self.port = port
        self.configure()
        self.milex("milex", "tunnel", "down", "--machine", MACHINE)
        drop_shared_connection(load_config().machine(MACHINE))

    def restart_remote(self, *, counted: bool = False, poll: tuple[float, float] = DEFAULT_POLL) -> None:
        """Stop the tunnel and the remote agent, reconfigure; the next request starts both anew.

        The agent resumes every job of its journal, as after any restart.
        """
        self.stop_remote()
        self.configure(counted=counted, poll=poll)
        self.milex("milex", "agent", "start", "--machine", MACHINE)

    def stop_remote(self) -> None:
        """The tunnel first: while it is up, any client still connected through it (this process's
        shared connection, a watch) makes it restart a stopped agent, with the settings it has."""
        self.milex("milex", "tunnel", "down", "--machine", MACHINE, check=False)
        self.milex("milex", "agent", "stop", "--machine", MACHINE, check=False)

    def close(self) -> None:
        self.stop_remote()
        _end_leftovers(self.node.run_dir, self.node.uid)
        release(self.node, self.public_key)
        shutil.rmtree(self.root, ignore_errors=True)


def _end_leftovers(run_dir: Path, uid: int) -> None:
    """End any process of this run still alive on the login node (found by the run's own directory)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if (
                proc.name.isdigit()
                and proc.stat().st_uid == uid
                and str(run_dir) in (proc / "cmdline").read_text()
            ):
                pids.append(int(proc.name))
        except OSError:
            continue
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


def set_up(run_id: str) -> Laptop:
    """sshd up, a fresh key and HOME, the login-node account ready, and the configuration written."""
    sshd = start_sshd()
    root = Path(tempfile.mkdtemp(prefix="milex-bench-"))
    home = root / "home"
    (home / ".ssh").mkdir(parents=True)
    public_key = generate_key(home / ".ssh" / "id_bench")
    (home / ".ssh" / "known_hosts").write_text(known_hosts_line(sshd.port))
    runtime = root / "run"
    runtime.mkdir(mode=0o700)
    node = prepare(public_key, run_id)
    env = {key: value for key, value in os.environ.items() if key not in ("SSH_AUTH_SOCK", "MILEX_MACHINE")}
    env.update(
        HOME=str(home),
        XDG_RUNTIME_DIR=str(runtime),
        MILEX_CONFIG=str(root / "milexconfig"),
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
    )
    laptop = Laptop(root=root, node=node, public_key=public_key, port=sshd.port, env=env)
    laptop.configure()
    return laptop


# ---- the SLURM jobs of this run: only these are ever cancelled ----------------------------------


@dataclass
class Ledger:
    """Every job id this run submitted, so that cleaning up never touches anybody else's jobs."""

    ids: list[str] = field(default_factory=list)

    def add(self, job_ids: Iterable[str]) -> None:
        self.ids.extend(job_ids)

    def cancel(self, job_ids: Sequence[str] | None = None, *, wait: float = 60.0) -> None:
        """Cancel `job_ids` (default: all of this run's) and wait until SLURM has ended them."""
        job_ids = list(self.ids if job_ids is None else job_ids)
        for start in range(0, len(job_ids), 500):
            subprocess.run(["scancel", *job_ids[start : start + 500]], capture_output=True, check=False)
        deadline = time.monotonic() + wait
        while active(job_ids) and time.monotonic() < deadline:
            time.sleep(0.2)


def active(job_ids: Sequence[str]) -> list[str]:
    """Those of `job_ids` still pending or running."""
    found: list[str] = []
    for start in range(0, len(job_ids), 2000):
        chunk = ",".join(job_ids[start : start + 2000])
        done = subprocess.run(
            ["squeue", "-h", "-t", ACTIVE_STATES, "-o", "%i", "-j", chunk],
            capture_output=True,
            text=True,
            check=False,
        )
        found += done.stdout.split()
    return found


def job_records() -> tuple[int, int]:
    """(job records slurmctld holds now, MaxJobCount): finished jobs count until MinJobAge purges them."""
    count = len(
        subprocess.run(
            ["squeue", "-h", "--states=all", "-o", "%i"], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    limit = next(
        (line.split("=")[1] for line in config.splitlines() if line.startswith("MaxJobCount")), "10000"
    )
    return count, int(limit.strip())
