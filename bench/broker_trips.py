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
Then the same as a new Python process each (`python -c`: its start, the connection's imports, the
steps), from its spawn to its exit: what a light command pays on top of Python's own start.
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
from tests.unit.ssh_fakes import SocketChannel


class DelayedSession:
    """An SSH session over the relay: channels are connections through it, a check one RTT."""

    mode, connected_at, last_failure, is_connected = "streamlocal", 1.0, "", True

    def __init__(self, port: int, rtt: float) -> None:
        self.port, self.rtt = port, rtt

    def open_streamlocal(self, path: str) -> SocketChannel:
        return SocketChannel(socket.create_connection(("127.0.0.1", self.port)))

    def ensure_live(self, fresh: float = 0.0) -> None:
        time.sleep(self.rtt)


PROCESS = """
import sys
from milex_common.connection import AgentConnection
from milex_common.protocol import Status, StatusReply
connection = AgentConnection(sys.argv[1])
connection.hello("bench")
connection.request(Status(), expect=StatusReply)
"""


def timed_call(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def in_a_process(endpoint: str) -> float:
    """Seconds from a new Python's spawn to its exit, having connected, greeted and asked."""
    import subprocess
    import sys

    return timed_call(lambda: subprocess.run([sys.executable, "-c", PROCESS, endpoint], check=True))


Samples = dict[str, dict[str, list[float]]]  # by way (by channel, brokered), by step


def greet_and_ask(connection: AgentConnection) -> tuple[float, float]:
    """Seconds of the Hello (with the connection's making, which it waits for) and of a request."""
    return (
        timed_call(lambda: connection.hello("bench")),
        timed_call(lambda: connection.request(Status(), expect=StatusReply)),
    )


def in_this_process(session: DelayedSession, ways: dict[str, str], reps: int, samples: Samples) -> None:
    """Each way's steps timed on a new AgentConnection of this process, `reps` times after a warm-up."""
    for number in range(reps + 1):  # the first of each: warm-up, the broker's connection made
        for way, endpoint in ways.items():
            steps: dict[str, float] = {}
            if way == "by channel":
                steps["link check (keepalive)"] = timed_call(session.ensure_live)
            with AgentConnection(endpoint) as connection:
                steps["channel, handshake and Hello"], steps["request"] = greet_and_ask(connection)
            if number:
                for name, seconds in {**steps, "total": sum(steps.values())}.items():
                    samples[way].setdefault(name, []).append(seconds)


def in_new_processes(session: DelayedSession, ways: dict[str, str], reps: int, samples: Samples) -> None:
    """Each way from a new Python process; by channel, the link checked first (as the command does)."""
    for number in range(reps + 1):
        for way, endpoint in ways.items():
            check = timed_call(session.ensure_live) if way == "by channel" else 0.0
            seconds = check + in_a_process(endpoint)
            if number:
                samples[way].setdefault("new process, spawn to exit", []).append(seconds)


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
    files = TunnelFiles("m", directory)
    service = TunnelService(session, RemoteAgent(None, "agent"), status, files, 600)  # type: ignore[arg-type]
    spliced = directory / "m.sock"
    listener = _listen(spliced)
    broker = Broker(
        directory / "m.zmq", f"ipc://{spliced}", client_version="bench", on_request=service.check_meanwhile
    )
    service.broker = broker
    threading.Thread(target=service.serve, args=(listener,), daemon=True).start()
    threading.Thread(target=broker.serve, daemon=True).start()
    samples: Samples = {"by channel": {}, "brokered": {}}
    ways = {"by channel": f"ipc://{spliced}", "brokered": f"ipc://{broker.local}"}
    try:
        in_this_process(session, ways, options.reps, samples)
        in_new_processes(session, ways, options.reps, samples)
    finally:
        broker.stop.set()
        service.stop.set()
        agent.stopping = True
        relay.close()
    print(f"RTT {options.rtt_ms:.0f} ms, {options.reps} new connections each, medians:")
    for way, steps_taken in samples.items():
        for name, values in steps_taken.items():
            median = statistics.median(values)
            trips = f"  {median / rtt:4.1f} RTT" if rtt else ""
            print(f"  {way:10s}  {name:30s} {median * 1000:7.1f} ms{trips}")


if __name__ == "__main__":
    main()
