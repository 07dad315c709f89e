"""Round trips of a new client process's connection to an agent over a delayed link, with and without
the tunnel's broker: `python -m bench.broker_trips [--rtt-ms 80] [--reps 10]`. No SLURM, no sshd.

The agent (a fake scheduler, tests/unit/agent_fakes.py) listens on TCP; a bench/relay.py delay line
stands for the link, and each connection through it for an SSH channel (the relay charges a
connection's opening one round trip, as a channel's confirmation costs). The tunnel service runs as
in `milex tunnel up`, its SSH session a stand-in that opens such connections; its link check (a
keepalive, one round trip over SSH) is a sleep of one RTT. Steps timed, as a warm `milex-run` pays
them:

- by channel (before the broker): the check, a new connection to the spliced socket (a channel
  each), ZeroMQ's handshake, the Hello, the request;
- brokered: a new connection to the broker's socket, the Hello (answered there), the request.

Each sample is a new AgentConnection, as each `milex-run` is a new process; the request is a Status.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import zmq

from bench.relay import Relay
from milex.machine.tunnel.broker import Broker
from milex.machine.tunnel.control import TunnelFiles, TunnelStatus
from milex.machine.tunnel.service import RemoteAgent, TunnelService, _listen
from milex_agent.journal import Journal
from milex_agent.lifetime import Lifetime
from milex_agent.server import AgentServer
from milex_common.connection import AgentConnection
from milex_common.protocol import Status, StatusReply
from tests.unit.agent_fakes import FakeScheduler, make_agent


class TcpChannel:
    """What the splice needs of an SSH channel, over a TCP connection through the relay."""

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port))

    def recv(self, size: int) -> bytes:
        return self.socket.recv(size)

    def sendall(self, data: bytes) -> None:
        self.socket.sendall(data)

    def shutdown_write(self) -> None:
        self.socket.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.socket.close()


class DelayedSession:
    """An SSH session over the relay: channels are connections through it, a check one RTT."""

    mode, connected_at, last_failure, is_connected = "streamlocal", 1.0, "", True

    def __init__(self, port: int, rtt: float) -> None:
        self.port, self.rtt = port, rtt

    def open_streamlocal(self, path: str) -> TcpChannel:
        return TcpChannel(self.port)

    def ensure_live(self, fresh: float = 0.0) -> None:
        time.sleep(self.rtt)


def timed(steps: list[tuple[str, Callable[[], object]]], into: dict[str, list[float]]) -> None:
    for name, step in steps:
        started = time.perf_counter()
        step()
        into.setdefault(name, []).append(time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.broker_trips", description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-ms", type=float, default=80.0)
    parser.add_argument("--reps", type=int, default=10)
    options = parser.parse_args(argv)
    rtt = options.rtt_ms / 1000
    directory = Path(tempfile.mkdtemp(prefix="milex-trips-"))
    journal = Journal(directory / "journal.sqlite")
    agent = make_agent(journal, FakeScheduler())
    server = AgentServer(agent, "tcp://127.0.0.1:0", lifetime=Lifetime(idle_exit=0))
    port = int(server.socket.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1])
    threading.Thread(target=server.serve, daemon=True).start()
    relay = Relay.start(("127.0.0.1", port), delay_ms=options.rtt_ms / 2)
    session = DelayedSession(relay.port, rtt)
    status = TunnelStatus(machine="m", state="up", mode="streamlocal", connected_at=1.0)
    service = TunnelService(session, RemoteAgent(None, "agent"), status, TunnelFiles("m", directory), 600)  # type: ignore[arg-type]
    spliced = directory / "m.sock"
    listener = _listen(spliced)
    broker = Broker(
        directory / "m.zmq", f"ipc://{spliced}", client_version="bench", on_request=service.check_meanwhile
    )
    service.broker = broker
    threading.Thread(target=service.serve, args=(listener,), daemon=True).start()
    threading.Thread(target=broker.serve, daemon=True).start()
    samples: dict[str, dict[str, list[float]]] = {"by channel": {}, "brokered": {}}
    try:
        for number in range(options.reps + 1):  # the first of each: warm-up, the broker's connection
            for way, endpoint in (("by channel", f"ipc://{spliced}"), ("brokered", f"ipc://{broker.local}")):
                connection = AgentConnection(endpoint)
                steps: list[tuple[str, Callable[[], object]]] = []
                if way == "by channel":
                    steps.append(("link check (keepalive)", lambda: session.ensure_live()))
                steps += [
                    ("channel, handshake and Hello", lambda c=connection: c.hello("bench")),  # type: ignore[misc]
                    ("request", lambda c=connection: c.request(Status(), expect=StatusReply)),  # type: ignore[misc]
                ]
                into: dict[str, list[float]] = {}
                timed(steps, into)
                connection.close()
                if number:
                    for name, (seconds,) in into.items():
                        samples[way].setdefault(name, []).append(seconds)
                    samples[way].setdefault("total", []).append(sum(s for (s,) in into.values()))
    finally:
        broker.stop.set()
        service.stop.set()
        agent.stopping = True
        relay.close()
    print(f"RTT {options.rtt_ms:.0f} ms, {options.reps} new connections each, medians:")
    for way, steps_taken in samples.items():
        for name, values in steps_taken.items():
            median = statistics.median(values)
            print(f"  {way:10s}  {name:30s} {median * 1000:7.1f} ms  {median / rtt:4.1f} RTT")


if __name__ == "__main__":
    main()
