"""The shell commands the client runs on a machine: the agent's actions there (in its environment, or
in its container where `milex agent deploy --container` put its script), the tunnel's relay, and how
paths are quoted for a remote shell and for SFTP. Text only: nothing here connects."""

from __future__ import annotations

import os
import shlex

from milex.config.file import Machine
from milex.machine.settings import IDLE_EXIT_ENV, start_settings
from milex_common.model import MACHINE_DIRS

# The relay for servers that forbid socket forwarding: the agent's bridge, over an exec channel.
DEFAULT_RELAY = "milex-agent bridge --socket {socket}"


def remote_agent_command(machine: Machine, action: str) -> str:
    """The shell command that runs `milex-agent ACTION` on `machine`, in its environment; or,
    where `milex agent deploy --container` put its script, the same action on the agent container.

    Starting also creates the machine's directories: the first use of a machine sets it up. The
    idle exit is passed only when the environment sets it: an agent older than that option then
    still starts, with its own default (a container's agent never leaves when idle).
    """
    command = agent_command(machine, action)
    boxed = container_command(machine, action)
    if action == "start":
        command += _start_options()
        boxed += f"{_intervals()} --info"
    script = shell_path(container_script(machine))
    command = f"if [ -f {script} ]; then {boxed}; else {command}; fi"
    if action == "start":
        dirs = " ".join(shell_path(f"{machine.path}/{name}") for name in MACHINE_DIRS)
        command = f"mkdir -p {dirs} && {command}"
    return in_environment(machine, command)


def watchdog_command(machine: Machine) -> str:
    """What the machine's crontab runs every minute (milex_agent.watchdog): the agent's start as the
    laptop runs it, in the machine's environment, when no agent runs and its journal holds work
    (`--if-work`); nothing where the agent runs in its container, whose engine restarts it."""
    start = f"{agent_command(machine, 'start')}{_start_options()} --if-work"
    return in_environment(machine, f"if [ ! -f {shell_path(container_script(machine))} ]; then {start}; fi")


def agent_command(machine: Machine, action: str) -> str:
    """`milex-agent ACTION` for the agent of `machine` (its path, and its state_dir if it has one)."""
    command = f"milex-agent {action} --path {shlex.quote(machine.path)}"
    if machine.state_dir is not None:  # only then: an agent older than the key still starts without it
        command += f" --state-dir {shell_path(machine.state_dir)}"
    return command


def _intervals() -> str:
    settings = start_settings()
    return f" --poll-interval {settings['poll_interval']} --max-interval {settings['max_interval']}"


def _start_options() -> str:
    """The options the laptop starts an agent with: its intervals, and its idle exit when set."""
    if IDLE_EXIT_ENV not in os.environ:
        return _intervals()
    return f"{_intervals()} --idle-exit {start_settings()['idle_exit']}"


def remote_relay(machine: Machine) -> str:
    """The tunnel's relay command (for servers that forbid socket forwarding): `milex-agent bridge`,
    or the same in the agent's container where deploy put its script."""
    dispatch = 'if [ -f "$1" ]; then exec python3 "$1" bridge --socket "$2"; else exec {}; fi'
    bridge = dispatch.format(DEFAULT_RELAY.replace("{socket}", '"$2"'))
    return f"sh -c {shlex.quote(bridge)} relay {shell_path(container_script(machine))} {{socket}}"


def container_script(machine: Machine) -> str:
    """Where `milex agent deploy --container` puts milex/machine/container.py on the machine."""
    return f"{machine.path}/agent/container.py"


def container_command(machine: Machine, action: str, *options: str) -> str:
    """The shell command that runs the machine's container script for `action` (start, stop,
    image-id) on its Milex path; `options` are quoted, a leading `~/` in the paths kept."""
    script = shell_path(container_script(machine))
    path = f" --path {shell_path(machine.path)}" if action != "stop" else ""
    return f"python3 {script} {action}{path}" + "".join(f" {shlex.quote(option)}" for option in options)


def in_environment(machine: Machine, command: str) -> str:
    """`command` as run on `machine` in its environment: a login shell after its env_command."""
    prefix = f"{machine.env_command} && " if machine.env_command else ""
    return f"bash -lc {shlex.quote(prefix + command)}"


def shell_path(path: str) -> str:
    """`path` quoted for a remote shell, with a leading `~/` still meaning the remote home."""
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def sftp_path(path: str) -> str:
    """`path` for SFTP, which starts in the remote home and expands no `~`."""
    return path[2:] if path.startswith("~/") else path
