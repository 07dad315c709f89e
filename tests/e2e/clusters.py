"""The namespaced test clusters of deploy/cluster/ as the remote end-to-end tests see them.

Each cluster's login node is a host of its own (network, mount, UTS and PID namespaces): the laptop
reaches it only over SSH. The test itself, as the cluster's administrator, looks inside with
`deploy/cluster/exec.sh` (to read a login node's file, signal a daemon, start a second sshd): that is
the oracle, never the path under test.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from milex_agent.scheduler.slurm.limits import association_chain, records

REPO = Path(__file__).resolve().parents[2]
EXEC = REPO / "deploy" / "cluster" / "exec.sh"
SECOND_LOGIN = REPO / "deploy" / "cluster" / "second-login.sh"
CLUSTERS = ("cluster1", "cluster2")


def state_dir(name: str) -> Path:
    return Path(f"/var/run/milex-test-{name}")


def read_env(path: Path) -> dict[str, str]:
    """A sourceable KEY=VALUE file, as the shell would read it."""
    return {
        key: value
        for key, _, value in (
            shlex.split(line)[0].partition("=") for line in path.read_text().splitlines() if line.strip()
        )
    }


@dataclass(frozen=True)
class LoginNode:
    """A cluster's login node: how the laptop reaches it, and the administrator's view inside it."""

    cluster: str
    host: str
    port: int
    user: str
    identity: Path
    known_hosts: Path
    slurm_version: str
    second: bool = False  # the cluster's second login node (second-login.sh), on the node's /home

    @classmethod
    def of(cls, cluster: str) -> LoginNode:
        """The running cluster's login node; a cluster that is not up fails the run, never skips it."""
        login_env = state_dir(cluster) / "login.env"
        if not login_env.is_file():
            pytest.fail(
                f"test cluster {cluster} is not running ({login_env} is missing); start it with "
                f"`deploy/cluster/up.sh {cluster}`.",
                pytrace=False,
            )
        env = read_env(login_env)
        node = cls(
            cluster=env["MILEX_CLUSTER_NAME"],
            host=env["MILEX_LOGIN_HOST"],
            port=int(env["MILEX_LOGIN_PORT"]),
            user=env["MILEX_LOGIN_USER"],
            identity=Path(env["MILEX_LOGIN_IDENTITY"]),
            known_hosts=Path(env["MILEX_LOGIN_KNOWN_HOSTS"]),
            slurm_version=env["MILEX_SLURM_VERSION"],
        )
        ping = node.exec("scontrol", "ping", check=False)
        if "is UP" not in ping.stdout:
            pytest.fail(
                f"test cluster {cluster}'s slurmctld does not answer ({ping.stdout.strip()!r}); "
                f"restart it with `deploy/cluster/up.sh {cluster}`.",
                pytrace=False,
            )
        return node

    def second_login(self) -> LoginNode:
        """The cluster's second login node: its own host, sshd and host key; the same user, key and home."""
        login_env = state_dir(self.cluster) / "second" / "login.env"
        if not login_env.is_file():
            start = f"deploy/cluster/second-login.sh up {self.cluster}"
            pytest.fail(f"{self.cluster}'s second login node is not running ({login_env} is missing); "
                        f"start it with `{start}`.", pytrace=False)  # fmt: skip
        env = read_env(login_env)
        return dataclasses.replace(
            self, host=env["MILEX_LOGIN_HOST"], known_hosts=Path(env["MILEX_LOGIN_KNOWN_HOSTS"]), second=True
        )

    @property
    def alias(self) -> str:
        """The laptop's `~/.ssh/config` name for this login node."""
        return f"{self.cluster}-login" + ("-second" if self.second else "")

    @property
    def host_key(self) -> str:
        """Its host key, as known_hosts has it after the address: `TYPE BASE64`."""
        return " ".join(self.known_hosts.read_text().split()[1:3])

    @property
    def home(self) -> str:
        return f"/home/{self.user}"

    def ssh_config(self, alias: str | None = None, port: int | None = None) -> str:
        """A `~/.ssh/config` entry for this login node, as a user writes one."""
        return (
            f"Host {alias or self.alias}\n    HostName {self.host}\n    User {self.user}\n"
            f"    Port {port or self.port}\n    IdentityFile {self.identity}\n"
        )

    def known_hosts_lines(self, *ports: int) -> str:
        """known_hosts lines for the login node's real address, on its port 22 and on `ports`."""
        key = self.known_hosts.read_text().split(None, 1)[1]
        return "".join(
            f"{self.host if port == 22 else f'[{self.host}]:{port}'} {key}" for port in (22, *ports)
        )

    # ---- the administrator's view --------------------------------------------------------------

    def exec(
        self,
        *argv: str,
        user: str | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the cluster, as root or as `user`."""
        runner = [str(SECOND_LOGIN), "exec"] if self.second else [str(EXEC)]
        command = [*runner, self.cluster, *(["--user", user] if user else []), *argv]
        done = subprocess.run(
            command, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"in {self.cluster}: {shlex.join(argv)} exited {done.returncode}\n"
                f"{done.stdout}\n{done.stderr}"
            )
        return done

    def sh(self, script: str, *, check: bool = True) -> str:
        """`script` run by bash as the login user, in their home; its standard output."""
        return self.exec("bash", "-c", f"cd && {script}", user=self.user, check=check).stdout

    def write(self, path: str, text: str) -> None:
        """Write a file of the login user's (a relative path is under their home)."""
        self.exec("bash", "-c", f"cd && cat > {shlex.quote(path)}", user=self.user, input=text)

    def install_wheel(self, wheel: Path, venv: str) -> None:
        """Install `wheel` into the login user's `venv` with no index, copied over as a user would (scp)."""
        ssh_config = str(state_dir(self.cluster) / "ssh_config")
        scp = ["scp", "-q", "-F", ssh_config, str(wheel), f"{self.alias}:{wheel.name}"]
        subprocess.run(scp, check=True, capture_output=True, timeout=120)
        self.sh(f"{venv}/bin/pip install -q --no-index --force-reinstall {wheel.name} && rm {wheel.name}")

    @property
    def root(self) -> str:
        """Where the node's root is in its mount namespace (`init_pid`'s), which chroots into it."""
        return str(state_dir(self.cluster) / "merged")

    def init_pid(self) -> int:
        """The host's pid of the process 1 of the cluster's node, in its namespaces."""
        assert not self.second, "the second login node's namespaces are the node's copies"
        return int((state_dir(self.cluster) / "pids" / "init.pid").read_text())

    def exists(self, path: str) -> bool:
        return self.exec("test", "-e", path, user=self.user, check=False).returncode == 0

    def agent_info(self) -> dict[str, Any] | None:
        """The login user's running agent (`~/milex`), as the agent itself tells: None when none runs."""
        script = (
            "import msgspec; from milex_agent.daemon import read_info; "
            "from milex_common.agent_layout import agent_dir; "
            "info = read_info(agent_dir('~/milex')); "
            "print(msgspec.json.encode(info).decode() if info else 'null')"
        )
        return json.loads(self.sh(f"~/venv/bin/python -c {shlex.quote(script)}")) or None

    def kill(self, pid: int, signal: str = "KILL") -> None:
        """Signal a process of the login node (a pid as the login node sees it)."""
        self.exec("kill", f"-{signal}", str(pid))

    def pid_of(self, program: str) -> int:
        [pid] = self.exec("pidof", program).stdout.split()
        return int(pid)

    def comments(self) -> list[str]:
        """The comment (Milex's idempotency key) of each of the login user's jobs of the last hours,
        one per job (per array task): slurmctld's, and accounting's for those it has forgotten
        (a job waiting on a dependency reaches accounting only once eligible)."""
        sacct = ["sacct", "--noheader", "--parsable2", "--allocations", f"--user={self.user}",
                 "--starttime=now-6hours", "--format=JobID,Comment"]  # fmt: skip
        squeue = ["squeue", "--noheader", "--array", "--states=all", f"--user={self.user}",
                  "--Format=JobArrayID:0|,Comment:0"]  # fmt: skip
        jobs = dict(
            line.split("|", 1) for argv in (sacct, squeue) for line in self.exec(*argv).stdout.splitlines()
        )
        return [comment.strip() for comment in jobs.values() if comment.strip()]

    def slurm_state(self, job_id: str) -> str:
        argv = ["squeue", "--noheader", "--states=all", "--jobs", job_id, "--format=%T"]
        return self.exec(*argv, check=False).stdout.strip() or "GONE"

    # ---- the link between the laptop (this host) and the login node -----------------------------

    @property
    def veth(self) -> str:
        """The host's end of the veth pair to the login node (`VETH_HOST` of deploy/cluster/)."""
        return read_env(state_dir(self.cluster) / "names")["VETH_HOST"]

    def set_link(self, *, up: bool) -> None:
        """Set the host's end of the link up, or down: the login node is then cut off silently (no FIN,
        no RST, as under a closed lid), its own network (SLURM, the agent) untouched. Idempotent.
        The kernel drops the routes through a link that goes down (the second login node's, behind
        the node): they are kept in the cluster's state directory, and put back when it comes up."""
        kept = state_dir(self.cluster) / "routes-through-link.json"
        if not up:
            shown = subprocess.run(["ip", "-json", "route", "show", "dev", self.veth], check=True,
                                   capture_output=True, text=True, timeout=30).stdout  # fmt: skip
            routes = [route for route in json.loads(shown) if "gateway" in route]
            if routes:  # (none once the link is down already: what was kept stays)
                kept.write_text(json.dumps(routes))
        argv = ["ip", "link", "set", self.veth, "up" if up else "down"]
        subprocess.run(argv, check=True, capture_output=True, timeout=30)
        if up and kept.exists():
            for route in json.loads(kept.read_text()):
                put = ["ip", "route", "replace", route["dst"], "via", route["gateway"], "dev", self.veth]
                subprocess.run(put, check=True, capture_output=True, timeout=30)
            kept.unlink()

    # ---- limits on the login user's jobs, set by the administrator -------------------------------

    @contextmanager
    def limit(
        self,
        *,
        account: str = "physics",
        qos: str = "normal",
        max_submit_jobs: int | None = None,
        grp_submit_jobs: int | None = None,
        qos_max_submit_jobs_per_user: int | None = None,
    ) -> Iterator[None]:
        """Within the block, the login user's jobs are limited as given (`sacctmgr -i modify`):
        `max_submit_jobs` on their association with `account`, `grp_submit_jobs` on `account` (all its
        users), `qos_max_submit_jobs_per_user` on `qos`; each is in force in slurmctld when the block
        starts, and its earlier value is restored (and in force) when it ends, however it ends."""
        values = (max_submit_jobs, grp_submit_jobs, qos_max_submit_jobs_per_user)
        wanted = [
            (setting, value)
            for setting, value in zip(_limit_settings(account, qos), values, strict=True)
            if value is not None
        ]
        earlier = [(setting, self._limit_now(setting)) for setting, _ in wanted]
        self._recount(account)
        try:
            self._set_limits(wanted)
            yield
        finally:
            self._set_limits(earlier)

    def lift_limits(self) -> None:
        """Take off every limit `limit` sets on the test accounts and QOS: the test world's starting
        point, whatever a run killed within a `limit` block left behind (its cluster keeps its database)."""
        settings = [
            setting for account in ("physics", "chemistry") for setting in _limit_settings(account, "normal")
        ]
        self._set_limits(
            [(setting, None) for setting in dict.fromkeys(settings) if self._limit_now(setting) is not None]
        )

    def _limit_now(self, setting: _AssocLimit) -> int | None:
        """The limit as slurmdbd has it (None: none)."""
        if setting.entity == "qos":
            argv = ["sacctmgr", "-n", "-P", "show", "qos", setting.name, f"format={setting.column}"]
        else:
            user = self.user if setting.entity == "user" else "''"
            argv = ["sacctmgr", "-n", "-P", "show", "assoc", f"account={setting.name}", f"user={user}",
                    f"format={setting.column}"]  # fmt: skip
        [value] = self.exec(*argv).stdout.split() or [""]
        return int(value) if value else None

    def _set_limits(self, limits: list[tuple[_AssocLimit, int | None]]) -> None:
        """Set every one of `limits` in slurmdbd, then wait until slurmctld enforces each."""
        where = {
            "user": lambda name: ["user", self.user, "where", f"account={name}"],
            "account": lambda name: ["account", name],
            "qos": lambda name: ["qos", name],
        }
        for setting, value in limits:
            new = f"{setting.field}={-1 if value is None else value}"
            self.exec("sacctmgr", "-i", "modify", *where[setting.entity](setting.name), "set", new)
        for setting, value in limits:
            deadline = time.monotonic() + 30
            while (seen := self._limit_in_slurmctld(setting)) != value:
                assert time.monotonic() < deadline, f"slurmctld shows {setting.field}={seen}, not {value}"
                time.sleep(0.2)

    def _limit_in_slurmctld(self, setting: _AssocLimit) -> int | None:
        """The limit as slurmctld enforces it (scontrol show assoc_mgr)."""
        if setting.entity == "qos":  # shown only under a user of the QOS: be one, with a held job
            shown = self._qos_user_limit(setting)
            if shown is None:
                held = ["sbatch", "--parsable", "--hold", "-o/dev/null", f"--qos={setting.name}", "--wrap=:"]
                job = self.exec(*held, user=self.user).stdout.strip()
                self.exec("scancel", job, user=self.user)
                shown = self._qos_user_limit(setting)
            assert shown is not None, f"slurmctld shows no {setting.field} of QOS {setting.name}"
            return None if shown.startswith("N(") else int(shown.split("(")[0])
        text = self._assoc_mgr()
        chain = association_chain(list(records(text, "ClusterName=")), self.user, setting.name)
        assert chain, f"slurmctld shows no association of {self.user} with account {setting.name}:\n{text}"
        shown = chain[0 if setting.entity == "user" else 1].get(setting.field, "")
        return int(shown.split("(")[0]) if shown[:1].isdigit() else None

    def _qos_user_limit(self, setting: _AssocLimit) -> str | None:
        """`MaxSubmitJobsPU=N(0)`'s value for the login user under QOS `setting.name`, if shown: after
        ` milex-login(1000)={` (24.11) or ` 1000={` (22.05)."""
        uid = self.exec("id", "-u", self.user).stdout.strip()
        text = self.exec("scontrol", "-o", "show", "assoc_mgr", f"users={self.user}", "flags=qos",
                         f"qos={setting.name}").stdout  # fmt: skip
        entry = re.compile(rf"(?:{re.escape(self.user)}\({uid}\)| {uid})=\{{[^}}]*?MaxSubmitJobsPU=(\S+)")
        for line in text.splitlines():
            if line.startswith(f"QOS={setting.name}(") and (found := entry.search(line)):
                return found.group(1)
        return None

    def _recount(self, account: str) -> None:
        """Make slurmctld's count of the login user's jobs under `account` (what a submit limit is held
        against) the jobs it holds for them, before a test sets a limit.

        After a full run of the suite the count stays above the jobs the user has (1 on each cluster
        after one run, 2 after two, with none of theirs left, on 22.05 and 24.11 alike; which job leaves
        it behind is not known yet): a limit of N then refuses the Nth job. `scontrol reconfigure`
        makes slurmctld count its jobs again."""
        counted, held = self._submit_count(account), self._jobs_held(account)
        if counted <= held:
            return
        self.exec("scontrol", "reconfigure")
        deadline = time.monotonic() + 60
        while (counted := self._submit_count(account)) != (held := self._jobs_held(account)):
            assert time.monotonic() < deadline, (
                f"slurmctld counts {counted} jobs of {self.user} under {account}, who has {held}, "
                "even after `scontrol reconfigure`"
            )
            time.sleep(0.5)

    def _submit_count(self, account: str) -> int:
        """The jobs slurmctld counts against the login user's submit limit under `account`."""
        chain = association_chain(list(records(self._assoc_mgr(), "ClusterName=")), self.user, account)
        assert chain, f"slurmctld shows no association of {self.user} with account {account}"
        shown = chain[0].get("GrpSubmitJobs", "")  # N(2) or 50(2): the limit, then the count
        return int(shown.partition("(")[2].rstrip(")") or 0)

    def _jobs_held(self, account: str) -> int:
        """The login user's jobs under `account` that count against a submit limit (each array task)."""
        argv = [
            "squeue",
            "-h",
            "-r",
            f"--user={self.user}",
            f"--account={account}",
            "-t",
            "PD,R,CG,S,CF",
            "-o",
            "%i",
        ]
        return len(self.exec(*argv, check=False).stdout.split())

    def _assoc_mgr(self) -> str:
        return self.exec("scontrol", "show", "assoc_mgr", f"users={self.user}", "flags=assoc").stdout

    # ---- a second sshd, which fault tests kill ---------------------------------------------------

    def sshd_up(self, port: int, *options: str) -> None:
        """Start an sshd of the login node's on `port` (with `-o` options), unless one runs there."""
        if self.exists(self._sshd_pidfile(port)) and self._sshd_pid(port) is not None:
            return
        flags = [f"-o{option}" for option in ("PidFile=" + self._sshd_pidfile(port), *options)]
        self.exec("/usr/sbin/sshd", "-p", str(port), *flags)
        deadline = time.monotonic() + 10  # sshd may return before it listens; its pid file says it does
        while self._sshd_pid(port) is None:
            assert time.monotonic() < deadline, f"sshd on port {port} of {self.cluster} did not start"
            time.sleep(0.1)

    def sshd_kill(self, port: int, *, sessions_only: bool = False) -> None:
        """Kill the sshd on `port` and everything under it, as a crash of the server would; with
        `sessions_only`, only its connections (and what runs in them), as a dropped link would."""
        listener = self._sshd_pid(port)
        if listener is None:
            return
        table = [line.split() for line in self.exec("ps", "-eo", "pid=,ppid=").stdout.splitlines()]
        doomed = {listener}
        while grown := {int(pid) for pid, ppid in table if int(ppid) in doomed} - doomed:
            doomed |= grown
        if sessions_only:
            doomed.discard(listener)
        if doomed:
            self.exec("kill", "-KILL", *map(str, doomed), check=False)

    def _sshd_pid(self, port: int) -> int | None:
        pid = self.exec("cat", self._sshd_pidfile(port), check=False).stdout.strip()
        alive = pid and self.exec("kill", "-0", pid, check=False).returncode == 0
        return int(pid) if alive else None

    @staticmethod
    def _sshd_pidfile(port: int) -> str:
        return f"/run/milex-sshd-{port}.pid"


@dataclass(frozen=True)
class _AssocLimit:
    """A limit `sacctmgr modify` sets: on the login user's association with account `name` (`user`),
    on account `name` (`account`) or on QOS `name` (`qos`); `column` is sacctmgr's name for it."""

    entity: str
    name: str
    field: str
    column: str


def _limit_settings(account: str, qos: str) -> tuple[_AssocLimit, _AssocLimit, _AssocLimit]:
    """The limits `LoginNode.limit` sets: the user's MaxSubmitJobs with `account`, the account's
    GrpSubmitJobs, and the QOS's MaxSubmitJobsPerUser."""
    return (
        _AssocLimit("user", account, "MaxSubmitJobs", "MaxSubmit"),
        _AssocLimit("account", account, "GrpSubmitJobs", "GrpSubmit"),
        _AssocLimit("qos", qos, "MaxSubmitJobsPerUser", "MaxSubmitPU"),
    )
