"""TCP tasks and clients for the tests of tcp routes: an echo server on its own loopback address,
optionally speaking TLS with a certificate of its own, optionally reading the PROXY protocol.

A task greets each connection with one line, `NAME` (and with the PROXY protocol the line it
received: `NAME PROXY TCP4 ...`), then sends back every byte it gets.
"""

from __future__ import annotations

import socket
import socketserver
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from tests.support.tlsca import Issued


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.settimeout(10)
        try:
            if self.server.tls is not None:
                conn = self.server.tls.wrap_socket(conn, server_side=True)
            with self.server.lock:
                self.server.connections += 1
            greeting = self.server.name
            if self.server.proxy_protocol:
                greeting += " " + _read_line(conn)
            conn.sendall(greeting.encode() + b"\n")
            while data := conn.recv(4096):
                conn.sendall(data)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()


def _read_line(conn: socket.socket) -> str:
    line = b""
    while not line.endswith(b"\r\n") and len(line) < 256:
        byte = conn.recv(1)
        if not byte:
            break
        line += byte
    return line.decode(errors="replace").strip()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    name: str
    tls: ssl.SSLContext | None
    proxy_protocol: bool
    connections: int
    lock: threading.Lock


class EchoTask:
    """A task of a TCP service on `address`:`port`; `certificate`: it terminates TLS itself."""

    def __init__(self, name: str, address: str, port: int, certificate: Issued | None = None,
                 proxy_protocol: bool = False) -> None:
        self.name, self.address, self.port = name, address, port
        self.server = _Server((address, port), _Handler)
        self.server.name = name
        self.server.proxy_protocol = proxy_protocol
        self.server.connections = 0
        self.server.lock = threading.Lock()
        self.server.tls = None
        if certificate is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            with tempfile.TemporaryDirectory() as d:
                crt, key = certificate.write(Path(d), "task")
                ctx.load_cert_chain(crt, key)
            self.server.tls = ctx
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def connections(self) -> int:
        return self.server.connections

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass(frozen=True)
class Exchange:
    greeting: str  # the task's first line: its name (and the PROXY line it got)
    echoed: bytes
    certificate: bytes | None  # the server certificate the client saw (DER), over TLS


class Refused(Exception):
    """The connection was closed (or reset) before a task greeted it, or TLS failed."""


def exchange(port: int, payload: bytes = b"ping", *, address: str = "127.0.0.1",
             source: str | None = None, tls: ssl.SSLContext | None = None,
             server_hostname: str | None = None, timeout: float = 5.0) -> Exchange:
    """Connect to the gateway, read the task's greeting, send `payload` and read it back."""
    sock = socket.create_connection((address, port), timeout=timeout,
                                    source_address=(source, 0) if source else None)
    conn: socket.socket = sock
    try:
        cert = None
        if tls is not None:
            try:
                conn = tls.wrap_socket(sock, server_hostname=server_hostname)
            except (OSError, ssl.SSLError) as exc:
                raise Refused(f"TLS handshake failed: {exc!r}") from exc
            cert = conn.getpeercert(binary_form=True)
        with conn.makefile("rb") as reader:
            try:
                line = reader.readline()
            except (ConnectionResetError, ssl.SSLError) as exc:
                raise Refused(f"closed before a greeting: {exc!r}") from exc
        if not line.endswith(b"\n"):
            raise Refused(f"closed before a greeting (got {line!r})")
        conn.sendall(payload)
        echoed = b""
        while len(echoed) < len(payload):
            chunk = conn.recv(4096)
            if not chunk:
                break
            echoed += chunk
        return Exchange(line.decode().strip(), echoed, cert)
    finally:
        conn.close()
        sock.close()
