"""A real HTTP/3 client for the tests (aioquic): one QUIC connection to a gateway's HTTPS port
over UDP, named for a host (SNI) and checking its certificate, and GET requests on it."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent


@dataclass
class H3Response:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class _Client(QuicConnectionProtocol):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._h3 = H3Connection(self._quic)
        self._answers: dict[int, tuple[H3Response, asyncio.Future[H3Response]]] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        for ev in self._h3.handle_event(event):
            self._h3_event(ev)

    def _h3_event(self, ev: H3Event) -> None:
        if not isinstance(ev, HeadersReceived | DataReceived) or ev.stream_id not in self._answers:
            return
        response, done = self._answers[ev.stream_id]
        if isinstance(ev, HeadersReceived):
            for name, value in ev.headers:
                if name == b":status":
                    response.status = int(value)
                else:
                    response.headers[name.decode()] = value.decode()
        else:
            response.body += ev.data
        if ev.stream_ended and not done.done():
            done.set_result(response)

    async def get(self, authority: str, path: str = "/",
                  headers: dict[str, str] | None = None) -> H3Response:
        stream = self._quic.get_next_available_stream_id()
        done: asyncio.Future[H3Response] = asyncio.get_running_loop().create_future()
        self._answers[stream] = (H3Response(), done)
        self._h3.send_headers(stream, [
            (b":method", b"GET"), (b":scheme", b"https"), (b":authority", authority.encode()),
            (b":path", path.encode()),
            *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items())],
            end_stream=True)
        self.transmit()
        return await asyncio.wait_for(done, 10)


def h3_get(port: int, sni: str, ca_pem: bytes, path: str = "/", authority: str | None = None,
           headers: dict[str, str] | None = None, timeout: float = 10) -> H3Response:
    """One request over a new QUIC connection to 127.0.0.1:port (UDP); raises ConnectionError
    (or TimeoutError) when the handshake is refused."""
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=sni,
                               verify_mode=ssl.CERT_REQUIRED)
    config.load_verify_locations(cadata=ca_pem)

    async def run() -> H3Response:
        async with connect("127.0.0.1", port, configuration=config,
                           create_protocol=_Client) as client:
            assert isinstance(client, _Client)
            return await client.get(authority or sni, path, headers)

    async def bounded() -> H3Response:
        return await asyncio.wait_for(run(), timeout)

    return asyncio.run(bounded())
