"""Reaching and logging in to an SSH server: `~/.ssh/config`, the socket, known_hosts, and authentication."""

from __future__ import annotations

import getpass
import logging
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko

from milex.ssh_errors import (
    AuthError,
    HostKeyChangedError,
    LinkDown,
    PromptUnavailable,
    TunnelError,
    UnknownHostError,
)

log = logging.getLogger("milex.tunnel")

# A prompt shows `text` and returns the user's answer; `echo` is False for secrets.
Prompt = Callable[[str, bool], str]

DEFAULT_KEY_FILES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
DEFAULT_KNOWN_HOSTS = ("~/.ssh/known_hosts",)
GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts",)
PASSPHRASE_ATTEMPTS = 3
KEEPALIVE_SECONDS = 15
AUTH_TIMEOUT = 120.0  # OpenSSH's default LoginGraceTime


@dataclass(frozen=True)
class Target:
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

    @property
    def host_key_name(self) -> str:
        """The name known_hosts files it under (OpenSSH writes `[host]:port` for other ports than 22)."""
        host = self.host_key_alias or self.hostname
        return host if self.port == 22 else f"[{host}]:{self.port}"

    @property
    def keyscan_command(self) -> str:
        return f"ssh-keyscan -p {self.port} {self.hostname} >> ~/.ssh/known_hosts"

    def __str__(self) -> str:
        return f"{self.username}@{self.hostname}:{self.port}"


def resolve_target(
    hostname: str,
    username: str | None = None,
    key_path: str | None = None,
    port: int | None = None,
    ssh_config: Path | None = None,
) -> Target:
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
    return Target(
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


def load_known_hosts(target: Target) -> paramiko.HostKeys:
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


def check_host_key(target: Target, keys: paramiko.HostKeys, server_key: paramiko.PKey) -> None:
    """Raise unless known_hosts holds `server_key` for `target`."""
    known = known_keys(keys, target.host_key_name, server_key.get_name())
    if not known:
        raise UnknownHostError(
            f"{target.host_key_name} is not a known host: its {server_key.get_name()} key "
            f"{server_key.fingerprint} is in none of {', '.join(target.known_hosts)}. "
            f"If this is the machine you mean, trust it with\n    {target.keyscan_command}\nand retry."
        )
    if server_key not in known:
        raise HostKeyChangedError(
            f"the host key of {target.host_key_name} has CHANGED (now {server_key.fingerprint}): someone "
            "may be intercepting the connection, or the machine was reinstalled. Ask its administrators; "
            f"once sure, run `ssh-keygen -R '{target.host_key_name}'` then\n    {target.keyscan_command}"
        )


def connect_socket(
    target: Target, timeout: float, *, reached_before: bool = False
) -> socket.socket | paramiko.ProxyCommand:
    """A connected socket to `target` (or its ProxyCommand), tuned for many small round trips.
    LinkDown when it cannot be reached: `reached_before`, the network is to blame, not the settings."""
    if target.proxy_command:
        return paramiko.ProxyCommand(target.proxy_command)
    try:
        sock = socket.create_connection((target.hostname, target.port), timeout=timeout)
    except OSError as error:
        hint = (
            ""
            if reached_before
            else " Check `hostname` and `port` in the Milex configuration (or ~/.ssh/config)."
        )
        raise LinkDown(
            f"cannot reach {target.hostname} port {target.port}: {error.strerror or error}.{hint}"
        ) from None
    # Without TCP_NODELAY, a small write waits behind an unacknowledged one until the peer's delayed
    # ACK: about 45 ms (measured). sshd's side of the connection is handled in tunnel.py.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    return sock


def handshake(
    transport: paramiko.Transport, target: Target, credentials: Credentials, timeout: float
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
        raise TunnelError(f"SSH handshake with {target} failed: {error}") from None
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


class Credentials:
    """Keys and answers for authentication, asked once and kept in memory for reconnections."""

    def __init__(self, prompt: Prompt = tty_prompt) -> None:
        self.prompt = prompt
        self._keys: dict[str, paramiko.PKey] = {}
        self._answers: dict[str, str] = {}

    def authenticate(self, transport: paramiko.Transport, target: Target) -> None:
        """Agent keys, then key files, then keyboard-interactive: the order of OpenSSH's `ssh`."""
        try:
            transport.auth_none(target.username)
            return
        except paramiko.BadAuthenticationType as refusal:
            methods = list(refusal.allowed_types)
        if "publickey" in methods:
            methods = self._publickey(transport, target) or methods
        if not transport.is_authenticated() and "keyboard-interactive" in methods:
            self._interactive(transport, target.username)
        if not transport.is_authenticated():
            raise AuthError(
                f"{target} refused every key we have ({', '.join(target.key_files) or 'none'} and the "
                f"ssh-agent's); it accepts: {', '.join(methods)}. Check `key_path` in the Milex "
                "configuration or load your key with `ssh-add`."
            )

    def _publickey(self, transport: paramiko.Transport, target: Target) -> list[str]:
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

    def _candidate_keys(self, target: Target) -> Iterator[paramiko.PKey]:
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

    def _interactive(self, transport: paramiko.Transport, username: str) -> None:
        # Answers saved from an earlier connection are tried first; the user is asked again only
        # when the server refuses them (a one-time code, a changed password).
        for use_saved in (True, False) if self._answers else (False,):
            try:
                transport.auth_interactive(username, self._handler(use_saved))
                return
            except paramiko.BadAuthenticationType:
                return
            except paramiko.AuthenticationException:
                if not use_saved:
                    raise AuthError(f"{username}: the server refused the answers given.") from None
                self._answers.clear()

    def _handler(self, use_saved: bool) -> Callable[[str, str, list[tuple[str, bool]]], list[str]]:
        def answer(title: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str]:
            header = "\n".join(part for part in (title, instructions) if part)
            answers = []
            for text, echo in prompts:
                if not (use_saved and text in self._answers):
                    self._answers[text] = self.prompt(f"{header}\n{text}" if header else text, echo)
                answers.append(self._answers[text])
            return answers

        return answer
