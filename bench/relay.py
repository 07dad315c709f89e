"""A TCP delay line: `python -m bench.relay --to HOST:PORT --delay-ms D` prints the port it listens on
(127.0.0.1) and forwards every connection to HOST:PORT, each chunk written D ms after it arrived, in
both directions (a round trip costs 2 x D). The kernel here has no netem; this gives the benchmark a
laptop 2 x D away from its login node.

A delay line, not stop-and-wait: chunks are read as they come and each is written at its arrival
plus D, so order is kept and throughput is not limited. The client's connect() returns at once here,
where over a real link it takes a round trip, and the server accepts half a round trip after that:
so the client's bytes count as sent no earlier than 2 x D after the accept, the server's no earlier
than 3 x D, and the first bytes each way arrive when they would over the link. An end of stream is
carried like a chunk (a half-close); a connection whose both directions ended, or one that failed,
is closed on both sides. Run as a process of its own, so that its work never competes for the GIL
with what is being timed; `Relay` starts and stops one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CHUNK = 65536
CONNECT, ACCEPT = 2, 3  # one-way delays after the accept before each side can send (client, server)


async def _carry(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float, opens: float
) -> None:
    """Copy `reader` to `writer`, each chunk (and the end) written `delay` seconds after it was sent
    (its arrival here, or `opens` if it came earlier)."""
    loop = asyncio.get_running_loop()
    line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while chunk := await _due(line, loop):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    delivery = asyncio.create_task(deliver())
    try:
        while chunk := await reader.read(CHUNK):
            line.put_nowait((max(loop.time(), opens) + delay, chunk))
            if delivery.done():  # the other end is gone: stop reading, its failure is raised below
                break
    except BaseException:  # a reset, or the connection closed: nothing more is delivered
        delivery.cancel()
        raise
    line.put_nowait((max(loop.time(), opens) + delay, b""))
    await delivery


async def _due(line: asyncio.Queue[tuple[float, bytes]], loop: asyncio.AbstractEventLoop) -> bytes:
    """The next chunk of `line`, once its time has come (b"" for the end of the stream)."""
    due, chunk = await line.get()
    if (wait := due - loop.time()) > 0:
        await asyncio.sleep(wait)
    return chunk


async def _serve(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    target: tuple[str, int],
    delay: float,
) -> None:
    accepted = asyncio.get_running_loop().time()
    try:
        server_reader, server_writer = await asyncio.open_connection(*target)
    except OSError:
        client_writer.close()
        return
    directions = [
        asyncio.create_task(_carry(client_reader, server_writer, delay, accepted + CONNECT * delay)),
        asyncio.create_task(_carry(server_reader, client_writer, delay, accepted + ACCEPT * delay)),
    ]
    _, pending = await asyncio.wait(directions, return_when=asyncio.FIRST_EXCEPTION)
    for task in pending:  # one direction failed (a reset): the connection is over both ways
        task.cancel()
    for writer in (client_writer, server_writer):
        writer.close()
    await asyncio.gather(*directions, return_exceptions=True)


async def _relay(target: tuple[str, int], delay: float) -> None:
    server = await asyncio.start_server(
        lambda reader, writer: _serve(reader, writer, target, delay), "127.0.0.1", 0
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__.splitlines()[0])
    parser.add_argument("--to", type=_address, required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay added to every chunk")
    options = parser.parse_args(argv)
    if options.delay_ms < 0:
        parser.error(f"--delay-ms must be 0 or more, got {options.delay_ms}")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_relay(options.to, options.delay_ms / 1000))


@dataclass
class Relay:
    """A relay process, started with `Relay.start` and ended with `close`."""

    process: subprocess.Popen[str]
    port: int

    @classmethod
    def start(cls, to: tuple[str, int], delay_ms: float) -> Relay:
        argv = [sys.executable, "-m", "bench.relay", "--to", f"{to[0]}:{to[1]}", "--delay-ms", str(delay_ms)]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.strip().isdigit():
            process.kill()
            process.wait()
            process.stdout.close()
            raise RuntimeError(f"the relay exited ({process.returncode}) without naming its port")
        return cls(process, int(line))

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        if self.process.stdout:
            self.process.stdout.close()


if __name__ == "__main__":
    main()
