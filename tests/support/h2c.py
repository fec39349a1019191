"""A small HTTP/2 server without TLS (prior knowledge, as nginx's `proxy_http_version 2` speaks
it), on python-hyper's h2: every request is answered with its name, the protocol it came over
and the path, so a test sees that the gateway spoke HTTP/2 to it."""

from __future__ import annotations

import socket
import threading

import h2.config
import h2.connection
import h2.events
import h2.exceptions


class H2cServer:
    def __init__(self, name: str, address: str, port: int) -> None:
        self.name = name
        self.requests = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((address, port))
        self._sock.listen(64)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        h2conn.initiate_connection()
        conn.sendall(h2conn.data_to_send())
        paths: dict[int, str] = {}
        with conn:
            while data := self._recv(conn):
                try:
                    events = h2conn.receive_data(data)
                except h2.exceptions.ProtocolError:  # not HTTP/2 (HTTP/1.1): hang up
                    return
                for event in events:
                    if isinstance(event, h2.events.RequestReceived):
                        headers = {k.decode() if isinstance(k, bytes) else k:
                                   v.decode() if isinstance(v, bytes) else v
                                   for k, v in event.headers}
                        paths[event.stream_id] = headers.get(":path", "")
                    elif isinstance(event, h2.events.StreamEnded):
                        self.requests += 1
                        body = f"{self.name} HTTP/2 {paths.pop(event.stream_id, '')}".encode()
                        h2conn.send_headers(event.stream_id, [
                            (":status", "200"), ("content-type", "text/plain"),
                            ("content-length", str(len(body)))])
                        h2conn.send_data(event.stream_id, body, end_stream=True)
                    elif isinstance(event, h2.events.DataReceived):
                        h2conn.acknowledge_received_data(event.flow_controlled_length,
                                                         event.stream_id)
                conn.sendall(h2conn.data_to_send())

    @staticmethod
    def _recv(conn: socket.socket) -> bytes:
        try:
            return conn.recv(65536)
        except OSError:
            return b""

    def stop(self) -> None:
        self._sock.close()
