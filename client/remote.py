"""Remote machines: their agent reached through the machine's tunnel, and commands run over SSH."""

from __future__ import annotations

import shlex
from pathlib import Path

from milex.agent_control import remote_agent_command
from milex.common.errors import MilexError
from milex.config import Machine


def remote_endpoint(machine: Machine) -> str:
    """The local end of `machine`'s tunnel to its agent; tunnel and agent are started if needed.

    The tunnel runs `milex-agent start` after each SSH (re)connection, so a stopped or crashed
    agent comes back with the link, and learns the agent's socket from what it prints. Its link is
    checked first (a keepalive, or a new connection): a dead one is a LinkDown within seconds, where
    the command would wait for an answer that cannot come.
    """
    from milex.ssh_errors import PromptUnavailable
    from milex.tunnel_control import check_link, start_tunnel, stop_tunnel

    on_connect = remote_agent_command(machine, "start")
    status = start_tunnel(machine.name, "", on_connect=on_connect)
    try:
        check_link(machine.name)
    except PromptUnavailable:  # the new connection wants an answer (a second factor) the tunnel cannot ask
        stop_tunnel(machine.name)
        status = start_tunnel(machine.name, "", on_connect=on_connect)  # asks on this terminal
    return f"ipc://{status.local_socket}"


def run_remote(machine: Machine, command: str, *, check: bool = True) -> str:
    """Run `command` on `machine` over SSH; its output, or MilexError with what it printed."""
    from milex.tunnel import SshSession

    with SshSession.for_machine(machine) as session:
        code, out, err = session.exec(command)
    if check and code != 0:
        raise MilexError(f"on {machine.name}: `{command}` exited {code}:\n{(err or out).strip()}")
    return out.strip()


def in_environment(machine: Machine, command: str) -> str:
    """`command` as run on `machine` in its environment: a login shell after its env_command."""
    prefix = f"{machine.env_command} && " if machine.env_command else ""
    return f"bash -lc {shlex.quote(prefix + command)}"


def deploy(machine: Machine, *, upload_wheel: bool) -> str:
    """Install this Milex version into the machine's environment (index or uploaded wheel), create
    its directories, and restart its agent so the new version serves."""
    from milex.endpoints import client_version
    from milex.tunnel import SshSession
    from milex.tunnel_control import stop_tunnel

    with SshSession.for_machine(machine) as session:
        if upload_wheel:
            from milex.wheelhouse import install_from_wheels

            install_from_wheels(session, machine)
        else:
            install = f"python3 -m pip install --quiet {shlex.quote(f'milex-scheduler=={client_version()}')}"
            code, out, err = session.exec(in_environment(machine, install), timeout=600)
            if code != 0:
                raise MilexError(f"on {machine.name}: `{install}` exited {code}:\n{(err or out).strip()}")
        session.exec(remote_agent_command(machine, "stop"))
    stop_tunnel(machine.name)  # the next command reconnects and starts the new agent
    return f"milex-scheduler {client_version()} installed on {machine.name}; its agent restarts on next use"


def deploy_container(machine: Machine, *, image: str) -> str:
    """Upload milex/container.py (standard library only) to the login node and start the agent
    there from its image; an agent already running outside a container is stopped first."""
    from milex import container
    from milex.tunnel import SshSession
    from milex.tunnel_control import stop_tunnel

    script = ".milex-container.py"  # SFTP and exec both start in the remote home
    with SshSession.for_machine(machine) as session:
        session.exec(remote_agent_command(machine, "stop"))
        session.upload(Path(container.__file__), script)
        command = container.remote_start_command(script, machine.path, image=image, replace=True)
        code, out, err = session.exec(f"bash -lc {shlex.quote(command)}", timeout=300)
    if code != 0:
        raise MilexError(f"on {machine.name}: starting the agent container failed:\n{(err or out).strip()}")
    stop_tunnel(machine.name)
    return out.strip()
