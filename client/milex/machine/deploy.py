"""Remote machines: their agent reached through the machine's tunnel, and commands run over SSH."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from milex.config.file import Machine
from milex.machine.lifecycle import (
    container_command,
    container_script,
    remote_agent_command,
    remote_relay,
    shell_path,
)
from milex_common.errors import MilexError

if TYPE_CHECKING:
    from milex.machine.shell import Shell


def remote_endpoint(machine: Machine) -> str:
    """The local end of `machine`'s tunnel to its agent; tunnel and agent are started if needed.

    The tunnel runs `milex-agent start` after each SSH (re)connection, so a stopped or crashed
    agent comes back with the link, and learns the agent's socket from what it prints. Its link is
    checked first (a keepalive, or a new connection): a dead one is a LinkDown within seconds, where
    the command would wait for an answer that cannot come.
    """
    from milex.machine.ssh.errors import PromptUnavailable
    from milex.machine.tunnel.control import check_link, start_tunnel, stop_tunnel

    on_connect, relay = remote_agent_command(machine, "start"), remote_relay(machine)
    status = start_tunnel(machine.name, "", relay=relay, on_connect=on_connect)
    try:
        check_link(machine.name)
    except PromptUnavailable:  # the new connection wants an answer (a second factor) the tunnel cannot ask
        stop_tunnel(machine.name)
        status = start_tunnel(machine.name, "", relay=relay, on_connect=on_connect)  # asks on this terminal
    return f"ipc://{status.local_socket}"


def run_remote(machine: Machine, command: str, *, check: bool = True, timeout: float = 120.0) -> str:
    """Run `command` on `machine` over SSH (the tunnel's session when it is up: no new login, no
    second factor asked again); its output, or MilexError with what it printed."""
    from milex.machine.shell import machine_shell

    with machine_shell(machine) as shell:
        code, out, err = shell.exec(command, timeout=timeout)
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
    from milex.machine.endpoint import client_version
    from milex.machine.shell import machine_shell
    from milex.machine.tunnel.control import stop_tunnel

    with machine_shell(machine) as session:
        if upload_wheel:
            from milex.machine.wheelhouse import install_from_wheels

            install_from_wheels(session, machine)
        else:
            install = f"python3 -m pip install --quiet {shlex.quote(f'milex-scheduler=={client_version()}')}"
            code, out, err = session.exec(in_environment(machine, install), timeout=600)
            if code != 0:
                raise MilexError(f"on {machine.name}: `{install}` exited {code}:\n{(err or out).strip()}")
        session.exec(remote_agent_command(machine, "stop"))  # in its container, if it runs in one
        session.exec(f"rm -f {shell_path(container_script(machine))}")  # from now on, outside one
    stop_tunnel(machine.name)  # the next command reconnects and starts the new agent
    return f"milex-scheduler {client_version()} installed on {machine.name}; its agent restarts on next use"


def deploy_container(machine: Machine, *, image: str, archive: Path | None = None) -> str:
    """Upload milex/container.py (standard library only) into the machine's Milex path, where it
    marks the agent as containerized, and start the agent there from its image; an agent running
    outside a container is stopped first. `archive` (an image archive here) is uploaded and loaded
    unless the machine has that very image already."""
    from milex.machine import container
    from milex.machine.shell import machine_shell
    from milex.machine.tunnel.control import stop_tunnel

    script = container_script(machine)
    with machine_shell(machine) as session:
        marked = session.exec(f"test -f {shell_path(script)}")[0] == 0
        if not marked:
            session.exec(remote_agent_command(machine, "stop"))
        session.exec(f"mkdir -p {shell_path(f'{machine.path}/agent')}")
        session.upload(Path(container.__file__), sftp_path(script))
        try:
            said = _start_container(session, machine, image, archive)
        except BaseException:
            if not marked:  # the machine's agent stays what it was
                session.exec(f"rm -f {shell_path(script)}")
            raise
    stop_tunnel(machine.name)  # the next command reconnects, to the container's agent
    return said


def _start_container(session: Shell, machine: Machine, image: str, archive: Path | None) -> str:
    """Run the uploaded script's start (in the machine's environment); what it said."""
    from milex.machine.endpoint import poll_settings

    settings = poll_settings()
    options = ["--image", image, "--poll-interval", str(settings["poll_interval"]),
               "--max-interval", str(settings["max_interval"])]  # fmt: skip
    with _uploaded_archive(session, machine, image, archive) as remote_archive:
        loading = ["--archive", remote_archive] if remote_archive else []
        start = container_command(machine, "start", *options, *loading)
        code, out, err = session.exec(in_environment(machine, start), timeout=600)
    if code != 0:
        raise _container_error(machine, out, err)
    return out.strip()


@contextmanager
def _uploaded_archive(session: Shell, machine: Machine, image: str, archive: Path | None) -> Iterator[str]:
    """The remote path of `archive` uploaded into a temporary file there (removed after), or ""
    when there is none or the machine's image of that name is the archive's already."""
    from milex.machine.container import archive_image_id

    if archive is None:
        yield ""
        return
    asked = container_command(machine, "image-id", "--image", image)
    code, out, err = session.exec(in_environment(machine, asked))
    if code != 0:  # e.g. no podman or docker there: nothing to upload for
        raise _container_error(machine, out, err)
    if out.strip() and out.strip() == archive_image_id(str(archive)):
        yield ""
        return
    code, out, err = session.exec("mktemp -t milex-image.XXXXXX")
    if code != 0:
        raise MilexError(f"on {machine.name}, `mktemp` failed:\n{(err or out).strip()}")
    remote = out.strip()
    try:
        session.upload(archive, remote)
        yield remote
    finally:
        session.exec(f"rm -f {shlex.quote(remote)}")


def _container_error(machine: Machine, out: str, err: str) -> MilexError:
    """The container script's failure there (its own `error: ` prefix dropped)."""
    said = (err or out).strip().removeprefix("error: ")
    return MilexError(f"on {machine.name}: starting the agent container failed: {said}")


def sftp_path(path: str) -> str:
    """`path` for SFTP, which starts in the remote home and expands no `~`."""
    return path[2:] if path.startswith("~/") else path
