"""Starting, stopping and inspecting a machine's agent: in-process for local machines, over SSH else."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from milex.config.file import Machine
from milex.machine.endpoint import (
    IDLE_EXIT_ENV,
    client_version,
    connect,
    local_agent_dir,
    poll_settings,
    start_settings,
)
from milex_common.model import MACHINE_DIRS


def remote_agent_command(machine: Machine, action: str) -> str:
    """The shell command that runs `milex-agent ACTION` on `machine`, in its environment; or,
    where `milex agent deploy --container` put its script, the same action on the agent container.

    Starting also creates the machine's directories: the first use of a machine sets it up. The
    idle exit is passed only when the environment sets it: an agent older than that option then
    still starts, with its own default (a container's agent never leaves when idle).
    """
    command = f"milex-agent {action} --path {shlex.quote(machine.path)}"
    if machine.state_dir is not None:  # only then: an agent older than the key still starts without it
        command += f" --state-dir {shell_path(machine.state_dir)}"
    boxed = container_command(machine, action)
    if action == "start":
        settings = start_settings()
        intervals = f" --poll-interval {settings['poll_interval']} --max-interval {settings['max_interval']}"
        command += intervals
        boxed += f"{intervals} --info"
        if IDLE_EXIT_ENV in os.environ:
            command += f" --idle-exit {settings['idle_exit']}"
    script = shell_path(container_script(machine))
    command = f"if [ -f {script} ]; then {boxed}; else {command}; fi"
    if action == "start":
        dirs = " ".join(shell_path(f"{machine.path}/{name}") for name in MACHINE_DIRS)
        command = f"mkdir -p {dirs} && {command}"
    prefix = f"{machine.env_command} && " if machine.env_command else ""
    return f"bash -lc {shlex.quote(prefix + command)}"


def remote_relay(machine: Machine) -> str:
    """The tunnel's relay command (for servers that forbid socket forwarding): `milex-agent bridge`,
    or the same in the agent's container where deploy put its script."""
    from milex.machine.ssh.session import DEFAULT_RELAY

    dispatch = 'if [ -f "$1" ]; then exec python3 "$1" bridge --socket "$2"; else exec {}; fi'
    bridge = dispatch.format(DEFAULT_RELAY.replace("{socket}", '"$2"'))
    return f"sh -c {shlex.quote(bridge)} relay {shell_path(container_script(machine))} {{socket}}"


def container_script(machine: Machine) -> str:
    """Where `milex agent deploy --container` puts milex/container.py on the machine."""
    return f"{machine.path}/agent/container.py"


def container_command(machine: Machine, action: str, *options: str) -> str:
    """The shell command that runs the machine's container script for `action` (start, stop,
    image-id) on its Milex path; `options` are quoted, a leading `~/` in the paths kept."""
    script = shell_path(container_script(machine))
    path = f" --path {shell_path(machine.path)}" if action != "stop" else ""
    return f"python3 {script} {action}{path}" + "".join(f" {shlex.quote(option)}" for option in options)


def shell_path(path: str) -> str:
    """`path` quoted for a remote shell, with a leading `~/` still meaning the remote home."""
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def start_agent(machine: Machine) -> str:
    if machine.is_remote:
        from milex.machine.deploy import run_remote

        return run_remote(machine, remote_agent_command(machine, "start"))
    from milex_agent.daemon import start

    info = start(local_agent_dir(machine), **start_settings())
    return f"agent {info.version} running (pid {info.pid}) on {info.socket}"


def stop_agent(machine: Machine) -> str:
    if machine.is_remote:
        from milex.machine.deploy import run_remote
        from milex.machine.tunnel.control import stop_tunnel

        # Over the tunnel's session while it is up (no second factor asked again), then the tunnel
        # itself: left up, it would start the agent again at its next reconnection.
        stopped = run_remote(machine, remote_agent_command(machine, "stop"))
        stop_tunnel(machine.name)
        return f"{stopped}\n(its tunnel is down too; the next command that needs the agent starts both)"
    from milex_agent.daemon import stop

    info = stop(local_agent_dir(machine))
    return "no agent was running" if info is None else f"stopped agent {info.pid}"


def agent_status(machine: Machine) -> str:
    if not machine.is_remote:
        from milex_agent.daemon import read_info

        if read_info(local_agent_dir(machine)) is None:
            return f"no agent running for {machine.name}"
    with connect(machine) as connection:
        hello = connection.hello(client_version())
    return (
        f"agent {hello.agent_version} (protocol {hello.protocol}) running as {hello.user} on "
        f"{hello.host}, pid {hello.pid}; {hello.last_seq} events recorded"
    )


def deploy_agent(machine: Machine, *, upload_wheel: bool) -> str:
    from milex.machine.deploy import deploy

    return deploy(machine, upload_wheel=upload_wheel)


def deploy_container(machine: Machine, *, image: str, archive: Path | None = None) -> str:
    """Start the machine's agent from its container image unless it runs from it already (a new
    build of the image restarts it); `archive`, an image archive here, is loaded there first."""
    if machine.is_remote:
        from milex.machine.deploy import deploy_container as remote_deploy_container

        return remote_deploy_container(machine, image=image, archive=archive)
    from milex.machine.container import start_container_agent

    return start_container_agent(
        machine.path, image=image, archive=str(archive) if archive else None, **poll_settings()
    )
