"""sbatch's refusals as SlurmScheduler.submit raises them, from what sbatch printed on each version:
a limit on the user's jobs is LimitReached (the agent's queue keeps the job), anything else a SubmitError."""

from __future__ import annotations

from pathlib import Path

import pytest

from milex_agent.scheduler.base import SubmitCall
from milex_agent.scheduler.slurm import scheduler as slurm
from milex_agent.scheduler.slurm.command import CommandResult
from milex_common.errors import LimitReached, SchedulerUnavailable, SubmitError

CAPTURED = Path(__file__).parent / "slurm_captured" / "limits"
LIMITS = (
    "assoc_max_submit",
    "qos_max_submit_pu",
    "qos_max_submit_pa",
    "account_grp_submit",
    "array2_over_assoc_max_submit",
)
BAD_JOBS = ("bad_account", "bad_partition", "bad_qos", "bad_memory", "array_index_too_big")


def refusing(monkeypatch: pytest.MonkeyPatch, version: str, name: str) -> None:
    base = CAPTURED / version / f"sbatch_{name}"
    result = CommandResult(
        ("sbatch",), int(Path(f"{base}.rc").read_text()), "", Path(f"{base}.stderr").read_text()
    )
    monkeypatch.setattr(slurm.Sbatch, "start", lambda *_: lambda: result)


@pytest.mark.parametrize("version", ["2205", "2411"])
@pytest.mark.parametrize(
    ("name", "is_limit"), [*((name, True) for name in LIMITS), *((name, False) for name in BAD_JOBS)]
)
def test_a_submit_limit_is_limit_reached_and_a_bad_job_a_plain_refusal(
    monkeypatch, version, name, is_limit
) -> None:
    refusing(monkeypatch, version, name)
    with pytest.raises(SubmitError) as refusal:
        slurm.SlurmScheduler().submit(SubmitCall(Path("job.sh"), text="#!/bin/bash\n"))
    assert isinstance(refusal.value, LimitReached) is is_limit
    assert "job.sh" in str(refusal.value)
    if is_limit:
        assert "job submit limit" in str(refusal.value)


@pytest.mark.parametrize(
    "stderr",
    [
        "sbatch: error: Batch job submission failed: Connection reset by peer",
        "sbatch: error: Batch job submission failed: Transport endpoint is not connected",
        "sbatch: error: Batch job submission failed: Broken pipe",
    ],
)
def test_a_call_cut_off_by_a_dying_controller_is_in_doubt_not_refused(monkeypatch, stderr) -> None:
    """slurmctld killed mid-call: the job may have been accepted, so it is looked up, not given up."""
    result = CommandResult(("sbatch",), 1, "", stderr + "\n")
    monkeypatch.setattr(slurm.Sbatch, "start", lambda *_: lambda: result)
    with pytest.raises(SchedulerUnavailable):
        slurm.SlurmScheduler().submit(SubmitCall(Path("job.sh"), text="#!/bin/bash\n"))
