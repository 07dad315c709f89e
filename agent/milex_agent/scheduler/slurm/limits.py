"""How many jobs SLURM lets this user have at once (their limits, as a normal user can read them), and
which of sbatch's refusals are such a limit rather than a bad job.

Where the limits come from (SLURM 22.05 and 24.11, src/slurmctld/acct_policy.c, job_mgr.c):

- `scontrol show config`: `MaxArraySize` (array indices must be below it), `MaxJobCount` (every user's
  jobs in slurmctld together, finished ones it still remembers included), and `AccountingStorageEnforce`:
  without `limits` (or `safe`) no association or QOS limit is enforced, and none is read.
- `scontrol show assoc_mgr users=USER flags=assoc`: slurmctld's own copy of the associations it
  enforces, the user's and every parent account's up to `root`, each limit with its use, e.g.
  `MaxSubmitJobs=50(12)`, `GrpSubmitJobs=N(0)`. The user's association
  already holds the `MaxSubmitJobs` it inherits from its accounts (slurmdbd propagates them); the
  `GrpSubmitJobs` of each parent account counts all that account's users' jobs.
- `sacctmgr show assoc` for the association's default QOS and QOS list (what SLURM takes for a job
  without `--qos`: the default QOS, else the only QOS allowed, else `normal`), and `sacctmgr show
  qos` for a QOS's `MaxSubmitPU`, `MaxSubmitPA` and `GrpSubmit` (assoc_mgr prints the first two only
  under a user or account that used the QOS).
- Where a QOS sets a limit of a kind, SLURM does not look at the association's limit of that kind: a
  QOS's `MaxSubmitJobsPerUser` or `PerAccount` replaces the association's `MaxSubmitJobs`, a QOS's
  `GrpSubmitJobs` replaces the associations' `GrpSubmitJobs`. `max_submitted` is the smallest of the
  limits that remain.

How SLURM counts toward MaxSubmitJobs (all these limits count the same `used_submit_jobs`), read in
its source and measured on both test clusters (tests/unit/slurm_captured/limits/README.md): a job
counts from its submission until it ends (pending, held, running; it stops counting as it turns
COMPLETING, when slurmctld logs its completion), and an array counts one per task, pending tasks
included (a 2-task array needs room for 2, and is refused whole otherwise). A job that does not fit is
refused at submission; it never waits in SLURM's queue for room. MaxJobCount counts the same way,
but every user's jobs, and finished ones until slurmctld forgets them (MinJobAge).

What sbatch prints when one is reached (tests/unit/slurm_captured/limits/, both versions alike): a
line with slurmctld's reason (`AssocMaxSubmitJobLimit`, `AssocGrpSubmitJobsLimit`,
`QOSMaxSubmitJobPerUserLimit`, `MaxSubmitJobsPerAccount`, `QOSGrpSubmitJobsLimit`), then `Batch job
submission failed: Job violates accounting/QOS policy (job submit limit, user's size and/or time
limits)` (ESLURM_ACCOUNTING_POLICY, exit 1). The same error after another reason (a QOS with
DenyOnLimit and a job too long or too big) is a bad job. An array past MaxArraySize is `Invalid job
array specification`, the words of a malformed array: a bad job too (the agent splits arrays by
max_array_size), not a limit to wait for.

At MaxJobCount slurmctld answers EAGAIN, and sbatch does not fail: it prints `Slurm temporarily unable
to accept job, sleeping and retrying` and tries again 15 times, sleeping 1, 2, ... 15 s (120 s in
all), before `Batch job submission failed: Resource temporarily unavailable` (sbatch.c). Measured with
`MaxJobCount=60` on both versions: while slurmctld still remembered finished jobs, a waiting sbatch got
in after 21 s, as it forgot them; with 60 held jobs in, sbatch exited 1 after 120 s with those words
(both lines are on its stderr, the first also when it gets in). So the agent's sbatch gets in late,
or is killed at its own timeout (command.py, 60 s) and SlurmScheduler.submit raises
SchedulerUnavailable: a submission of unknown outcome, which the agent looks up by its comment.
limit_refusal still names MaxJobCount when given sbatch's words for it.
"""

from __future__ import annotations

import getpass
import re
from collections.abc import Iterator
from dataclasses import dataclass

from milex_agent.scheduler.base import Limits
from milex_agent.scheduler.slurm.command import run_command
from milex_common.errors import SchedulerError, SchedulerUnavailable

# sbatch's words for ESLURM_ACCOUNTING_POLICY (slurm_errno.c), both versions.
_POLICY_REFUSAL = "job violates accounting/qos policy (job submit limit"
# What sbatch prints as it waits for room under MaxJobCount (slurmctld's EAGAIN), and its final words.
_FULL_CONTROLLER = "slurm temporarily unable to accept job"
_FULL_CONTROLLER_WORDS = "Slurm temporarily unable to accept job, Resource temporarily unavailable"
# What sbatch prints when the user may not read the association manager (PrivateData).
_DENIED = ("access/permission denied", "permission denied", "not authorized")
# slurmctld's reasons for refusing a job over a submit limit (job_state_reason_string), as sbatch
# prints them on the line before the policy error; the same on 22.05 and 24.11.
SUBMIT_LIMIT_REASONS = frozenset({
    "AssocMaxSubmitJobLimit",  # the association's MaxSubmitJobs
    "AssocGrpSubmitJobsLimit",  # an account's GrpSubmitJobs
    "QOSMaxSubmitJobPerUserLimit",  # the QOS's MaxSubmitJobsPerUser
    "MaxSubmitJobsPerAccount",  # the QOS's MaxSubmitJobsPerAccount
    "QOSGrpSubmitJobsLimit",  # the QOS's GrpSubmitJobs
})  # fmt: skip
# A reason name alone on its line (after `sbatch: error: `, and the agent's own words before that).
_REASON = re.compile(r"(?:^|error: )([A-Z][A-Za-z]+)$")
_USE = re.compile(r"^(\d+)\(")  # `50(12)`: the limit, then its use; `N(0)` or `` when none


@dataclass(frozen=True)
class Cap:
    """One limit on the user's jobs in SLURM: its value and its name, for the user."""

    value: int
    held_by: str

    @property
    def kind(self) -> str:
        """Which limit it is (`MaxSubmitJobs`, `GrpSubmitJobs`, ...)."""
        return self.held_by.partition("=")[0]


def limit_refusal(message: str) -> str | None:
    """When sbatch's refusal `message` is a limit on how many jobs the user may have (not a bad job),
    the limit in words for the user; None for any other refusal."""
    lines = [line.strip().removeprefix("sbatch: error: ") for line in message.splitlines()]
    if any(_FULL_CONTROLLER in line.lower() for line in lines):
        return f"the cluster's limit on jobs in its queue (MaxJobCount: {_FULL_CONTROLLER_WORDS})"
    policy = next((line for line in lines if _POLICY_REFUSAL in line.lower()), None)
    if policy is None:
        return None
    policy = policy.removeprefix("Batch job submission failed: ")
    # slurmctld's reason comes on the line before: a submit limit, or a size or time limit of the job
    # (with a QOS's DenyOnLimit), which no waiting lifts.
    reasons = [found.group(1) for line in lines if (found := _REASON.search(line))]
    if reasons and reasons[0] not in SUBMIT_LIMIT_REASONS:
        return None
    reason = f"{reasons[0]}: " if reasons else ""
    return f"the cluster's limit on jobs in its queue ({reason}{policy})"


def read_limits(account: str, qos: str | None, user: str | None = None) -> Limits:
    """The limits that apply to a job of `user` (this process's) under `account` ('' = their default)
    and `qos` (None = the association's default), read with a few SLURM commands."""
    user = user or getpass.getuser()
    config = config_values(_output(["scontrol", "show", "config"]))
    if not enforces_limits(config):
        return limits_from(config)
    assoc_mgr = _output(["scontrol", "show", "assoc_mgr", f"users={user}", "flags=assoc"], private=True)
    assocs = _output(
        ["sacctmgr", "-n", "-P", "show", "assoc", f"user={user}", "format=Account,Partition,DefaultQOS,QOS"],
        private=True,
    )
    qos_table = _output(
        ["sacctmgr", "-n", "-P", "show", "qos", "format=Name,MaxSubmitPU,MaxSubmitPA,GrpSubmit"], private=True
    )
    return limits_from(
        config, assoc_mgr=assoc_mgr, sacctmgr_assoc=assocs, sacctmgr_qos=qos_table, user=user,
        account=account, qos=qos,
    )  # fmt: skip


def limits_from(
    config: dict[str, str],
    *,
    assoc_mgr: str = "",
    sacctmgr_assoc: str = "",
    sacctmgr_qos: str = "",
    user: str = "",
    account: str = "",
    qos: str | None = None,
) -> Limits:
    """The limits these commands' outputs give, for a job of `user` under `account` and `qos`."""
    caps = [cap for cap in _config_caps(config) if cap is not None]
    associations = list(records(assoc_mgr, "ClusterName="))
    chain = association_chain(associations, user, account)
    if chain:
        account = chain[0]["Account"]
        qos = qos or default_qos(sacctmgr_assoc, account)
        qos_caps = list(qos_limits(sacctmgr_qos, qos, account))
        caps += qos_caps + association_limits(chain, user, {cap.kind for cap in qos_caps})
    binding = min(caps, key=lambda cap: cap.value, default=None)
    array_size = _number(config.get("MaxArraySize", ""))
    return Limits(
        max_submitted=binding.value if binding else None,
        max_array_size=array_size,
        held_by=binding.held_by if binding else "",
    )


def config_values(text: str) -> dict[str, str]:
    """`scontrol show config`'s `Key = value` lines as a dict."""
    return {
        key.strip(): value.strip()
        for key, sep, value in (line.partition("=") for line in text.splitlines())
        if sep
    }


def enforces_limits(config: dict[str, str]) -> bool:
    """Whether slurmctld enforces association and QOS limits (AccountingStorageEnforce)."""
    enforce = config.get("AccountingStorageEnforce", "").lower()
    return "limits" in enforce or "safe" in enforce


def records(text: str, first_key: str) -> Iterator[dict[str, str]]:
    """The records of `scontrol show assoc_mgr` that begin with `first_key` (`ClusterName=` for
    associations, `QOS=` for QOSs), each as its `Key=value` fields; a QOS's per-account and per-user
    limits (after `Account Limits`) are left out."""
    fields: dict[str, str] | None = None
    for line in text.splitlines():
        if line.startswith(first_key):
            if fields is not None:
                yield fields
            fields = {}
        elif not line.startswith((" ", "\t")) or line.strip().startswith(("Account Limits", "User Limits")):
            if fields is not None:
                yield fields
            fields = None
        if fields is not None:
            fields.update(token.partition("=")[::2] for token in line.split() if "=" in token)
    if fields is not None:
        yield fields


def association_chain(associations: list[dict[str, str]], user: str, account: str) -> list[dict[str, str]]:
    """The user's association for `account` (their default for ''), then its account's and every
    parent's up to root; [] when slurmctld shows none (the user may not see them)."""
    mine = [a for a in associations if a.get("UserName", "").split("(")[0] == user and not a.get("Partition")]
    found = [a for a in mine if a["Account"] == account] if account else [
        a for a in mine if a.get("DefAssoc") == "Yes"
    ]  # fmt: skip
    if not found:
        return []
    accounts = {a["Account"]: a for a in associations if not a.get("UserName")}
    chain = [found[0]]
    name = found[0]["Account"]
    while name in accounts and len(chain) <= len(accounts):
        chain.append(accounts[name])
        name = accounts[name].get("ParentAccount", "").split("(")[0]
    return chain


def association_limits(chain: list[dict[str, str]], user: str, replaced: set[str]) -> list[Cap]:
    """The user's association's MaxSubmitJobs, and every association's GrpSubmitJobs up the chain,
    except the kinds a QOS limit replaces."""
    own = chain[0]
    whose = f"user {user}'s association (account {own['Account']})"
    caps = []
    value = _limit(own.get("MaxSubmitJobs", ""))
    if value is not None and not replaced & {"MaxSubmitJobsPerUser", "MaxSubmitJobsPerAccount"}:
        caps.append(Cap(value, f"MaxSubmitJobs={value} of {whose}"))
    if "GrpSubmitJobs" not in replaced:
        for association in chain:
            value = _limit(association.get("GrpSubmitJobs", ""))
            if value is not None:
                of = (
                    whose
                    if association is own
                    else f"account {association['Account']} (jobs of all its users)"
                )
                caps.append(Cap(value, f"GrpSubmitJobs={value} of {of}"))
    return caps


def default_qos(sacctmgr_assoc: str, account: str) -> str:
    """The QOS SLURM gives a job of the association for `account` that names none
    (assoc_mgr_get_default_qos_info): its default QOS, else its only QOS, else `normal`."""
    for line in sacctmgr_assoc.splitlines():
        fields = line.split("|")
        if len(fields) >= 4 and fields[0] == account and not fields[1]:
            allowed = [name for name in fields[3].split(",") if name]
            return fields[2] or (allowed[0] if len(allowed) == 1 else "normal")
    return "normal"


def qos_limits(sacctmgr_qos: str, qos: str, account: str) -> Iterator[Cap]:
    """The QOS `qos`'s limits on submitted jobs: per user, per account, and of all its jobs."""
    for line in sacctmgr_qos.splitlines():
        name, per_user, per_account, group = [*line.split("|"), "", "", ""][:4]
        if name != qos:
            continue
        if per_user:
            yield Cap(int(per_user), f"MaxSubmitJobsPerUser={per_user} of QOS {qos}")
        if per_account:
            whose = f"QOS {qos} (account {account})"
            yield Cap(int(per_account), f"MaxSubmitJobsPerAccount={per_account} of {whose}")
        if group:
            yield Cap(int(group), f"GrpSubmitJobs={group} of QOS {qos} (jobs of all its users)")


def _config_caps(config: dict[str, str]) -> Iterator[Cap | None]:
    count = _number(config.get("MaxJobCount", ""))
    yield Cap(count, f"MaxJobCount={count} of the cluster (all users' jobs)") if count else None


def _limit(field: str) -> int | None:
    """A limit from assoc_mgr's `50(12)`; None for `N(0)` or an empty field (no limit)."""
    match = _USE.match(field)
    return int(match.group(1)) if match else None


def _number(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _output(argv: list[str], *, private: bool = False) -> str:
    """What `argv` printed; '' when `private` and the user may not read it (PrivateData)."""
    result = run_command(argv)
    if result.returncode == 0:
        return result.stdout
    if private and any(marker in result.message.lower() for marker in _DENIED):
        return ""
    error = SchedulerUnavailable if result.unanswered else SchedulerError
    command = " ".join([word for word in argv if not word.startswith("-")][:3])  # `sacctmgr show qos`
    raise error(f"{command} failed: {result.message}; is SLURM up (try `{command}` yourself)?")
