"""The ways to submit one job that the benchmark compares, each timed until the job id is known.

Every job is submitted held (`--hold`) and cancelled later: the benchmark measures submission,
not running thousands of `true` jobs on a machine that others share.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko

from bench.world import MACHINE, Laptop

RAW = "sbatch --parsable --hold --job-name=bench-ssh --output=/dev/null --wrap=true"
CLI_BUNDLE = "bench-cli"


def parse_job_id(output: str) -> str:
    """The id `sbatch --parsable` printed (`jobid` or `jobid;cluster`)."""
    job_id = output.strip().splitlines()[-1].split(";")[0] if output.strip() else ""
    if not job_id.isdigit():
        raise RuntimeError(f"no job id in {output!r}")
    return job_id


@dataclass
class Sample:
    seconds: float
    job_ids: list[str]


class NodeTimer:
    """The floor: `sbatch` on the login node, timed there, in a process kept open for the whole run."""

    key, label = "raw_sbatch", "raw `sbatch` on the login node (floor)"

    def __init__(self, laptop: Laptop) -> None:
        source = (Path(__file__).parent / "node_timer.py").read_text()
        argv = laptop.node.command("/usr/bin/python3", "-u", "-c", source)
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/"
        )

    def ask(self, **request: object) -> dict:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the node timer exited ({self.process.wait()})")
        return json.loads(line)

    def sample(self) -> Sample:
        reply = self.ask(op="one")
        return Sample(reply["seconds"], reply["job_ids"])

    def loop(self, count: int, *, chain: bool) -> Sample:
        reply = self.ask(op="loop", count=count, chain=chain)
        return Sample(reply["seconds"], reply["job_ids"])

    def squeue_one(self, job_id: str, count: int) -> list[float]:
        return self.ask(op="squeue", job_id=job_id, count=count)["samples"]

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(10)


def timed(run: Callable[[], str]) -> Sample:
    start = time.perf_counter()
    job_id = run()
    return Sample(time.perf_counter() - start, [job_id])


class FreshSsh:
    """A new `ssh host sbatch` per job: handshake, authentication, remote shell, sbatch."""

    key, label = "ssh_fresh", "`ssh host sbatch`, new connection each"

    def __init__(self, laptop: Laptop) -> None:
        self.argv = laptop.ssh(RAW)

    def sample(self) -> Sample:
        return timed(
            lambda: parse_job_id(subprocess.run(self.argv, capture_output=True, text=True, check=True).stdout)
        )

    def close(self) -> None:
        pass


class ControlMaster:
    """OpenSSH multiplexing: one master connection, each job a new `ssh -S socket host sbatch`."""

    key, label = "ssh_controlmaster", "`ssh` over a ControlMaster connection"

    def __init__(self, laptop: Laptop) -> None:
        self.laptop = laptop
        self.control = laptop.root / "cm.sock"
        master = laptop.ssh(control=self.control)
        master[1:1] = ["-M", "-f", "-N", "-o", "ControlPersist=yes"]
        subprocess.run(master, check=True, capture_output=True, timeout=30)
        self.argv = laptop.ssh(RAW, control=self.control)

    def sample(self) -> Sample:
        return timed(
            lambda: parse_job_id(subprocess.run(self.argv, capture_output=True, text=True, check=True).stdout)
        )

    def close(self) -> None:
        argv = self.laptop.ssh(control=self.control)
        argv[1:1] = ["-O", "exit"]
        subprocess.run(argv, capture_output=True, check=False, timeout=30)


class ParamikoExec:
    """One open paramiko connection; each job an exec channel running sbatch."""

    key, label = "paramiko_exec", "paramiko exec on an open connection"

    def __init__(self, laptop: Laptop) -> None:
        self.client = paramiko.SSHClient()
        self.client.load_host_keys(str(laptop.known_hosts))
        self.client.connect(
            "127.0.0.1",
            port=laptop.port,
            username=laptop.node.name,
            key_filename=str(laptop.key),
            look_for_keys=False,
            allow_agent=False,
        )

    def _submit(self) -> str:
        _, stdout, _ = self.client.exec_command(RAW)
        output = stdout.read().decode()
        if stdout.channel.recv_exit_status() != 0:
            raise RuntimeError(f"sbatch over paramiko failed: {output}")
        return parse_job_id(output)

    def sample(self) -> Sample:
        return timed(self._submit)

    def close(self) -> None:
        self.client.close()


def held_job(name: str, **slurm: object) -> object:
    from milex_common.model import Job, SlurmOptions

    return Job(name=name, script="true", slurm=SlurmOptions(extra={"hold": True}, **slurm))  # type: ignore[arg-type]


class MilexApi:
    """`milex.submit(job, machine=...)` in a warm process: tunnel up, agent running, modules imported."""

    key, label = "milex_api", "Milex Python API (warm)"

    def sample(self) -> Sample:
        import milex

        start = time.perf_counter()
        submission = milex.submit(held_job("api"), bundle="bench-api", machine=MACHINE)
        seconds = time.perf_counter() - start
        return Sample(seconds, [job.job_id for job in submission.jobs.values()])

    def close(self) -> None:
        pass


class MilexProtocol:
    """Diagnostic: one SubmitBundle request on a connection already open (no records, no connect).

    The connection is opened, untimed, before each sample: the cold method restarts the tunnel.
    """

    key, label = "milex_protocol", "Milex request on an open connection (diagnostic)"

    def sample(self) -> Sample:
        from milex.config.file import load_config
        from milex.machine.endpoint import connect
        from milex_common.model import Bundle
        from milex_common.protocol import SubmitBundle, Submitted

        machine = load_config().machine(MACHINE)
        bundle = Bundle(
            name="bench-proto", created=time.strftime("%Y%m%d%H%M%S"), jobs={"proto": held_job("proto")}
        )  # type: ignore[dict-item]
        keys = {"proto": f"{bundle.stem}/proto/{time.time_ns()}"}
        with connect(machine) as connection:
            start = time.perf_counter()
            reply = connection.request(
                SubmitBundle(bundle=bundle, settings=machine.settings, keys=keys), expect=Submitted
            )
            seconds = time.perf_counter() - start
        assert isinstance(reply, Submitted) and not reply.error, reply
        return Sample(seconds, [job.job_id for job in reply.jobs])

    def close(self) -> None:
        pass


class MilexRun:
    """`milex-run BUNDLE --machine cluster` from the shell: a new process each time, the tunnel warm."""

    key, label = "milex_run", "`milex-run` from the shell (warm tunnel, new process)"

    def __init__(self, laptop: Laptop) -> None:
        import milex
        from milex_common.model import SlurmOptions

        self.laptop = laptop
        milex.schedule(
            "true",
            bundle=CLI_BUNDLE,
            script_args={},
            job_name="cli",
            slurm=SlurmOptions(extra={"hold": True}),
        )
        self.argv = ["milex-run", CLI_BUNDLE, "--machine", MACHINE]

    def _run(self) -> str:
        output = self.laptop.milex(*self.argv).stdout
        return next(word for word in output.replace("(", " ").replace(")", " ").split() if word.isdigit())

    def sample(self) -> Sample:
        return timed(self._run)

    def close(self) -> None:
        pass


class MilexCold(MilexRun):
    """`milex-run` with no tunnel yet: SSH handshake, `milex-agent start` check, then the submission."""

    key, label = "milex_cold", "`milex-run`, no tunnel yet (cold)"

    def sample(self) -> Sample:
        self.laptop.milex("milex", "tunnel", "down", "--machine", MACHINE)
        return timed(self._run)
