"""What tests and benchmarks put in place of a paramiko channel: a connected socket."""

from __future__ import annotations

import socket


class SocketChannel:
    """A socket standing in for a paramiko channel: the calls the tunnel's splice makes, no more."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.recv = sock.recv
        self.cut = False  # what is sent is lost, as on a link that died

    def sendall(self, data: bytes) -> None:
        if not self.cut:
            self.socket.sendall(data)

    @classmethod
    def to_unix(cls, path: str) -> SocketChannel:
        """A channel to the unix socket at `path` (a streamlocal forward's end)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        return cls(sock)

    def shutdown_write(self) -> None:
        self.socket.shutdown(socket.SHUT_WR)

    def recv_stderr_ready(self) -> bool:
        return False

    def close(self) -> None:
        self.socket.close()
