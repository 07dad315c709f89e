"""Jump hosts for real: the laptop reaches cluster1's login node only through two bastions of
deploy/bastion/ (hosts of their own: namespace, sshd, host key), and every hop asks a second factor
after the key, a TOTP code checked by pam_google_authenticator. The test types the codes as the
user's authenticator app shows them: computed from the hop's secret, each used once."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from milex.machine.ssh.errors import AuthError, TunnelError, UnknownHostError
from milex.machine.ssh.session import SshSession
from tests.e2e.clusters import LoginNode, read_env
from tests.e2e.conftest import BIN, REMOTE, MilexHome, use_login_node
from tests.e2e.sshd import Terminal, generate_key

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.parametrize("login_node", ["cluster1"], indirect=True),  # the cluster behind the bastions
]

REPO = Path(__file__).resolve().parents[2]
STATE = Path("/var/run/milex-test-bastion")
ALIAS = "cluster1-mfa"  # the laptop's name for the login node behind the bastions
HOPS = ("bastion-a", "bastion-b", ALIAS)  # who asks for a code, in the order they ask
CODE_PROMPT = "Verification code:"
ACCEPTED = "Accepted keyboard-interactive/pam for milex-login"
# The hops accept the codes of 30 time steps (15 minutes) either side of now (deploy/bastion/up.sh's
# WINDOW_SIZE 61), each once: the test keeps a margin from the edges.
SKEW = 25

# Runs a command as if typed on the terminal argv[1] (which becomes the controlling one).
ON_A_TERMINAL = """
import os, sys
tty = os.open(sys.argv[1], os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(tty, fd)
os.execv(sys.argv[2], sys.argv[2:])
"""


def totp(secret: str, step: int) -> str:
    """RFC 6238's code (SHA-1, 6 digits) for time step `step`: what an authenticator app shows."""
    digest = hmac.new(base64.b32decode(secret), struct.pack(">Q", step), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    return f"{(struct.unpack('>I', digest[offset : offset + 4])[0] & 0x7FFFFFFF) % 1_000_000:06d}"


@dataclass
class Bastions:
    """The bastions as deploy/bastion/up.sh made them, and the administrator's view of each hop."""

    env: dict[str, str]
    node: LoginNode
    given: dict[str, set[int]] = field(default_factory=dict)

    def secret_file(self, hop: str) -> str:
        """The hop's google-authenticator file: its secret, then the time steps already used."""
        if hop == ALIAS:
            return self.node.exec("cat", self.env["MILEX_BASTION_LOGIN_TOTP"]).stdout
        return Path(self.env[f"MILEX_BASTION_{hop[-1].upper()}_TOTP"]).read_text()

    def code(self, hop: str) -> str:
        """A code `hop` accepts and has not taken yet (each code is good once): of the earliest time step
        within SKEW of now that neither the server nor this test has used."""
        lines = self.secret_file(hop).splitlines()
        used = {
            int(word) for line in lines if line.startswith('" DISALLOW_REUSE') for word in line.split()[2:]
        }
        used |= self.given.setdefault(hop, set())
        now = int(time.time()) // 30
        step = next(step for step in range(now - SKEW, now + SKEW + 1) if step not in used)
        self.given[hop].add(step)
        return totp(lines[0].strip(), step)

    def prompt(self, asked: list[str]) -> Callable[[str, bool], str]:
        """A prompt that answers each hop's code question as the user would; records who asked."""

        def answer(text: str, echo: bool) -> str:
            assert CODE_PROMPT in text, text
            hop = text.split("@", 1)[1].split(")", 1)[0]
            asked.append(hop)
            return self.code(hop)

        return answer

    def sshd_log(self, hop: str) -> str:
        if hop == ALIAS:
            return self.node.exec("cat", "/var/log/milex-login-mfa.log").stdout
        return Path(self.env[f"MILEX_BASTION_{hop[-1].upper()}_LOG"]).read_text()

    def listener_pid(self, hop: str) -> int:
        return int((STATE / hop[-1] / "sshd.pid").read_text())


def bastion_script(script: str) -> None:
    done = subprocess.run([str(REPO / "deploy" / "bastion" / script)], capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"deploy/bastion/{script} failed:\n{done.stderr}", pytrace=False)


@pytest.fixture(scope="session")
def bastions(login_node: LoginNode) -> Bastions:
    """The bastions in front of cluster1's login node, started by deploy/bastion/up.sh if need be."""
    bastion_script("up.sh")
    return Bastions(read_env(STATE / "bastion.env"), login_node)


@pytest.fixture
def mfa_laptop(laptop: MilexHome, bastions: Bastions, monkeypatch: pytest.MonkeyPatch) -> Iterator[MilexHome]:
    """The laptop, its machine REMOTE the login node behind both bastions, as a user configures it:
    ProxyJump in ~/.ssh/config, every host key in known_hosts. This process runs in its environment.
    Afterwards the agent the test started is stopped by the administrator: `milex agent stop` opens
    an SSH connection of its own, which would want codes no one types."""
    ssh = Path(laptop.env["HOME"]) / ".ssh"
    key = bastions.node.identity
    jump = "    ProxyJump bastion-a,bastion-b\n"
    hosts = {"bastion-a": (bastions.env["MILEX_BASTION_A"], ""),
             "bastion-b": (bastions.env["MILEX_BASTION_B"], ""),
             ALIAS: (bastions.env["MILEX_BASTION_LOGIN_ADDR"], jump)}  # fmt: skip
    with (ssh / "config").open("a") as config:
        for alias, (address, extra) in hosts.items():
            config.write(f"Host {alias}\n    HostName {address}\n    User milex-login\n"
                         f"    IdentityFile {key}\n    IdentitiesOnly yes\n{extra}")  # fmt: skip
    with (ssh / "known_hosts").open("a") as known:
        known.write((STATE / "known_hosts").read_text())
    use_login_node(laptop, ALIAS)
    for name, value in laptop.env.items():
        monkeypatch.setenv(name, value)
    yield laptop
    agent = bastions.node.agent_info()
    if agent is not None:
        bastions.node.kill(agent["pid"], "TERM")
    bastions.node.sh("crontab -r 2>/dev/null || true")  # the watchdog a deploy installed


def tunnel_up_on_a_terminal(laptop: MilexHome, bastions: Bastions) -> str:
    """`milex tunnel up` typed on a terminal, each hop's code typed when asked; what it showed."""
    terminal = Terminal(
        ON_A_TERMINAL, str(BIN / "milex"), "tunnel", "up", "--machine", REMOTE, env=laptop.env
    )
    try:
        for hop in HOPS:
            terminal.expect(f"(milex-login@{hop}) {CODE_PROMPT}")
            terminal.type(bastions.code(hop))
        address = bastions.env["MILEX_BASTION_LOGIN_ADDR"]
        shown = terminal.expect(f"tunnel to milex-login@{address}:22 (login node login1) up")
    finally:
        terminal.close()
    assert terminal.process.returncode == 0, terminal.output
    return shown


def log_since(bastions: Bastions, marks: dict[str, int]) -> dict[str, str]:
    return {hop: bastions.sshd_log(hop)[mark:] for hop, mark in marks.items()}


def no_terminal(laptop: MilexHome, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A Milex command run with no terminal at all (from cron, a script, an IDE): a session of its own."""
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, env=laptop.env,
                          cwd=laptop.root, timeout=timeout, start_new_session=True, check=False)  # fmt: skip


def ssh_banner(address: str) -> bytes:
    """What answers on `address` port 22 within 3 s: an sshd's banner, or b"" (no route, refused, or,
    behind a network that accepts every connection, silence)."""
    try:
        with socket.create_connection((address, 22), timeout=3) as sock:
            sock.settimeout(3)
            return sock.recv(64)
    except OSError:
        return b""


def test_the_login_node_behind_the_bastions_is_out_of_the_laptops_reach(bastions: Bastions) -> None:
    for address in (bastions.env["MILEX_BASTION_B"], bastions.env["MILEX_BASTION_LOGIN_ADDR"]):
        assert ssh_banner(address) == b"", address
    assert ssh_banner(bastions.env["MILEX_BASTION_A"]).startswith(b"SSH-2.0-OpenSSH")  # the first hop answers


def test_a_bundle_runs_through_two_jump_hosts_with_one_code_per_hop_once(
    mfa_laptop: MilexHome, bastions: Bastions
) -> None:
    marks = {hop: len(bastions.sshd_log(hop)) for hop in HOPS}
    shown = tunnel_up_on_a_terminal(mfa_laptop, bastions)
    assert shown.count(CODE_PROMPT) == 3, shown

    # Several commands while the tunnel stays up: none asks anything (they have no terminal to).
    mfa_laptop.milex(
        "milex-schedule", "milex-example", "--name", "behind", "--message", "through the bastions"
    )
    ran = mfa_laptop.milex("milex-run", "behind", "--machine", REMOTE, "--wait", "--timeout", "90")
    assert "COMPLETED" in ran.stdout, ran.stdout
    for _ in range(3):
        assert "COMPLETED" in no_terminal(mfa_laptop, "milex", "status", "behind", "--machine", REMOTE).stdout
    # Commands run on the machine itself go over the tunnel's session too: no new login. A deploy,
    # its wheels uploaded over SFTP on that connection, and `agent stop` each end with the tunnel.
    deploy = ("milex", "agent", "deploy", "--machine", REMOTE, "--wheel")
    deployed = no_terminal(mfa_laptop, *deploy, timeout=180)
    assert "installed on" in deployed.stdout, deployed.stdout + deployed.stderr
    tunnel_up_on_a_terminal(mfa_laptop, bastions)
    stopped = no_terminal(mfa_laptop, "milex", "agent", "stop", "--machine", REMOTE)
    assert "stopped agent" in stopped.stdout, stopped.stdout + stopped.stderr

    logs = log_since(bastions, marks)
    assert [logs[hop].count(ACCEPTED) for hop in HOPS] == [2, 2, 2], logs  # the two `tunnel up`s
    assert not any("Failed keyboard-interactive" in log for log in logs.values()), logs


def test_a_code_is_never_replayed_and_a_command_without_terminal_says_how_to_open_the_tunnel(
    mfa_laptop: MilexHome, bastions: Bastions
) -> None:
    tunnel_up_on_a_terminal(mfa_laptop, bastions)
    marks = {hop: len(bastions.sshd_log(hop)) for hop in HOPS}
    # The link drops (the first bastion loses our connections): reconnecting needs new codes, and the
    # detached tunnel has no one to ask; it must not try the codes it was given before.
    for pid in connections(bastions.listener_pid("bastion-a")):
        os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    failed = no_terminal(mfa_laptop, "milex", "status", "--machine", REMOTE)
    took = time.monotonic() - started

    # The tunnel stops as it finds the link needs a code (or the command finds it stopped already).
    assert f"the server asks '(milex-login@bastion-a) {CODE_PROMPT}'" in failed.stderr, failed.stderr
    assert f"`milex tunnel up --machine {REMOTE}`" in failed.stderr, failed.stderr
    assert took < 30, took
    logs = log_since(bastions, marks)
    assert not any("Failed keyboard-interactive" in log for log in logs.values()), logs
    # From a terminal, the tunnel opens again with fresh codes.
    tunnel_up_on_a_terminal(mfa_laptop, bastions)


def connections(listener: int) -> list[int]:
    """The processes under an sshd listener: its connections, and what runs in them."""
    table = [line.split() for line in subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True,
                                                     text=True, check=True).stdout.splitlines()]  # fmt: skip
    found = {listener}
    while grown := {int(pid) for pid, ppid in table if int(ppid) in found} - found:
        found |= grown
    return sorted(found - {listener})


def session(bastions: Bastions, asked: list[str]) -> SshSession:
    return SshSession(ALIAS, prompt=bastions.prompt(asked), timeout=10)


def test_an_unknown_jump_host_key_names_the_hop_and_how_to_trust_it_through_the_first(
    mfa_laptop: MilexHome, bastions: Bastions
) -> None:
    known_hosts = Path(mfa_laptop.env["HOME"]) / ".ssh" / "known_hosts"
    address = bastions.env["MILEX_BASTION_B"]
    known_hosts.write_text("".join(line for line in known_hosts.read_text().splitlines(True)
                                   if not line.startswith(f"{address} ")))  # fmt: skip
    asked: list[str] = []
    with pytest.raises(UnknownHostError) as caught, session(bastions, asked) as behind:
        behind.connect()
    message = str(caught.value)
    assert f"{address} (the jump host bastion-b (milex-login@{address}:22) of {ALIAS}) is not" in message
    assert "ssh -J bastion-a bastion-b\n" in message
    assert f"ssh bastion-a ssh-keyscan -p 22 {address} >> ~/.ssh/known_hosts" in message
    assert asked == ["bastion-a"]  # the first hop asked its code; the second was refused before any
    # The advice holds: ssh-keyscan run on bastion-a gives the line that lets the connection through.
    scan = ["ip", "netns", "exec", "milex-bastion-a", "ssh-keyscan", "-p", "22", address]
    with known_hosts.open("a") as known:
        known.write(subprocess.run(scan, capture_output=True, text=True, check=True, timeout=30).stdout)
    with session(bastions, asked) as behind:
        assert behind.exec("hostname")[1].strip() == "login1"


def test_an_unreachable_jump_host_is_named_with_the_hop_that_cannot_reach_it(
    mfa_laptop: MilexHome, bastions: Bastions
) -> None:
    os.kill(bastions.listener_pid("bastion-b"), signal.SIGTERM)  # bastion-b's sshd is gone
    try:
        with pytest.raises(TunnelError) as caught, session(bastions, []) as behind:
            behind.connect()
    finally:
        bastion_script("up.sh")  # starts it again
    message = str(caught.value)
    address = bastions.env["MILEX_BASTION_B"]
    assert message.startswith(
        f"the jump host bastion-a (milex-login@{bastions.env['MILEX_BASTION_A']}:22) of {ALIAS} cannot reach "
        f"the jump host bastion-b (milex-login@{address}:22) of {ALIAS}: Connect failed."
    ), message
    assert f"{address} port 22 is right (Host bastion-b in ~/.ssh/config" in message


def test_a_jump_host_that_refuses_the_login_is_named(
    mfa_laptop: MilexHome, bastions: Bastions, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger"
    generate_key(stranger)
    config = Path(mfa_laptop.env["HOME"]) / ".ssh" / "config"
    entry = f"Host bastion-b\n    HostName {bastions.env['MILEX_BASTION_B']}\n    User milex-login\n"
    key = f"    IdentityFile {bastions.node.identity}\n"
    assert entry + key in config.read_text()
    config.write_text(config.read_text().replace(entry + key, f"{entry}    IdentityFile {stranger}\n"))
    with pytest.raises(AuthError) as caught, session(bastions, []) as behind:
        behind.connect()
    message = str(caught.value)
    address = bastions.env["MILEX_BASTION_B"]
    assert message.startswith(
        f"jump host bastion-b (milex-login@{address}:22) of {ALIAS} refused every key"
    ), message
    assert str(stranger) in message
