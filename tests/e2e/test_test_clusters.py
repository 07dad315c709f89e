"""The namespaced test clusters of deploy/cluster/ keep what deploy/README.md promises test code."""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import wait_until

REPO = Path(__file__).resolve().parents[2]
EXEC = REPO / "deploy" / "cluster" / "exec.sh"
# Each cluster: its SLURM release and its login node's hostname (deploy/cluster/clusters/NAME.env).
CLUSTERS = {"cluster1": ("22.05.", "login1"), "cluster2": ("24.11.", "login2")}
LOGIN_ENV_KEYS = {
    "MILEX_CLUSTER_NAME",
    "MILEX_LOGIN_HOST",
    "MILEX_LOGIN_PORT",
    "MILEX_LOGIN_USER",
    "MILEX_LOGIN_OTHER_USER",
    "MILEX_LOGIN_IDENTITY",
    "MILEX_LOGIN_KNOWN_HOSTS",
    "MILEX_CLUSTER_ACCOUNTS",
    "MILEX_SLURM_VERSION",
    "MILEX_INIT_PID",
}
WRONG_ACCOUNT = (
    "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified"
)


def state_dir(cluster: str) -> Path:
    return Path(f"/var/run/milex-test-{cluster}")


def login_env(cluster: str) -> dict[str, str]:
    """The cluster's login.env as the shell reads it; a cluster that is not up fails the test."""
    path = state_dir(cluster) / "login.env"
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: start the cluster with `deploy/cluster/up.sh {cluster}`.", pytrace=False
        )
    pairs = (shlex.split(line)[0].partition("=") for line in path.read_text().splitlines() if line.strip())
    return {key: value for key, _, value in pairs}


def ssh(cluster: str, command: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    """`command` on the login node, over ssh with the cluster's written ssh_config."""
    config = state_dir(cluster) / "ssh_config"
    argv = [
        "ssh",
        "-F",
        str(config),
        "-o",
        "BatchMode=yes",
        *(["-l", user] if user else []),
        f"{cluster}-login",
    ]
    return subprocess.run([*argv, command], capture_output=True, text=True, timeout=60, check=False)


def run_in(
    cluster: str, *argv: str, user: str | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    command = [str(EXEC), cluster, *(["--user", user] if user else []), *argv]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_login_env_and_ssh_config_reach_the_login_node_as_both_users(cluster: str) -> None:
    release, hostname = CLUSTERS[cluster]
    env = login_env(cluster)
    assert set(env) == LOGIN_ENV_KEYS
    assert env["MILEX_CLUSTER_NAME"] == cluster
    assert env["MILEX_SLURM_VERSION"].startswith(release)
    assert Path(f"/proc/{env['MILEX_INIT_PID']}/comm").read_text().startswith("milex-c")
    assert Path(env["MILEX_LOGIN_IDENTITY"]).is_file()
    for user in (env["MILEX_LOGIN_USER"], env["MILEX_LOGIN_OTHER_USER"]):
        done = ssh(cluster, "echo $(hostname) $(id -un) $HOME", user=user)
        assert (done.returncode, done.stdout.split()) == (0, [hostname, user, f"/home/{user}"]), done.stderr


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_exec_runs_as_root_or_as_a_login_user_and_passes_stdin_and_status(cluster: str) -> None:
    assert run_in(cluster, "id", "-u").stdout == "0\n"
    done = run_in(
        cluster, "sh", "-c", 'echo "$USER $HOME $(pwd)"; cat; exit 7', user="milex-login", stdin="hi\n"
    )
    assert (done.returncode, done.stdout) == (7, "milex-login /home/milex-login /home/milex-login\nhi\n")
    assert run_in(cluster, "true", user="milex-nobody").returncode != 0


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_an_account_the_user_lacks_is_refused_by_slurm(cluster: str) -> None:
    refused = ssh(cluster, "sbatch --parsable --account=nosuch --wrap true")
    assert (refused.returncode, refused.stderr.strip()) == (1, WRONG_ACCOUNT)
    other = ssh(cluster, "sbatch --parsable --account=physics --wrap true", user="milex-other")
    assert (other.returncode, other.stderr.strip()) == (1, WRONG_ACCOUNT)
    accepted = ssh(
        cluster, "sbatch --parsable --account=chemistry --output=/dev/null --wrap true", user="milex-other"
    )
    assert accepted.returncode == 0 and accepted.stdout.strip().isdigit(), accepted.stderr


def test_a_finished_job_leaves_squeue_within_a_minute_and_sacct_still_reports_it() -> None:
    """MinJobAge=30: slurmctld forgets a job 30 to 60 s after its end (both clusters at once)."""
    jobs = {}
    for cluster in CLUSTERS:
        submitted = ssh(cluster, "sbatch --parsable --output=/dev/null --wrap true")
        assert submitted.returncode == 0, submitted.stderr
        jobs[cluster] = submitted.stdout.strip()

    def sacct_state(cluster: str) -> str:
        return run_in(cluster, "sacct", "-n", "-X", "-P", "-j", jobs[cluster], "-o", "State").stdout.strip()

    def in_squeue(cluster: str) -> bool:
        return jobs[cluster] in run_in(cluster, "squeue", "-h", "-t", "all", "-o", "%i").stdout.split()

    for cluster in CLUSTERS:
        wait_until(
            lambda c=cluster: sacct_state(c) == "COMPLETED", timeout=30, what=f"{cluster}'s job to end"
        )
    ended = time.monotonic()
    assert all(in_squeue(cluster) for cluster in CLUSTERS)  # kept for MinJobAge after the end
    for cluster in CLUSTERS:
        wait_until(lambda c=cluster: not in_squeue(c), timeout=75, what=f"{cluster} to forget its job")
        assert sacct_state(cluster) == "COMPLETED"
    assert time.monotonic() - ended > 25
