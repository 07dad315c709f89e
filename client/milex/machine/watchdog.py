"""The agent's watchdog on a remote machine's login node (`milex agent watchdog`; `milex agent deploy`
installs it): the crontab line of milex_agent.watchdog, put in, taken out and looked up over the
machine's shell, running the agent's start as the laptop runs it (milex.machine.commands)."""

from __future__ import annotations

import shlex

from milex.config.file import Machine
from milex.machine.commands import (
    agent_command,
    container_script,
    in_environment,
    shell_path,
    watchdog_command,
)
from milex.machine.shell import Shell, machine_shell
from milex_common.errors import MilexError

NOT_INSTALLED = 3  # `milex-agent watchdog status`: the crontab has no line of this agent


def watchdog(machine: Machine, *, remove: bool = False) -> str:
    """Install the watchdog of `machine` (replacing an earlier one), or remove it; what was done."""
    if not machine.is_remote:
        start = f"{agent_command(machine, 'start')} --if-work"
        raise MilexError(
            f"{machine.name} is a machine on this host: the watchdog goes on a remote machine's login "
            f"node. Here, a line of your crontab does the same: * * * * * {start}"
        )
    with machine_shell(machine) as shell:
        return remove_watchdog(shell, machine) if remove else install_watchdog(shell, machine)


def install_watchdog(shell: Shell, machine: Machine) -> str:
    """Put the watchdog line in the user's crontab on the machine; MilexError saying why it cannot
    be (no `crontab` there, cron denied to the user, the agent in a container)."""
    if _in_container(shell, machine):
        raise MilexError(
            f"the agent of {machine.name} runs in its container (`milex agent deploy --container`), "
            "whose engine starts it again when it fails: the watchdog is for an agent outside one "
            f"(`milex agent deploy --machine {machine.name}` goes back to that)"
        )
    return _run(shell, machine, f"install --command {shlex.quote(watchdog_command(machine))}")


def remove_watchdog(shell: Shell, machine: Machine) -> str:
    return _run(shell, machine, "remove")


def watchdog_state(shell: Shell, machine: Machine) -> str:
    """One line: whether the machine's crontab has the watchdog."""
    if _in_container(shell, machine):
        return "watchdog: none, the agent runs in its container, whose engine starts it again when it fails"
    code, out, err = shell.exec(in_environment(machine, agent_command(machine, "watchdog status")))
    if code == 0:
        return "watchdog: installed (cron starts the agent again within a minute when it dies with work left)"
    if code == NOT_INSTALLED:
        return (
            "watchdog: not installed, so a killed agent starts again only with the next command from here "
            f"(`milex agent watchdog --machine {machine.name}` installs it)"
        )
    return f"watchdog: unknown ({_failure(machine, out, err)})"


def _in_container(shell: Shell, machine: Machine) -> bool:
    """Whether the machine's agent runs in its container (milex.machine.deploy put its script there)."""
    return shell.exec(f"test -f {shell_path(container_script(machine))}")[0] == 0


def _run(shell: Shell, machine: Machine, action: str) -> str:
    """`milex-agent watchdog ACTION` for the machine's agent, in its environment; what it said."""
    code, out, err = shell.exec(in_environment(machine, agent_command(machine, f"watchdog {action}")))
    if code != 0:
        raise MilexError(_failure(machine, out, err))
    return out.strip()


def _failure(machine: Machine, out: str, err: str) -> str:
    """What a failed `milex-agent watchdog` said, as the user should read it."""
    said = (err or out).strip().removeprefix("error: ")
    if "No such command 'watchdog'" in said or "milex-agent: command not found" in said:
        return (
            f"the Milex installed on {machine.name} has no watchdog (or is not in its env_command): "
            f"`milex agent deploy --machine {machine.name}` installs this version, and its watchdog"
        )
    return f"on {machine.name}: {said}"
