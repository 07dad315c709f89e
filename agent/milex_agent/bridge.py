"""Relaying bytes between this process's stdin/stdout and a unix socket, both ways."""

from __future__ import annotations

import os
import selectors
import socket
import sys


def relay(socket_path: str) -> int:
    """Pipe stdin to the socket and the socket to stdout until either side closes; exit status."""
    try:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(socket_path)
    except OSError as error:
        print(f"milex-agent bridge: cannot connect to {socket_path}: {error.strerror}", file=sys.stderr)
        return 1
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    selector = selectors.DefaultSelector()
    selector.register(stdin, selectors.EVENT_READ)
    selector.register(connection, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj == stdin:
                data = os.read(stdin, 65536)
                if not data:
                    connection.shutdown(socket.SHUT_WR)
                    selector.unregister(stdin)
                    continue
                connection.sendall(data)
            else:
                data = connection.recv(65536)
                if not data:
                    return 0
                _write_all(stdout, data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
