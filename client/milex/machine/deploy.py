"""Installing Milex's agent on a remote machine: this version from an index or uploaded wheels, or its
container image; the agent restarts on the next command."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from milex.config.file import Machine
from milex.machine import container
from milex.machine.commands import (
    container_command,
    container_script,
    in_environment,
    remote_agent_command,
    sftp_path,
    shell_path,
)
from milex.machine.settings import client_version, poll_settings
from milex.machine.shell import Shell, machine_shell
from milex.machine.tunnel.control import stop_tunnel
from milex.machine.watchdog import install_watchdog
from milex.machine.wheelhouse import install_from_wheels
from milex_common.errors import MilexError


def deploy(machine: Machine, *, upload_wheel: bool, watchdog: bool = True) -> str:
    """Install this Milex version into the machine's environment (index or uploaded wheel), create
    its directories, and restart its agent so the new version serves; with `watchdog`, install the
    agent's watchdog too (milex.machine.watchdog: where it cannot be, the deploy says why)."""
    with machine_shell(machine) as session:
        if upload_wheel:
            install_from_wheels(session, machine)
        else:
            install = f"python3 -m pip install --quiet {shlex.quote(f'milex-scheduler=={client_version()}')}"
            code, out, err = session.exec(in_environment(machine, install), timeout=600)
            if code != 0:
                raise MilexError(f"on {machine.name}: `{install}` exited {code}:\n{(err or out).strip()}")
        session.exec(remote_agent_command(machine, "stop"))  # in its container, if it runs in one
        session.exec(f"rm -f {shell_path(container_script(machine))}")  # from now on, outside one
        said = [
            f"milex-scheduler {client_version()} installed on {machine.name}; its agent restarts on next use"
        ]
        if watchdog:
            try:
                said.append(install_watchdog(session, machine))
            except MilexError as error:  # the agent is installed all the same
                said.append(str(error))
    stop_tunnel(machine.name)  # the next command reconnects and starts the new agent
    return "\n".join(said)


def deploy_container(machine: Machine, *, image: str, archive: Path | None = None) -> str:
    """Upload milex/container.py (standard library only) into the machine's Milex path, where it
    marks the agent as containerized, and start the agent there from its image; an agent running
    outside a container is stopped first. `archive` (an image archive here) is uploaded and loaded
    unless the machine has that very image already."""

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

    if archive is None:
        yield ""
        return
    asked = container_command(machine, "image-id", "--image", image)
    code, out, err = session.exec(in_environment(machine, asked))
    if code != 0:  # e.g. no podman or docker there: nothing to upload for
        raise _container_error(machine, out, err)
    if out.strip() and out.strip() == container.archive_image_id(str(archive)):
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
