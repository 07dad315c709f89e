"""`milex tunnel up|down|status`: the SSH session to a remote machine that stays up between commands."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from milex.cli import reports_errors

if TYPE_CHECKING:
    from milex.machine.tunnel.control import TunnelStatus

machine_argument = click.option("--machine", required=True, help="A remote machine of the configuration.")


@click.group("tunnel")
def tunnel_group() -> None:
    """Manage the background SSH tunnel to a remote machine's agent (started on first use)."""


@tunnel_group.command("up")
@machine_argument
@reports_errors
def up(machine: str) -> None:
    """Connect (asking for passphrases or codes here, once) and start the machine's agent."""
    from milex.config.file import load_config
    from milex.machine.endpoint import remote_endpoint
    from milex.machine.tunnel.control import tunnel_status

    remote_endpoint(load_config().machine(machine))
    click.echo(_describe(tunnel_status(machine)))


@tunnel_group.command("down")
@machine_argument
@reports_errors
def down(machine: str) -> None:
    """Close the tunnel (the agent keeps running on the machine)."""
    from milex.machine.tunnel.control import stop_tunnel

    click.echo("tunnel closed" if stop_tunnel(machine) else "no tunnel was up")


@tunnel_group.command("status")
@machine_argument
@reports_errors
def status(machine: str) -> None:
    """Whether the tunnel is up, since when, to where, and how (stream-local or relay)."""
    from milex.machine.tunnel.control import tunnel_status

    click.echo(_describe(tunnel_status(machine)))


def _describe(status: TunnelStatus) -> str:
    import time

    if not status.up:
        return f"tunnel to {status.machine} is {status.state}"
    since = time.strftime("%H:%M:%S", time.localtime(status.since or 0))
    node = f" (login node {status.node})" if status.node else ""
    how = status.mode or "not used yet"
    described = (
        f"tunnel to {status.host}{node} up since {since} (pid {status.pid}, {how}); "
        f"local socket {status.local_socket} -> {status.remote_socket}"
    )
    if status.broker_socket:
        described += f"; commands connect to {status.broker_socket}"
    if status.link_error:
        failing = time.strftime("%H:%M:%S", time.localtime(status.link_error_at or 0))
        described += f"\nlink down since {failing}: {status.link_error}"
    return described
