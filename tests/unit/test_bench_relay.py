"""bench/relay.py, the benchmark's delay line, as its own process in front of a local echo server."""

from __future__ import annotations

import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from bench.relay import Relay

DELAY = 0.05  # seconds each way


class Echo(socketserver.BaseRequestHandler):
    """Sends back what it receives; closes when the client does, or at once on b"bye"."""

    def handle(self) -> None:
        while (data := self.request.recv(65536)) and data != b"bye":
            self.request.sendall(data)


@pytest.fixture
def relay() -> Iterator[Relay]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    relay = Relay.start(("127.0.0.1", server.server_address[1]), delay_ms=DELAY * 1000)
    try:
        yield relay
    finally:
        relay.close()
        server.shutdown()
        server.server_close()


def connect(relay: Relay) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def receive(client: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size and (chunk := client.recv(65536)):
        data += chunk
    return data


def test_bytes_arrive_intact_and_in_order_without_waiting_a_round_trip_per_chunk(relay: Relay) -> None:
    chunks = [os.urandom(4096) for _ in range(100)]
    with connect(relay) as client:
        start = time.monotonic()

        def send() -> None:
            for chunk in chunks:  # a stop-and-wait relay would take 100 round trips: 10 s
                client.sendall(chunk)

        sender = threading.Thread(target=send)
        sender.start()
        echoed = receive(client, 4096 * len(chunks))
        took = time.monotonic() - start
        sender.join()

    assert echoed == b"".join(chunks)
    assert 4 * DELAY <= took < 20 * DELAY


def test_a_round_trip_takes_twice_the_delay_and_the_first_one_the_handshake_too(relay: Relay) -> None:
    start = time.monotonic()
    with connect(relay) as client:
        client.sendall(b"hello")
        assert receive(client, 5) == b"hello"
        first = time.monotonic() - start
        trips = []
        for number in range(3):
            sent = time.monotonic()
            client.sendall(b"ping %d" % number)
            assert receive(client, 6) == b"ping %d" % number
            trips.append(time.monotonic() - sent)

    assert first >= 4 * DELAY  # connect (a round trip), then the request's own
    assert all(2 * DELAY <= trip < 2 * DELAY + 0.5 for trip in trips), trips


def test_closing_one_side_closes_the_other(relay: Relay) -> None:
    with connect(relay) as client:  # the client ends: the server sees it, and closes in turn
        client.sendall(b"last words")
        client.shutdown(socket.SHUT_WR)
        assert receive(client, 100) == b"last words"
        assert client.recv(100) == b""
    with connect(relay) as client:  # the server ends: the client sees the end of the stream
        client.sendall(b"bye")
        assert client.recv(100) == b""


def test_a_server_that_is_not_there_closes_the_client() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]  # bound, not listening: connections are refused
        relay = Relay.start(("127.0.0.1", port), delay_ms=0)
        try:
            with connect(relay) as client:
                assert client.recv(100) == b""
        finally:
            relay.close()
