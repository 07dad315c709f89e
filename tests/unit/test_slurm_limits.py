"""The user's limits in SLURM read from what SLURM 22.05 and 24.11 really print (slurm_captured/limits/,
see its README), and sbatch's refusals told apart: a limit on the user's jobs, or a bad job."""

from __future__ import annotations

from pathlib import Path

import pytest

from milex_agent.scheduler.base import Limits
from milex_agent.scheduler.local.scheduler import LocalScheduler
from milex_agent.scheduler.slurm import limits as slurm_limits
from milex_agent.scheduler.slurm.command import CommandResult
from milex_agent.scheduler.slurm.limits import config_values, limit_refusal, limits_from
from milex_agent.scheduler.slurm.scheduler import SlurmScheduler
from milex_common.errors import SchedulerError, SchedulerUnavailable

CAPTURES = Path(__file__).parent / "slurm_captured" / "limits"
VERSIONS = ("2205", "2411")
USER = "milex-login"
MAX_JOB_COUNT = "MaxJobCount=10000 of the cluster (all users' jobs)"
ASSOC = "MaxSubmitJobs=3 of user milex-login's association (account physics)"


def captured(version: str, name: str) -> str:
    return (CAPTURES / version / name).read_text()


def limits(
    version: str, assoc_mgr: str, qos_file: str = "sacctmgr_qos_none.txt", **job: str | None
) -> Limits:
    """The limits of the captures of `version`: its config, `assoc_mgr` and `qos_file` files."""
    return limits_from(
        config_values(captured(version, "scontrol_show_config.txt")),
        assoc_mgr=captured(version, assoc_mgr),
        sacctmgr_assoc=captured(version, "sacctmgr_assoc.txt"),
        sacctmgr_qos=captured(version, qos_file),
        user=USER,
        account=job.get("account") or "",
        qos=job.get("qos"),
    )


# ---- limit_refusal ---------------------------------------------------------------------------------

POLICY = "Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)"
LIMIT_REFUSALS = {  # capture: slurmctld's reason, which sbatch prints before the policy error
    "sbatch_assoc_max_submit": "AssocMaxSubmitJobLimit",
    "sbatch_array2_over_assoc_max_submit": "AssocMaxSubmitJobLimit",
    "sbatch_account_grp_submit": "AssocGrpSubmitJobsLimit",
    "sbatch_qos_max_submit_pu": "QOSMaxSubmitJobPerUserLimit",
    "sbatch_qos_max_submit_pa": "MaxSubmitJobsPerAccount",
}
OTHER_REFUSALS = (
    "sbatch_array_too_big",  # MaxArraySize: the job must change (be split), waiting will not help
    "sbatch_array_index_too_big",
    "sbatch_bad_account",
    "sbatch_bad_partition",
    "sbatch_bad_qos",
    "sbatch_bad_memory",
)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", LIMIT_REFUSALS)
def test_a_full_queue_is_a_limit_refusal(version: str, name: str) -> None:
    assert captured(version, f"{name}.rc").strip() == "1"
    message = captured(version, f"{name}.stderr")
    reason = LIMIT_REFUSALS[name]
    assert limit_refusal(message) == f"the cluster's limit on jobs in its queue ({reason}: {POLICY})"


def test_a_size_or_time_limit_is_no_limit_refusal() -> None:
    """The same policy error after another reason (a QOS with DenyOnLimit refusing a job too long or
    too big): the job must change, no waiting lifts it."""
    message = (
        f"sbatch: error: QOSMaxWallDurationPerJobLimit\nsbatch: error: Batch job submission failed: {POLICY}"
    )
    assert limit_refusal(message) is None
    # Without slurmctld's reason, the policy error is taken for the submit limit it names first.
    assert limit_refusal(f"sbatch: error: Batch job submission failed: {POLICY}") == (
        f"the cluster's limit on jobs in its queue ({POLICY})"
    )


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", OTHER_REFUSALS)
def test_a_bad_job_is_no_limit_refusal(version: str, name: str) -> None:
    assert captured(version, f"{name}.rc").strip() == "1"
    assert limit_refusal(captured(version, f"{name}.stderr")) is None


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", ["sbatch_max_job_count_first", "sbatch_max_job_count"])
def test_a_full_controller_is_a_limit_refusal(version: str, name: str) -> None:
    """MaxJobCount: sbatch's retries, cut short (`_first`, by timeout) or to their end."""
    assert limit_refusal(captured(version, f"{name}.stderr")) == (
        "the cluster's limit on jobs in its queue (MaxJobCount: Slurm temporarily unable to accept job, "
        "Resource temporarily unavailable)"
    )


def test_a_limit_refusal_is_found_in_the_submit_error() -> None:
    """The agent's SubmitError carries sbatch's message after its own words."""
    message = "sbatch refused job.sh: " + captured("2411", "sbatch_assoc_max_submit.stderr")
    expected = f"the cluster's limit on jobs in its queue (AssocMaxSubmitJobLimit: {POLICY})"
    assert limit_refusal(message) == expected
    size = f"sbatch refused job.sh: sbatch: error: QOSMaxWallDurationPerJobLimit\nsbatch: error: {POLICY}"
    assert limit_refusal(size) is None
    assert limit_refusal("sbatch refused job.sh: exit status 1") is None


# ---- limits_from over the captures ---------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_without_limits_only_max_job_count_caps(version: str) -> None:
    assert limits(version, "assoc_mgr_none.txt") == Limits(
        max_submitted=10000, max_array_size=1000, held_by=MAX_JOB_COUNT
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_the_association_max_submit_jobs(version: str) -> None:
    found = limits(version, "assoc_mgr_max_submit_full.txt")
    assert found == Limits(max_submitted=3, max_array_size=1000, held_by=ASSOC)
    assert limits(version, "assoc_mgr_max_submit_full.txt", account="physics") == found
    # The user's other association has no limit of its own.
    assert limits(version, "assoc_mgr_max_submit_full.txt", account="chemistry").held_by == MAX_JOB_COUNT


@pytest.mark.parametrize("version", VERSIONS)
def test_an_account_grp_submit_jobs(version: str) -> None:
    found = limits(version, "assoc_mgr_grp_submit.txt")
    assert (found.max_submitted, found.held_by) == (
        1,
        "GrpSubmitJobs=1 of account physics (jobs of all its users)",
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_the_qos_per_user_limit(version: str) -> None:
    found = limits(version, "assoc_mgr_qos_max_submit_pu.txt", qos_file="sacctmgr_qos_max_submit_pu.txt")
    assert (found.max_submitted, found.held_by) == (1, "MaxSubmitJobsPerUser=1 of QOS normal")
    # Another QOS than the default has no such limit.
    other = limits(version, "assoc_mgr_qos_max_submit_pu.txt", "sacctmgr_qos_max_submit_pu.txt", qos="high")
    assert other.held_by == MAX_JOB_COUNT


@pytest.mark.parametrize("version", VERSIONS)
def test_the_qos_per_account_and_group_limits(version: str) -> None:
    found = limits(version, "assoc_mgr_qos_max_submit_pa.txt", qos_file="sacctmgr_qos_max_submit_pa.txt")
    assert (found.max_submitted, found.held_by) == (
        1,
        "MaxSubmitJobsPerAccount=1 of QOS normal (account physics)",
    )


def test_a_qos_limit_replaces_the_association_limit_of_its_kind() -> None:
    """acct_policy.c: with a QOS's MaxSubmitJobsPerUser set, the association's MaxSubmitJobs is not
    looked at, even when smaller; a QOS's GrpSubmitJobs likewise replaces the associations'."""
    assoc_mgr = captured("2411", "assoc_mgr_max_submit_full.txt")
    qos = "normal|5||\n"
    config = config_values(captured("2411", "scontrol_show_config.txt"))
    found = limits_from(config, assoc_mgr=assoc_mgr, sacctmgr_qos=qos, user=USER)
    assert (found.max_submitted, found.held_by) == (5, "MaxSubmitJobsPerUser=5 of QOS normal")
    grp = captured("2411", "assoc_mgr_grp_submit.txt")
    found = limits_from(config, assoc_mgr=grp, sacctmgr_qos="normal|||7\n", user=USER)
    assert (found.max_submitted, found.held_by) == (
        7,
        "GrpSubmitJobs=7 of QOS normal (jobs of all its users)",
    )


def test_the_default_qos() -> None:
    """What SLURM takes for a job without --qos: the association's default, its only QOS, `normal`."""
    assert slurm_limits.default_qos("physics||high|high,normal\n", "physics") == "high"
    assert slurm_limits.default_qos("physics|||low\n", "physics") == "low"
    assert slurm_limits.default_qos("physics|||low,normal\n", "physics") == "normal"
    assert slurm_limits.default_qos("", "physics") == "normal"


def test_without_enforced_limits_no_association_is_read() -> None:
    """AccountingStorageEnforce without `limits`: slurmctld enforces no MaxSubmitJobs."""
    config = config_values(captured("2411", "scontrol_show_config.txt"))
    assert slurm_limits.enforces_limits(config)
    config["AccountingStorageEnforce"] = "associations"
    assert not slurm_limits.enforces_limits(config)


def test_what_the_user_may_not_read_is_unknown() -> None:
    """PrivateData: nothing shown of the associations means no limit known from them."""
    config = config_values(captured("2205", "scontrol_show_config.txt"))
    del config["MaxJobCount"]
    assert limits_from(config, user=USER) == Limits(max_array_size=1000)


# ---- read_limits through the one gateway -------------------------------------------------------------


class Commands:
    """Answers the commands read_limits runs with the 24.11 captures, as run_command would; an
    `answers` entry replaces a command's (returncode, stdout, stderr)."""

    def __init__(self, **answers: tuple[int, str, str]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], *, timeout: float = 60.0, stdin: str | None = None) -> CommandResult:
        self.calls.append(argv)
        if argv[0] == "scontrol":
            key = "config" if argv[2] == "config" else "scontrol"
        else:
            key = "qos" if "qos" in argv else "assoc"
        files = {
            "config": "scontrol_show_config.txt",
            "scontrol": "assoc_mgr_max_submit_full.txt",
            "assoc": "sacctmgr_assoc.txt",
            "qos": "sacctmgr_qos_none.txt",
        }
        returncode, stdout, stderr = self.answers.get(key, (0, captured("2411", files[key]), ""))
        return CommandResult(tuple(argv), returncode, stdout, stderr)


def test_slurm_scheduler_reads_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    commands = Commands()
    monkeypatch.setattr(slurm_limits, "run_command", commands)
    monkeypatch.setattr(slurm_limits.getpass, "getuser", lambda: USER)
    assert SlurmScheduler().limits("", None) == Limits(max_submitted=3, max_array_size=1000, held_by=ASSOC)
    assert commands.calls[1] == ["scontrol", "show", "assoc_mgr", f"users={USER}", "flags=assoc"]


def test_a_private_association_is_unknown_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    denied = (1, "", "slurm_load_assoc_mgr_info error: Access/permission denied\n")
    monkeypatch.setattr(slurm_limits, "run_command", Commands(scontrol=denied))
    found = slurm_limits.read_limits("", None, user=USER)
    assert found == Limits(max_submitted=10000, max_array_size=1000, held_by=MAX_JOB_COUNT)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ((1, "", "slurm_load_ctl_conf error: Unable to contact slurm controller (connect failure)"),
         SchedulerUnavailable),
        ((1, "", "scontrol: error: something else"), SchedulerError),
    ],
)  # fmt: skip
def test_a_failed_command_is_an_error(
    monkeypatch: pytest.MonkeyPatch, answer: tuple[int, str, str], error: type[Exception]
) -> None:
    monkeypatch.setattr(slurm_limits, "run_command", Commands(config=answer))
    with pytest.raises(error, match="scontrol show config failed"):
        slurm_limits.read_limits("", None, user=USER)


def test_the_local_scheduler_has_no_limits(tmp_path: Path) -> None:
    assert LocalScheduler(tmp_path).limits("", None) == Limits()
