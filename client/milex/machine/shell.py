"""Commands and uploads on a machine, over its tunnel's SSH session while the tunnel is up.

The tunnel's session is the one the user authenticated, second factors included; a session of our
own would ask every hop for a new code. So what `milex agent stop` and `milex agent deploy` run on
the login node goes through the tunnel service's exec socket (milex.machine.tunnel.control) when it answers,
and over a session of the command's own, opened at the first need, when no tunnel is up.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from milex.config.file import Machine
from milex.machine.tunnel.control import exec_in_tunnel, upload_in_tunnel
from milex_common.errors import MilexError

if TYPE_CHECKING:
    from milex.machine.ssh.session import SshSession


class Shell(Protocol):
    """What runs commands and takes files on a machine (an SshSession is one)."""

    def exec(self, command: str, timeout: float = 120.0) -> tuple[int, str, str]:
        """Run `command` there: its exit status, stdout and stderr."""
        ...

    def upload(self, local: Path, remote: str) -> None:
        """Copy the file `local` of this laptop to `remote` there."""
        ...


class MachineShell:
    """A machine's shell: the tunnel's session while it answers, else one of our own from then on
    (closed with `machine_shell`'s block)."""

    def __init__(self, machine: Machine, stack: ExitStack) -> None:
        self.machine = machine
        self._stack = stack
        self._own: SshSession | None = None

    def exec(self, command: str, timeout: float = 120.0) -> tuple[int, str, str]:
        if self._own is None:
            ran = exec_in_tunnel(self.machine.name, command, timeout)
            if ran is not None:
                return ran
        return self._session().exec(command, timeout=timeout)

    def upload(self, local: Path, remote: str) -> None:
        if self._own is None and upload_in_tunnel(self.machine.name, local, remote):
            return
        self._session().upload(local, remote)

    def _session(self) -> SshSession:
        from milex.machine.ssh.session import SshSession  # paramiko: only when no tunnel is up

        if self._own is None:
            self._own = self._stack.enter_context(SshSession.for_machine(self.machine))
        return self._own


@contextmanager
def machine_shell(machine: Machine) -> Iterator[MachineShell]:
    """`machine`'s shell for the block (the SSH session it may have opened closed after)."""
    with ExitStack() as stack:
        yield MachineShell(machine, stack)


def run_remote(machine: Machine, command: str, *, check: bool = True, timeout: float = 120.0) -> str:
    """Run `command` on `machine` (the tunnel's session when it is up: no new login, no second factor
    asked again); its output, or MilexError with what it printed."""
    with machine_shell(machine) as shell:
        code, out, err = shell.exec(command, timeout=timeout)
    if check and code != 0:
        raise MilexError(f"on {machine.name}: `{command}` exited {code}:\n{(err or out).strip()}")
    return out.strip()
