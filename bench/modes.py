"""How much each section measures: the full run, and the quick smoke run that keeps the harness alive."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Mode:
    """Repetitions and sizes of every section."""

    name: str
    latency_reps: dict[str, int]  # at RTT 0 (loopback, no relay)
    rtt_reps: dict[str, int]  # at each RTT above 0 (through bench/relay.py)
    bundle: int  # jobs of each Milex bundle (independent, chain)
    raw_loop: int  # jobs of each raw sbatch loop on the node
    ssh_loop: int  # jobs of the fresh `ssh host sbatch` loop
    clients: int  # watching clients in the load section
    window: float  # seconds the load section counts SLURM commands
    load_interval: float  # the agent's (fixed) poll interval while counting
    status_waves: list[list[float]]  # job durations (s) of each wave of the status-latency section
    lone_jobs: list[float] = field(default_factory=list)  # durations of jobs run alone (poll back-off)
    rtts_ms: tuple[int, ...] = (0, 20, 80)  # round-trip times the latency section runs at
    footprint_jobs: int = 10_000
    footprint_settle: float = 3.0  # seconds after the first answer before measuring (the first poll ran)
    footprint_cpu_window: float = 10.0  # seconds over which the idle agent's CPU time is measured
    poll_sizes: tuple[int, ...] = (1000, 2000, 4000)  # jobs of the status-query cost measurement
    startup_runs: int = 20
    queue_jobs: int = 1000  # jobs of the bundle through the agent's queue (section 7)
    queue_cap: int = 100  # the machine's max_submitted, and the CPUs of the node meanwhile
    queue_length: float = 2.0  # seconds each of those jobs runs
    # Scale (sections 8 and 9): bundle sizes, watching clients, tracked jobs.
    scale_bundles: tuple[int, ...] = (1000, 3000, 10_000)  # jobs of each bundle, independent and chained
    scale_clients: tuple[int, ...] = (1, 10, 50)  # watching clients, one count after the other
    scale_window: float = 10.0  # seconds each client count is watched
    tracking_sizes: tuple[int, ...] = (10_000, 30_000, 100_000)  # unfinished jobs in the journal
    tracking_interval: float = 1.0  # the agent's fixed poll interval meanwhile
    tracking_window: float = 10.0  # seconds its polls are counted
    tracking_polls: int = 3  # polls timed in-process for each size

    @property
    def expected_jobs(self) -> int:
        """Roughly how many SLURM job records a run creates (they count against MaxJobCount)."""
        return sum(self.jobs_by_section().values())

    def jobs_by_section(self) -> dict[str, int]:
        """Roughly how many SLURM job records each section creates (`load` needs throughput's bundle)."""
        return {
            "latency": sum(self.latency_reps.values())
            + self.latency_reps["milex_api"]
            + 16
            + (len(self.rtts_ms) - 1) * (sum(self.rtt_reps.values()) + 16),  # each RTT past the first
            "throughput": 2 * self.bundle + 2 * self.raw_loop + self.ssh_loop,
            "load": int(self.window / 0.2),  # its second window
            "status": sum(len(wave) for wave in self.status_waves) + len(self.lone_jobs),
            "queue": 3 * self.queue_jobs,  # through the queue, without a cap, all at once
            "scale": 2 * sum(self.scale_bundles) + len(self.scale_clients),  # one job timed per count
        }


def _reps(fast: int, ssh: int, cli: int, cold: int) -> dict[str, int]:
    return {
        "raw_sbatch": fast,
        "ssh_fresh": ssh,
        "ssh_controlmaster": fast,
        "paramiko_exec": fast,
        "milex_api": fast,
        "milex_protocol": fast,
        "milex_run": cli,
        "milex_cold": cold,
    }


FULL = Mode(
    name="full",
    latency_reps=_reps(fast=80, ssh=50, cli=40, cold=12),
    rtt_reps=_reps(fast=40, ssh=30, cli=30, cold=10) | {"raw_sbatch": 0},  # the floor does not cross the link
    bundle=1000,
    raw_loop=500,
    ssh_loop=100,
    clients=10,
    window=20.0,
    load_interval=1.0,
    status_waves=[[1.0 + 1.5 * i for i in range(8)] for _ in range(3)],
    lone_jobs=[20.0],
)

QUICK = Mode(
    name="quick",
    latency_reps=_reps(fast=2, ssh=1, cli=1, cold=1),
    rtt_reps=_reps(fast=1, ssh=1, cli=1, cold=1) | {"raw_sbatch": 0},
    rtts_ms=(0, 20),
    bundle=20,
    raw_loop=10,
    ssh_loop=3,
    clients=3,
    window=2.0,
    load_interval=0.5,
    status_waves=[[0.5, 1.0]],
    footprint_jobs=300,
    footprint_settle=0.5,
    footprint_cpu_window=0.3,
    poll_sizes=(100, 200),
    startup_runs=3,
    queue_jobs=40,
    queue_cap=8,  # the test cluster's default node: no restart
    queue_length=1.0,
    scale_bundles=(10, 30),
    scale_clients=(1, 3),
    scale_window=2.0,
    tracking_sizes=(100, 300),
    tracking_interval=0.5,
    tracking_window=1.0,
    tracking_polls=2,
)

MODES = {mode.name: mode for mode in (FULL, QUICK)}
