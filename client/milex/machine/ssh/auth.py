"""Reaching and logging in to an SSH server: `~/.ssh/config`, the socket, known_hosts, and authentication."""

from __future__ import annotations

import getpass
import logging
import os
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko

from milex.machine.ssh.errors import (
    AuthError,
    HostKeyChangedError,
    LinkDown,
    PromptUnavailable,
    TunnelError,
    UnknownHostError,
)

log = logging.getLogger("milex.machine.ssh.session")

# A prompt shows `text` and returns the user's answer; `echo` is False for secrets.
Prompt = Callable[[str, bool], str]

DEFAULT_KEY_FILES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
DEFAULT_KNOWN_HOSTS = ("~/.ssh/known_hosts",)
GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts",)
PASSPHRASE_ATTEMPTS = 3
KEEPALIVE_SECONDS = 15
AUTH_TIMEOUT = 120.0  # OpenSSH's default LoginGraceTime


@dataclass(frozen=True)
class SshTarget:
    """One SSH destination, resolved: the machine configuration first, then `~/.ssh/config`."""

    alias: str
    hostname: str
    port: int
    username: str
    key_files: tuple[str, ...] = ()
    known_hosts: tuple[str, ...] = DEFAULT_KNOWN_HOSTS
    host_key_alias: str | None = None
    proxy_jump: str | None = None
    proxy_command: str | None = None
    identities_only: bool = False
    jump_of: str = ""  # for a jump host: the destination it leads to (its alias)
    through: str = ""  # the ProxyJump hops it is reached through ("a,b"), none if reached directly

    @property
    def host_key_name(self) -> str:
        """The name known_hosts files it under (OpenSSH writes `[host]:port` for other ports than 22)."""
        host = self.host_key_alias or self.hostname
        return host if self.port == 22 else f"[{host}]:{self.port}"

    @property
    def keyscan_command(self) -> str:
        return f"ssh-keyscan -p {self.port} {self.hostname} >> ~/.ssh/known_hosts"

    @property
    def label(self) -> str:
        """How messages name it: `user@host:port`, and for a jump host, which destination's it is."""
        return f"jump host {self.alias} ({self}) of {self.jump_of}" if self.jump_of else str(self)

    @property
    def asker(self) -> str:
        """Who asks, shown before a server's question when there are several servers to tell apart."""
        return f"({self.username}@{self.alias}) " if self.jump_of or self.through else ""

    def trust_advice(self) -> str:
        """How to add its host key to known_hosts, ending in "and retry." `ssh-keyscan` connects
        directly, so for a host behind jump hosts it is OpenSSH through them, or keyscan run on the last."""
        if not self.through:
            return f"trust it with\n    {self.keyscan_command}\nand retry."
        before, _, last = self.through.rpartition(",")
        scan = f"ssh {f'-J {before} ' if before else ''}{last} ssh-keyscan -p {self.port} {self.hostname}"
        return (
            f"ssh-keyscan cannot reach it through {self.through}: connect once with OpenSSH,\n"
            f"    ssh -J {self.through} {self.alias}\n"
            "check that it shows the same fingerprint and answer yes (it adds the key to known_hosts); "
            f"or, if {last.rpartition('@')[2].partition(':')[0]} lets you run commands, run keyscan there:\n"
            f"    {scan} >> ~/.ssh/known_hosts\nand retry."
        )

    def __str__(self) -> str:
        return f"{self.username}@{self.hostname}:{self.port}"


def resolve_target(
    hostname: str,
    username: str | None = None,
    key_path: str | None = None,
    port: int | None = None,
    ssh_config: Path | None = None,
) -> SshTarget:
    """Resolve `hostname` (maybe an alias) through `ssh_config` (default `~/.ssh/config`)."""
    path = ssh_config or Path(os.path.expanduser("~/.ssh/config"))
    config = paramiko.SSHConfig.from_path(str(path)) if path.is_file() else paramiko.SSHConfig()
    options = config.lookup(hostname)
    key_files = [key_path] if key_path else []
    # Like OpenSSH, the default key files are tried only when no IdentityFile is configured.
    key_files += options.get("identityfile") or ([] if key_path else list(DEFAULT_KEY_FILES))
    known = options.get("userknownhostsfile", "").split() or list(DEFAULT_KNOWN_HOSTS)
    known += options.get("globalknownhostsfile", "").split() or list(GLOBAL_KNOWN_HOSTS)
    jump = options.get("proxyjump")
    return SshTarget(
        alias=hostname,
        hostname=options.get("hostname", hostname),
        port=port or int(options.get("port", 22)),
        username=username or options.get("user") or getpass.getuser(),
        key_files=tuple(os.path.expanduser(k) for k in dict.fromkeys(key_files)),
        known_hosts=tuple(os.path.expanduser(k) for k in known),
        host_key_alias=options.get("hostkeyalias"),
        proxy_jump=None if jump in (None, "none") else jump,
        proxy_command=options.get("proxycommand") if options.get("proxycommand") != "none" else None,
        identities_only=options.get("identitiesonly", "no").lower() == "yes",
    )


def load_known_hosts(target: SshTarget) -> paramiko.HostKeys:
    keys = paramiko.HostKeys()
    for path in target.known_hosts:
        if os.path.isfile(path):
            keys.load(path)
    return keys


def key_family(algorithm: str) -> str:
    """The known_hosts key type that a host key algorithm negotiates (`rsa-sha2-512` is an `ssh-rsa` key)."""
    algorithm = algorithm.removesuffix("-cert-v01@openssh.com")
    return "ssh-rsa" if algorithm.startswith("rsa-sha2-") else algorithm


def known_keys(keys: paramiko.HostKeys, name: str, kind: str) -> list[paramiko.PKey]:
    """Every key of type `kind` known_hosts lists for `name`: a name with several (login nodes behind
    one round-robin name, each with its own key) accepts any of them, as OpenSSH does. paramiko's
    lookup gives the first line's key of each type; removing it from the lookup shows the next."""
    found = keys.lookup(name)
    listed = []
    while found is not None and kind in found:
        listed.append(found[kind])
        del found[kind]  # from this lookup's view only, not from `keys`
    return listed


def check_host_key(target: SshTarget, keys: paramiko.HostKeys, server_key: paramiko.PKey) -> None:
    """Raise unless known_hosts holds `server_key` for `target`."""
    known = known_keys(keys, target.host_key_name, server_key.get_name())
    if not known:
        hop = f" (the {target.label})" if target.jump_of else ""
        raise UnknownHostError(
            f"{target.host_key_name}{hop} is not a known host: its {server_key.get_name()} key "
            f"{server_key.fingerprint} is in none of {', '.join(target.known_hosts)}. "
            f"If this is the machine you mean, {target.trust_advice()}"
        )
    if server_key not in known:
        hop = f" (the {target.label})" if target.jump_of else ""
        raise HostKeyChangedError(
            f"the host key of {target.host_key_name}{hop} has CHANGED (now {server_key.fingerprint}): "
            "someone may be intercepting the connection, or the machine was reinstalled. Ask its "
            f"administrators; once sure, run `ssh-keygen -R '{target.host_key_name}'`, then "
            f"{target.trust_advice()}"
        )


def connect_socket(
    target: SshTarget, timeout: float, *, reached_before: bool = False
) -> socket.socket | paramiko.ProxyCommand:
    """A connected socket to `target` (or its ProxyCommand), tuned for many small round trips.
    LinkDown when it cannot be reached: `reached_before`, the network is to blame, not the settings."""
    if target.proxy_command:
        return paramiko.ProxyCommand(target.proxy_command)
    try:
        sock = socket.create_connection((target.hostname, target.port), timeout=timeout)
    except OSError as error:
        where = f"the {target.label}: " if target.jump_of else ""
        check = (
            f"its HostName and Port in ~/.ssh/config (Host {target.alias})"
            if target.jump_of
            else "`hostname` and `port` in the Milex configuration (or ~/.ssh/config)"
        )
        hint = "" if reached_before else f" Check {check}."
        raise LinkDown(
            f"cannot reach {where}{target.hostname} port {target.port}: {error.strerror or error}.{hint}"
        ) from None
    # Without TCP_NODELAY, a small write waits behind an unacknowledged one until the peer's delayed
    # ACK: about 45 ms (measured). sshd's side of the connection is handled in session.py.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    return sock


def handshake(
    transport: paramiko.Transport, target: SshTarget, credentials: Credentials, timeout: float
) -> None:
    """Key exchange, host key check against known_hosts, then authentication."""
    known = load_known_hosts(target)
    entry = known.lookup(target.host_key_name)
    options = transport.get_security_options()
    # Like OpenSSH, prefer the key types known_hosts holds for the host, so that a known host is
    # never reported unknown only because the server offered another key type first.
    preferred = tuple(kind for kind in options.key_types if entry and key_family(kind) in entry)
    if preferred:
        options.key_types = preferred
    transport.auth_timeout = AUTH_TIMEOUT  # paramiko's 30 s is short for a person typing a 2FA code
    try:
        transport.start_client(timeout=timeout)
    except (paramiko.SSHException, EOFError, OSError) as error:
        raise TunnelError(f"SSH handshake with {target.label} failed: {error}") from None
    check_host_key(target, known, transport.get_remote_server_key())
    credentials.authenticate(transport, target)
    transport.set_keepalive(KEEPALIVE_SECONDS)


def tty_prompt(text: str, echo: bool) -> str:
    """Ask on the controlling terminal, so that prompts work while stdout is a pipe."""
    try:
        with open("/dev/tty", "rb+", buffering=0) as tty:  # unbuffered: a text-mode "r+" needs seeking
            if not echo:
                return getpass.getpass(text)
            tty.write(text.encode())
            return tty.readline().decode().rstrip("\n")
    except OSError:
        raise PromptUnavailable(
            f"the server asks {text.strip()!r} but there is no terminal to ask it on; "
            "run the command from a terminal."
        ) from None


# A keyboard-interactive answer is given again on a reconnection only if its prompt asks for a
# password: a one-time code (TOTP, a token, a push's passcode) is good once, a replayed one is refused,
# and refusals count towards the lock-out many sites impose. An unknown prompt is never replayed.
PASSWORD_PROMPT = re.compile(r"password|passphrase", re.IGNORECASE)
ONE_TIME_PROMPT = re.compile(r"code|token|otp|one.time|passcode|verif", re.IGNORECASE)


def reusable_answer(prompt: str) -> bool:
    """Whether the answer to `prompt` may be kept for reconnections (see PASSWORD_PROMPT)."""
    return bool(PASSWORD_PROMPT.search(prompt)) and not ONE_TIME_PROMPT.search(prompt)


class Credentials:
    """Keys and answers for authentication, asked once; keys and passwords (never one-time codes)
    are kept in memory for reconnections."""

    def __init__(self, prompt: Prompt = tty_prompt) -> None:
        self.prompt = prompt
        self._keys: dict[str, paramiko.PKey] = {}
        self._answers: dict[tuple[str, str], str] = {}  # (server, prompt) -> answer

    def authenticate(self, transport: paramiko.Transport, target: SshTarget) -> None:
        """Agent keys, then key files, then keyboard-interactive: the order of OpenSSH's `ssh`."""
        try:
            transport.auth_none(target.username)
            return
        except paramiko.BadAuthenticationType as refusal:
            methods = list(refusal.allowed_types)
        if "publickey" in methods:
            methods = self._publickey(transport, target) or methods
        if not transport.is_authenticated() and "keyboard-interactive" in methods:
            self._interactive(transport, target)
        if not transport.is_authenticated():
            raise AuthError(
                f"{target.label} refused every key we have ({', '.join(target.key_files) or 'none'} and the "
                f"ssh-agent's); it accepts: {', '.join(methods)}. Check `key_path` in the Milex "
                "configuration or load your key with `ssh-add`."
            )

    def _publickey(self, transport: paramiko.Transport, target: SshTarget) -> list[str]:
        """Try each key; returns the methods the server still wants after a partial success."""
        for key in self._candidate_keys(target):
            try:
                remaining = transport.auth_publickey(target.username, key)
            except paramiko.BadAuthenticationType as refusal:
                return list(refusal.allowed_types)
            except paramiko.AuthenticationException:
                continue
            return list(remaining)
        return []

    def _candidate_keys(self, target: SshTarget) -> Iterator[paramiko.PKey]:
        offered: set[str] = set()
        agent = None if target.identities_only else paramiko.Agent()
        try:
            for key in agent.get_keys() if agent else ():
                offered.add(key.get_base64())
                yield key
            for path in target.key_files:
                key = self._load_key(path) if os.path.isfile(path) else None
                if key is not None and key.get_base64() not in offered:
                    offered.add(key.get_base64())
                    yield key
        finally:
            if agent:
                agent.close()

    def _load_key(self, path: str) -> paramiko.PKey | None:
        if path in self._keys:
            return self._keys[path]
        password: bytes | None = None
        for attempt in range(PASSPHRASE_ATTEMPTS + 1):
            try:
                self._keys[path] = paramiko.PKey.from_path(path, password=password)
                return self._keys[path]
            except TypeError:
                pass  # the `cryptography` package's way of saying "encrypted, give a password"
            except ValueError:
                if password is None:
                    log.warning("%s is not a private key we can read: skipped", path)
                    return None
            except (OSError, paramiko.SSHException, paramiko.UnknownKeyType) as error:
                log.warning("cannot use key %s: %s", path, error)
                return None
            if attempt == PASSPHRASE_ATTEMPTS:
                break
            again = "Wrong passphrase; again" if password is not None else "Enter passphrase"
            password = self.prompt(f"{again} for key {path}: ", False).encode()
        raise AuthError(f"wrong passphrase for {path} ({PASSPHRASE_ATTEMPTS} attempts).")

    def _interactive(self, transport: paramiko.Transport, target: SshTarget) -> None:
        # Passwords saved from an earlier connection are tried first; the user is asked again only
        # when the server refuses them (a changed password). Anything else is asked each time.
        server = str(target)
        saved = any(key[0] == server for key in self._answers)
        for use_saved in (True, False) if saved else (False,):
            try:
                transport.auth_interactive(target.username, self._handler(target, use_saved))
                return
            except paramiko.BadAuthenticationType:
                return
            except paramiko.AuthenticationException:
                if not use_saved:
                    raise AuthError(f"{target.label}: the server refused the answers given.") from None
                for key in [key for key in self._answers if key[0] == server]:
                    del self._answers[key]

    def _handler(
        self, target: SshTarget, use_saved: bool
    ) -> Callable[[str, str, list[tuple[str, bool]]], list[str]]:
        def answer(title: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str]:
            header = "\n".join(part for part in (title, instructions) if part)
            answers = []
            for text, echo in prompts:
                key = (str(target), text)
                if use_saved and key in self._answers:
                    answers.append(self._answers[key])
                    continue
                question = target.asker + (f"{header}\n{text}" if header else text)
                answers.append(self.prompt(question, echo))
                if reusable_answer(text):
                    self._answers[key] = answers[-1]
            return answers

        return answer
