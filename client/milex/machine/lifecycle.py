"""A machine's agent started, stopped, inspected and deployed (`milex agent ...`): here for a local
machine (milex.machine.local), over the machine's shell for a remote one."""

from __future__ import annotations

from pathlib import Path

from milex.config.file import Machine
from milex.machine import container, deploy
from milex.machine.commands import remote_agent_command
from milex.machine.endpoint import connect
from milex.machine.settings import client_version, poll_settings
from milex.machine.shell import machine_shell, run_remote
from milex.machine.tunnel.control import stop_tunnel
from milex.machine.watchdog import watchdog_state


def start_agent(machine: Machine) -> str:
    if machine.is_remote:
        return run_remote(machine, remote_agent_command(machine, "start"))
    from milex.machine.local import start_local_agent  # the agent's code: only for a local machine

    info = start_local_agent(machine)
    return f"agent {info.version} running (pid {info.pid}) on {info.socket}"


def stop_agent(machine: Machine) -> str:
    if machine.is_remote:
        # Over the tunnel's session while it is up (no second factor asked again), then the tunnel
        # itself: left up, it would start the agent again at its next reconnection.
        stopped = run_remote(machine, remote_agent_command(machine, "stop"))
        stop_tunnel(machine.name)
        return (
            f"{stopped}\n(its tunnel is down too; the next command that needs the agent starts both, and so"
            " does its watchdog within a minute while jobs are left, unless `milex agent watchdog --remove`"
            " takes it out)"
        )
    from milex.machine.local import stop_local_agent  # the agent's code: only for a local machine

    info = stop_local_agent(machine)
    return "no agent was running" if info is None else f"stopped agent {info.pid}"


def agent_status(machine: Machine) -> str:
    """Whether the machine's agent runs, its version and where; for a remote machine, its watchdog."""
    if not machine.is_remote:
        from milex.machine.local import local_agent_info  # the agent's code: only for a local machine

        if local_agent_info(machine) is None:
            return f"no agent running for {machine.name}"
    with connect(machine) as connection:
        hello = connection.hello(client_version(), fresh=True)  # its events now
    said = (
        f"agent {hello.agent_version} (protocol {hello.protocol}) running as {hello.user} on "
        f"{hello.host}, pid {hello.pid}; {hello.last_seq} events recorded"
    )
    if machine.is_remote:
        with machine_shell(machine) as shell:
            said += f"\n{watchdog_state(shell, machine)}"
    return said


def deploy_agent(machine: Machine, *, upload_wheel: bool, watchdog: bool = True) -> str:
    return deploy.deploy(machine, upload_wheel=upload_wheel, watchdog=watchdog)


def deploy_container(machine: Machine, *, image: str, archive: Path | None = None) -> str:
    """Start the machine's agent from its container image unless it runs from it already (a new
    build of the image restarts it); `archive`, an image archive here, is loaded there first."""
    if machine.is_remote:
        return deploy.deploy_container(machine, image=image, archive=archive)
    return container.start_container_agent(
        machine.path, image=image, archive=str(archive) if archive else None, **poll_settings()
    )
