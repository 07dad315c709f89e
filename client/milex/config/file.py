"""The machine configuration file (`~/.milexconfig`): where it is, what it may hold, and its errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import msgspec

from milex_common.errors import ConfigError, unknown_key
from milex_common.model import MachineSettings

CONFIG_ENV = "MILEX_CONFIG"
DEFAULT_MACHINE = "local"
SCHEDULERS = ("slurm", "local")
REQUIRED_KEYS = ("path", "env_command", "slurm_account")
REMOTE_KEYS = ("username", "key_path")
INTEGER_KEYS = ("port", "max_submitted")
KNOWN_KEYS = (*REQUIRED_KEYS, "scheduler", "hostname", *REMOTE_KEYS, *INTEGER_KEYS, "state_dir", "notify")


class Machine(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One machine of the configuration: its settings, plus how to reach it when it is remote."""

    name: str
    path: str
    env_command: str
    slurm_account: str
    scheduler: str = "slurm"
    hostname: str | None = None
    username: str | None = None
    key_path: str | None = None
    port: int | None = None
    # Jobs the agent keeps in SLURM at once (array tasks each), where the site asks for fewer than
    # its limits allow; the rest of a bundle waits in the agent's queue.
    max_submitted: int | None = None
    # A directory on a disk of the node for the agent's directory and journal, where the filesystem
    # of `path` has no working locks (the agent refuses to start there and names one).
    state_dir: str | None = None
    # A shell command the agent runs on the machine when a run of a bundle ends, with the run's summary
    # as JSON on its stdin (`mail -s ... you@example.org`, `curl -d @- URL`).
    notify: str = ""

    @property
    def is_remote(self) -> bool:
        return self.hostname is not None

    @property
    def settings(self) -> MachineSettings:
        """What the renderer and the agent need; never the SSH details."""
        return MachineSettings(
            name=self.name,
            path=self.path,
            env_command=self.env_command,
            slurm_account=self.slurm_account,
            scheduler="local" if self.scheduler == "local" else "slurm",
            max_submitted=self.max_submitted,
            notify=self.notify,
        )


class Config(msgspec.Struct, kw_only=True):
    """All configured machines, and the file they came from (for error messages)."""

    source: Path
    machines: dict[str, Machine]

    def machine(self, name: str | None = None) -> Machine:
        """The machine called `name` (default: `local`), or a ConfigError listing the known ones."""
        name = name or os.environ.get("MILEX_MACHINE") or DEFAULT_MACHINE
        if name not in self.machines:
            known = ", ".join(sorted(self.machines)) or "none"
            raise ConfigError(
                f"{self.source}: no machine named {name!r} (configured machines: {known}). "
                "Add it with `milex-configuration` or `milex config set "
                f"{name} path /abs/path`."
            )
        return self.machines[name]

    @property
    def jobs_dir(self) -> Path:
        """Where job records live: `jobs/` under the local machine's path."""
        return Path(self.machine(DEFAULT_MACHINE).path) / "jobs"


def config_path() -> Path:
    """`$MILEX_CONFIG`, else `~/.milexconfig`."""
    return Path(os.environ.get(CONFIG_ENV) or Path.home() / ".milexconfig").expanduser()


def load_config(path: Path | None = None) -> Config:
    """Read and validate the configuration; ConfigError says what is wrong and where.

    A process that submits again and again reads the file again only once it has changed.
    """
    path = path or config_path()
    try:
        stat = path.stat()
    except OSError as error:
        raise _unreadable(path, error) from None
    version = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    if str(path) in _LOADED and _LOADED[str(path)][0] == version:
        return _LOADED[str(path)][1]
    config = parse_config(read_config_text(path), path)
    _LOADED[str(path)] = (version, config)
    return config


_LOADED: dict[str, tuple[tuple[int, int, int], Config]] = {}  # by path: (mtime, size, inode), config


def read_config_text(path: Path) -> str:
    """The text of the configuration file `path`; ConfigError if it is missing, a directory,
    unreadable or not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise _unreadable(path, error) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}, line {line}: not UTF-8 text (byte 0x{data[error.start]:02x}); "
            "save the file in UTF-8 and retry."
        ) from None


def _unreadable(path: Path, error: OSError) -> ConfigError:
    """The error for a configuration file `path` that `error` kept from being read."""
    if isinstance(error, FileNotFoundError):
        return ConfigError(
            f"{path} does not exist: run `milex-configuration` to create it "
            f"(or set {CONFIG_ENV} to the file you use)."
        )
    if isinstance(error, IsADirectoryError):
        return not_a_file(path)
    return ConfigError(
        f"cannot read the configuration {path}: {error.strerror or error}; make it a file you can "
        f"read (or set {CONFIG_ENV} to one)."
    )


def not_a_file(path: Path) -> ConfigError:
    """The error for a configuration path that is a directory."""
    return ConfigError(
        f"{path} is a directory, not a configuration file: set {CONFIG_ENV} to a file "
        "(or move the directory aside)."
    )


def parse_config(text: str, source: Path) -> Config:
    """Validate configuration `text`; `source` names it in errors."""
    document = parse_document(text, source)
    machines = {name: _machine(name, raw, source) for name, raw in document.items()}
    return Config(source=source, machines=machines)


def parse_document(text: str, source: Path) -> dict[str, Any]:
    """Configuration `text` as JSON, not yet validated: a ConfigError unless it is an object."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{source}, line {error.lineno}, column {error.colno}: invalid JSON: {error.msg}."
        ) from None
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: the configuration must be a JSON object of machines by name.")
    return document


def _machine(name: str, raw: Any, source: Path) -> Machine:
    where = f"{source}, machine {name!r}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a JSON object with keys {', '.join(REQUIRED_KEYS)}.")
    for key in raw:
        if key not in KNOWN_KEYS:
            raise ConfigError(unknown_key(where, key, KNOWN_KEYS))
    required = [*REQUIRED_KEYS, *(REMOTE_KEYS if "hostname" in raw else ())]
    missing = [key for key in required if key not in raw]
    if missing and "hostname" in raw and _ssh_config_knows(raw["hostname"]):
        missing = [key for key in missing if key not in REMOTE_KEYS]
    if missing:
        raise ConfigError(f"{where}: missing required key {missing[0]!r} (required: {', '.join(required)}).")
    try:
        machine = msgspec.convert({**raw, "name": name}, Machine)
    except msgspec.ValidationError as error:
        raise ConfigError(f"{where}: {error}.") from None
    _check_values(machine, where)
    if not machine.is_remote:
        machine.path = os.path.expanduser(machine.path)
        machine.state_dir = machine.state_dir and os.path.expanduser(machine.state_dir)
    return machine


def _check_values(machine: Machine, where: str) -> None:
    """ConfigError naming the first key whose value is of the right type but cannot be used."""
    if machine.scheduler not in SCHEDULERS:
        raise ConfigError(
            f"{where}: key 'scheduler' is {machine.scheduler!r}; use one of {', '.join(SCHEDULERS)}."
        )
    if machine.max_submitted is not None and machine.max_submitted < 1:
        raise ConfigError(f"{where}: key 'max_submitted' must be at least 1, not {machine.max_submitted}.")
    if machine.notify and (not machine.notify.strip() or "\0" in machine.notify):
        raise ConfigError(f"{where}: key 'notify' must be a shell command, not {machine.notify!r}.")
    for key in ("path", "state_dir"):
        value = getattr(machine, key)
        if value is not None and not value.startswith(("/", "~")):
            raise ConfigError(f"{where}: key {key!r} must be an absolute path, not {value!r}.")


def _ssh_config_knows(hostname: str) -> bool:
    """Whether `~/.ssh/config` has a `Host` entry for `hostname` (it may supply user and key)."""
    ssh_config = Path.home() / ".ssh" / "config"
    if not ssh_config.is_file():
        return False
    for line in ssh_config.read_text(errors="replace").splitlines():
        words = line.split()
        if len(words) > 1 and words[0].lower() == "host" and hostname in words[1:]:
            return True
    return False


def dump_config(machines: dict[str, Machine]) -> str:
    """The configuration file text for `machines` (the `name` field is the key, not repeated)."""
    document = {
        name: {k: v for k, v in msgspec.to_builtins(machine).items() if k != "name"}
        for name, machine in machines.items()
    }
    return json.dumps(document, indent=4) + "\n"
