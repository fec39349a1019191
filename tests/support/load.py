"""Many connections at once, from several processes: this machine lets one process open 20,000
files at most, and a test of 15,000 WebSockets needs more than that between clients and echo.

    python -m tests.support.load serve ADDRESS PORT
        an upstream "task": plain GET answered `ok` (kept alive), `Upgrade: websocket` answered
        101 and then every byte echoed back. Prints `listening` when it accepts.
    python -m tests.support.load ws|idle ADDRESS PORT COUNT SOURCE HOST
        COUNT connections to ADDRESS:PORT from the local address SOURCE (one per process, so
        that no two processes share ephemeral ports), each first a WebSocket handshake (ws) or a
        kept-alive GET (idle) with `Host: HOST`; prints one JSON line of what happened, then
        waits for a line on its standard input and sends on every connection that is still
        open one WebSocket frame (ws; the echo must come back byte for byte) or a second GET
        (idle), and prints a second JSON line.

Clients() runs several client processes and adds their counts up. Everything is plain asyncio
streams: the WebSocket handshake and one masked frame are all a test needs, and the echo
server forwards bytes, as a task behind a gateway would.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import json
import os
import resource
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OPENING_AT_ONCE = 64  # handshakes in flight per process: connections open one after the other
TIMEOUT = 20.0  # no answer within this long counts as a hang


def _nofile_max() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- the upstream ---------------------------------------------------------------------------


async def _serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in lines[1:] if line)}
            if headers.get("upgrade", "").lower() == "websocket":
                accept = base64.b64encode(hashlib.sha1(
                    headers["sec-websocket-key"].encode() + WS_GUID).digest()).decode()
                writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                             + accept.encode() + b"\r\n\r\n")
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                         b"Content-Length: 2\r\n\r\nok")
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, KeyError):
        pass
    finally:
        writer.close()


async def serve(address: str, port: int) -> None:
    server = await asyncio.start_server(_serve_one, address, port, backlog=4096)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


# -- the clients ----------------------------------------------------------------------------


def _kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    return type(exc).__name__


async def _response(reader: asyncio.StreamReader) -> int:
    """The status of one HTTP answer, its body read (Content-Length) when it has one."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            await reader.readexactly(int(value))
    return status


def _frame(i: int) -> bytes:
    """A masked WebSocket text frame (a client's) of a short message."""
    payload = f"message {i} from {os.getpid()}".encode()
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(
        b ^ mask[n % 4] for n, b in enumerate(payload))


class Client:
    def __init__(self, mode: str, address: str, port: int, source: str, host: str) -> None:
        self.mode, self.address, self.port, self.source, self.host = (
            mode, address, port, source, host)
        self.first: collections.Counter[str] = collections.Counter()
        self.second: collections.Counter[str] = collections.Counter()
        self.gate = asyncio.Semaphore(OPENING_AT_ONCE)

    def _request(self) -> bytes:
        if self.mode == "ws":
            key = base64.b64encode(os.urandom(16)).decode()
            return (f"GET /ws HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n").encode()
        return f"GET / HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()

    async def open(self, i: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        async with self.gate:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    self.address, self.port, local_addr=(self.source, 0)), TIMEOUT)
                writer.write(self._request())
                status = await asyncio.wait_for(_response(reader), TIMEOUT)
            except Exception as exc:  # every failure is counted by its kind
                self.first[_kind(exc)] += 1
                return None
        if status != (101 if self.mode == "ws" else 200):
            self.first[f"status {status}"] += 1
            writer.close()
            return None
        self.first["ok"] += 1
        return reader, writer

    async def again(self, i: int, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                    ) -> None:
        reader, writer = conn
        try:
            if self.mode == "ws":
                frame = _frame(i)
                writer.write(frame)
                echoed = await asyncio.wait_for(reader.readexactly(len(frame)), TIMEOUT)
                self.second["ok" if echoed == frame else "garbled"] += 1
            else:
                writer.write(self._request())
                status = await asyncio.wait_for(_response(reader), TIMEOUT)
                self.second["ok" if status == 200 else f"status {status}"] += 1
        except Exception as exc:
            self.second[_kind(exc)] += 1
        finally:
            writer.close()

    async def run(self, count: int) -> None:
        conns = await asyncio.gather(*(self.open(i) for i in range(count)))
        print(json.dumps(dict(self.first)), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await asyncio.gather(*(self.again(i, c) for i, c in enumerate(conns) if c is not None))
        print(json.dumps(dict(self.second)), flush=True)


class Clients:
    """`processes` client processes sharing `count` connections; each its own source address
    (127.0.N.1 from `first_source`)."""

    def __init__(self, mode: str, port: int, count: int, host: str, processes: int = 4,
                 address: str = "127.0.0.1", first_source: int = 60) -> None:
        root = Path(__file__).resolve().parents[2]
        share = [count // processes + (1 if i < count % processes else 0)
                 for i in range(processes)]
        self.procs = [subprocess.Popen(
            [sys.executable, "-m", "tests.support.load", mode, address, str(port), str(n),
             f"127.0.{first_source + i}.1", host],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root)
            for i, n in enumerate(share)]

    def _lines(self) -> collections.Counter[str]:
        total: collections.Counter[str] = collections.Counter()
        for p in self.procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if not line:
                raise AssertionError(f"a client process ended: {p.wait()}")
            total.update(json.loads(line))
        return total

    def opened(self) -> collections.Counter[str]:
        """How the first handshake or request of each connection went, by outcome."""
        return self._lines()

    def again(self) -> collections.Counter[str]:
        """Every open connection used once more (an echo, a second request), by outcome."""
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        try:
            return self._lines()
        finally:
            self.close()

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()

    def __enter__(self) -> Clients:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EchoServer:
    """`serve` in a process of its own (it holds one file per connection)."""

    def __init__(self, address: str, port: int) -> None:
        root = Path(__file__).resolve().parents[2]
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.load", "serve",
                                      address, str(port)], stdout=subprocess.PIPE, text=True,
                                     cwd=root)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "listening":
            raise AssertionError(f"the echo server did not start: {self.proc.wait()}")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def main(argv: Sequence[str]) -> None:
    _nofile_max()
    mode, args = argv[0], argv[1:]
    run: Any
    if mode == "serve":
        run = serve(args[0], int(args[1]))
    elif mode in ("ws", "idle"):
        run = Client(mode, args[0], int(args[1]), args[3], args[4]).run(int(args[2]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    asyncio.run(run)


if __name__ == "__main__":
    main(sys.argv[1:])
