"""`milex-agent`: run, start, stop and inspect the per-user agent; `bridge` relays a socket over stdio."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import click

from milex_common.intervals import IDLE_EXIT, MAX_POLL_INTERVAL, POLL_INTERVAL, SUBMIT_RETRY
from milex_common.version import VERSION


def _directory(path: str | None, directory: str | None, state_dir: str | None = None) -> Path:
    from milex_common.agent_layout import machine_agent_dir

    if directory:
        return Path(directory).expanduser()
    if path:
        return machine_agent_dir(path, state_dir)
    raise click.UsageError("give --path (the machine's Milex path) or --dir (the agent directory).")


def _print(info: object) -> None:
    import msgspec

    click.echo(msgspec.json.encode(info).decode())


_path_option = click.option("--path", help="The machine's Milex path; the agent lives in PATH/agent/CLUSTER.")
_dir_option = click.option("--dir", "directory", help="The agent directory itself.")
_state_dir_option = click.option(
    "--state-dir",
    help="A directory of this node for the agent's state (it lives in STATE_DIR/agent/NODE instead): "
    "the machine's state_dir, where the filesystem of PATH has no working locks.",
)
_idle_exit_option = click.option(
    "--idle-exit",
    type=click.FloatRange(min=0),
    default=IDLE_EXIT,
    show_default=True,
    help="Exit after this many seconds with no unfinished job, client or request (0: never).",
)
_submit_retry_option = click.option(
    "--submit-retry",
    type=float,
    default=SUBMIT_RETRY,
    show_default=True,
    help="Seconds a submission waits for a silent SLURM controller before it gives up.",
)

F = TypeVar("F", bound=Callable[..., object])


def _settings_options(command: F) -> F:
    """The agent's settings, options of both `run` and `start`."""
    for option in reversed(
        (
            click.option("--poll-interval", type=float, default=POLL_INTERVAL, show_default=True),
            click.option("--max-interval", type=float, default=MAX_POLL_INTERVAL, show_default=True),
            _idle_exit_option,
            _submit_retry_option,
        )
    ):
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})  # as every `milex` command
@click.version_option(VERSION, prog_name="milex-agent")
def main() -> None:
    """The Milex agent: one per user per login node, reached through a private socket."""


@main.command()
@_path_option
@_state_dir_option
@_dir_option
@_settings_options
@click.option("--detach", is_flag=True, help="Run in the background; exit once the agent serves.")
def run(
    path: str | None,
    state_dir: str | None,
    directory: str | None,
    poll_interval: float,
    max_interval: float,
    idle_exit: float,
    submit_retry: float,
    detach: bool,
) -> None:
    """Serve in the foreground (what `start` runs detached, and what a container runs)."""
    from milex_agent import daemon

    with _errors_shown():
        target = _directory(path, directory, state_dir)
    on_ready = _detach() if detach else (lambda: None)
    with _errors_shown():
        daemon.run(target, poll_interval=poll_interval, max_interval=max_interval, idle_exit=idle_exit,
                   submit_retry=submit_retry, version=VERSION, on_ready=on_ready)  # fmt: skip


@contextlib.contextmanager
def _errors_shown() -> Iterator[None]:
    """A MilexError becomes its message on stderr and exit status 1, as the `milex` commands do."""
    from milex_common.errors import MilexError

    try:
        yield
    except MilexError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)


def _detach() -> Callable[[], None]:
    """Fork into a new session; the parent exits 0 once the child calls the returned function,
    1 if the child dies first. Done before any thread or socket exists."""
    import os

    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        os._exit(0 if os.read(read_end, 1) == b"1" else 1)
    os.close(read_end)
    os.setsid()

    def ready() -> None:
        os.write(write_end, b"1")
        os.close(write_end)

    return ready


@main.command()
@_path_option
@_state_dir_option
@_dir_option
@_settings_options
@click.option(
    "--if-work",
    is_flag=True,
    help="Only when no agent runs and its journal holds work (jobs queued, in doubt or not ended); "
    "otherwise exit 0 and print nothing. What the watchdog runs from cron every minute.",
)
def start(
    path: str | None,
    state_dir: str | None,
    directory: str | None,
    poll_interval: float,
    max_interval: float,
    idle_exit: float,
    submit_retry: float,
    if_work: bool,
) -> None:
    """Start the agent detached unless one runs; print its info as JSON."""
    from milex_agent import daemon

    with _errors_shown():
        target = _directory(path, directory, state_dir)
        settings = {"poll_interval": poll_interval, "max_interval": max_interval, "idle_exit": idle_exit,
                    "submit_retry": submit_retry}  # fmt: skip
        if if_work:
            started = daemon.start_if_work(target, **settings)
            if started is not None:  # cron mails what a job prints: a line per restart
                click.echo(f"started agent {started.pid}: none ran for {target}, and its journal holds work")
            return
        info = daemon.start(target, **settings)
    _print(info)


@main.command()
@_path_option
@_state_dir_option
@_dir_option
def stop(path: str | None, state_dir: str | None, directory: str | None) -> None:
    """Stop the running agent (its journal keeps every job for the next one)."""
    from milex_agent import daemon

    with _errors_shown():
        info = daemon.stop(_directory(path, directory, state_dir))
    click.echo("no agent was running" if info is None else f"stopped agent {info.pid}")


@main.command()
@_path_option
@_state_dir_option
@_dir_option
def status(path: str | None, state_dir: str | None, directory: str | None) -> None:
    """Print the running agent's info as JSON; exit 3 when none runs."""
    from milex_agent import daemon

    with _errors_shown():
        info = daemon.read_info(_directory(path, directory, state_dir))
    if info is None:
        click.echo('{"running": false}')
        sys.exit(3)
    _print(info)


@main.command()
@click.option("--path", envvar="MILEX", help="The machine's Milex path (default: $MILEX).")
@_dir_option
@click.option(
    "--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for the answer."
)
def ping(path: str | None, directory: str | None, timeout: float) -> None:
    """Ask the running agent for its version over its socket; exit 1 when it does not answer.

    The container image's health check.
    """
    from milex_agent.daemon import read_info
    from milex_common.connection import AgentConnection
    from milex_common.errors import MilexError

    target = _directory(path, directory)
    info = read_info(target)
    if info is None:
        click.echo(f"no agent is running for {target}", err=True)
        sys.exit(1)
    try:
        with AgentConnection(f"ipc://{info.socket}", timeout=timeout) as connection:
            reply = connection.hello(VERSION)
    except MilexError as error:
        click.echo(f"the agent of {target} (pid {info.pid}) does not answer: {error}", err=True)
        sys.exit(1)
    click.echo(reply.agent_version)


@main.group()
def watchdog() -> None:
    """The agent's watchdog: a line of your crontab on this node that starts the agent again when it
    is not running and has work left (`milex agent watchdog` installs it from the laptop)."""


@watchdog.command("install")
@_path_option
@_state_dir_option
@_dir_option
@click.option("--command", required=True, help="What cron runs every minute: this agent's `start --if-work`.")
def watchdog_install(path: str | None, state_dir: str | None, directory: str | None, command: str) -> None:
    """Put the watchdog line in your crontab, in place of an earlier one of this agent."""
    from milex_agent.watchdog import install

    with _errors_shown():
        click.echo(install(command, _directory(path, directory, state_dir)))


@watchdog.command("remove")
@_path_option
@_state_dir_option
@_dir_option
def watchdog_remove(path: str | None, state_dir: str | None, directory: str | None) -> None:
    """Take this agent's watchdog line out of your crontab; your other lines stay."""
    from milex_agent.watchdog import remove

    with _errors_shown():
        click.echo(remove(_directory(path, directory, state_dir)))


@watchdog.command("status")
@_path_option
@_state_dir_option
@_dir_option
def watchdog_status(path: str | None, state_dir: str | None, directory: str | None) -> None:
    """Print this agent's watchdog line; exit 3 when your crontab has none."""
    from milex_agent.watchdog import entry_in, read_crontab

    with _errors_shown():
        line = entry_in(read_crontab(), _directory(path, directory, state_dir))
    if line is None:
        click.echo("no watchdog")
        sys.exit(3)
    click.echo(line)


@main.command()
@click.option("--socket", "socket_path", required=True, help="The agent's unix socket.")
def bridge(socket_path: str) -> None:
    """Relay stdin/stdout to the agent's socket (for SSH servers that forbid socket forwarding)."""
    from milex_agent.bridge import relay

    sys.exit(relay(socket_path))


if __name__ == "__main__":
    main()
