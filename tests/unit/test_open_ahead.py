"""A remote machine's connection opened ahead, in a thread, while the command goes on: the shared
connection is that one, its error is raised where the connection is used, and nothing is opened
ahead where a tunnel would have to start or the machine is local."""

from __future__ import annotations

import threading

import pytest

from milex.config.file import load_config
from milex.machine import endpoint
from milex.machine.ssh.errors import LinkDown, PromptUnavailable, TunnelError, TunnelStopping
from milex.machine.tunnel import control
from milex.machine.tunnel.control import TunnelStatus
from tests.unit.served import Served


@pytest.fixture
def opened_in(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads that opened a connection; `connect` stays the real one."""
    threads: list[str] = []
    connect = endpoint.connect

    def noting(machine, **options):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        return connect(machine, **options)

    monkeypatch.setattr(endpoint, "connect", noting)
    return threads


def tunnel(monkeypatch: pytest.MonkeyPatch, state: str) -> None:
    monkeypatch.setattr(control, "tunnel_status", lambda machine: TunnelStatus(machine=machine, state=state))


def test_a_remote_machine_whose_tunnel_is_up_is_greeted_ahead_and_that_connection_is_used(
    milex_config, running: Served, opened_in: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tunnel(monkeypatch, "up")
    monkeypatch.setattr(endpoint, "endpoint", lambda machine: running.endpoint)
    cluster = load_config().machine("cluster")
    endpoint.open_ahead(cluster)
    connection = endpoint.shared_connection(cluster)
    assert opened_in and opened_in[0] != threading.current_thread().name  # opened in its own thread
    assert connection.features  # greeted: the agent said what it can do
    assert endpoint.shared_connection(cluster) is connection and len(opened_in) == 1


def test_the_error_of_a_connection_opened_ahead_is_raised_where_it_is_used(
    milex_config, opened_in: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tunnel(monkeypatch, "up")

    def down(machine):  # type: ignore[no-untyped-def]
        raise LinkDown("the link to cluster is down: no route to host.")

    monkeypatch.setattr(endpoint, "endpoint", down)
    cluster = load_config().machine("cluster")
    endpoint.open_ahead(cluster)
    with pytest.raises(LinkDown, match="no route to host"):
        endpoint.shared_connection(cluster)
    assert len(opened_in) == 1  # not tried again in the command's thread


@pytest.mark.parametrize(
    ("machine", "state"), [("cluster", "down"), ("cluster", "starting"), ("local", "up")]
)
def test_nothing_is_opened_ahead_where_a_tunnel_would_start_or_the_machine_is_local(
    milex_config, opened_in: list[str], monkeypatch: pytest.MonkeyPatch, machine: str, state: str
) -> None:
    tunnel(monkeypatch, state)
    endpoint.open_ahead(load_config().machine(machine))
    assert endpoint._opening == {} and opened_in == []


@pytest.mark.parametrize(
    ("broker", "link_error", "checked", "endpoint_is"),
    [
        ("/run/m.zmq", "", False, "ipc:///run/m.zmq"),  # the broker: no check before the request
        ("/run/m.zmq", "timed out", True, "ipc:///run/m.zmq"),  # its last attempt failed: checked
        ("", "", True, "ipc:///run/m.sock"),  # a tunnel of an earlier release: a channel each, checked
    ],
)
def test_a_command_goes_to_the_tunnels_broker_and_checks_the_link_first_only_when_in_doubt(
    milex_config,
    monkeypatch: pytest.MonkeyPatch,
    broker: str,
    link_error: str,
    checked: bool,
    endpoint_is: str,
) -> None:
    status = TunnelStatus(machine="cluster", state="up", local_socket="/run/m.sock", broker_socket=broker,
                          link_error=link_error)  # fmt: skip
    checks: list[str] = []
    monkeypatch.setattr(control, "start_tunnel", lambda machine, socket, **options: status)
    monkeypatch.setattr(control, "check_link", checks.append)
    assert endpoint.remote_endpoint(load_config().machine("cluster")) == endpoint_is
    assert checks == (["cluster"] if checked else [])


@pytest.mark.parametrize("found", [PromptUnavailable("the server asks 'Code:'"), TunnelStopping("closed")])
def test_a_tunnel_that_needs_a_code_or_is_stopping_is_replaced_by_one_that_asks_here(
    milex_config, monkeypatch: pytest.MonkeyPatch, found: TunnelError
) -> None:
    old = TunnelStatus(machine="cluster", state="up", broker_socket="/run/old.zmq", link_error="reset")
    new = TunnelStatus(machine="cluster", state="up", broker_socket="/run/new.zmq")
    started: list[TunnelStatus] = []
    stopped: list[str] = []

    def start(machine: str, socket: str, **options: object) -> TunnelStatus:
        started.append(new if started else old)
        return started[-1]

    def check(machine: str) -> None:
        raise found

    monkeypatch.setattr(control, "start_tunnel", start)
    monkeypatch.setattr(control, "check_link", check)
    monkeypatch.setattr(control, "stop_tunnel", stopped.append)
    assert endpoint.remote_endpoint(load_config().machine("cluster")) == "ipc:///run/new.zmq"
    assert (started, stopped) == ([old, new], ["cluster"])
