"""The agent's own DNS server, on loopback: nginx's `resolver` points here, not at --nameserver.

nginx looks the upstreams' names up itself (`server tasks.web:8888 resolve`). Were it to ask
Docker's DNS, the task-network filter (--task-networks, drivers/discovery.py) would screen
the agent's answers only, and a nameserver that answers nginx differently (nginx keeps one
source port; the agent asks from a fresh one every round) or at random would send traffic to
addresses the filter refuses. So nginx asks the agent, which answers from its discovery:

- a name discovery knows (a service's `tasks.NAME`, a `host:` target's name): the addresses it
  accepted, with a TTL of 0 (nginx asks again a second later) while the agent looks every name
  up each cycle; with more names than --dns-lookups-per-second looks up in a cycle, the TTL is
  the time until the agent looks that name up again (nginx's asking sooner would only get the
  same answer: at 1,000 services and 200 lookups a second, a fifth of the queries). Lookups
  failing: the last known addresses, which discovery keeps (stale), so nginx keeps them too,
  also after a restart.
  No task (NXDOMAIN or every address refused): NXDOMAIN, on which nginx drops its peers;
  never answered yet: SERVFAIL, on which nginx keeps what it has and asks again in a second
  (ngx_http_upstream_zone_module.c: only NXDOMAIN removes peers);
- a known name whose last lookup is not fresh, when --dns-lookups-per-second has room (`asked`:
  the reconciler's look_again): looked up first, so that nginx learns of a task within its one
  second between questions and not a poll later; the answer waits ASKED_WAIT at most, then
  says what the agent knows;
- a `tasks.` name discovery does not know: SERVFAIL. It is never forwarded: the answer from
  outside for such a name is what the filter is for;
- any other name (an OCSP responder, for ssl_stapling): forwarded to --nameserver, its answer
  passed back unchanged. Those names are no tasks.

A reply is a function of the query's bytes (without its id), of the name's endpoints and of its
TTL, so replies are kept by those bytes and the TTL written into them when it changes: a query
asked again costs a dict lookup, not a parse. Parsing and building messages is dnspython's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Collection, Coroutine
from dataclasses import dataclass, replace

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from prometheus_client import CollectorRegistry, Counter

from agent.core.settings import HostPort
from agent.gateway.drivers.dnsquery import udp_with_fallback
from agent.gateway.model import Endpoints, Snapshot

log = logging.getLogger("agent.gateway.dnsserver")

# nginx re-resolves a name `valid` (its resolver's, else the TTL) + 1 s after an answer, in
# whole seconds: a TTL of 0 makes that every second (ngx_http_upstream_zone_resolve_handler)
TTL = 0  # while the agent looks every name up each cycle
UDP_SIZE = 512  # without EDNS; nginx sends none, and retries over TCP on a truncated answer
MAX_CACHED = 65536  # replies kept; past it the cache starts again (a client varying its flags)
MAX_FORWARDS = 32  # forwarded queries in flight; more are answered SERVFAIL
TCP_IDLE = 10.0  # seconds a TCP client may stay silent
ASKED_WAIT = 0.3  # seconds an answer waits for the lookup nginx's question started (< 1 s,
# nginx's resolver_timeout)


class ResolverError(OSError):
    """--resolver-listen cannot be bound."""


class ResolverMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.queries = Counter(
            "gateway_resolver_queries_total",
            "nginx's DNS queries answered by the agent: answered (addresses), nxdomain (no "
            "task), servfail (not known yet), forwarded (not a task: --nameserver answered), "
            "forward_failed, malformed",
            ["result"], registry=registry)


@dataclass(frozen=True)
class _Kept:
    """A reply kept by the bytes of its query: valid while the name's endpoints are the same."""

    name: str
    basis: tuple[tuple[str, ...], str]  # (addresses, state) it was built from
    ttl: int
    reply: bytes  # without the 2-byte id
    ttl_at: tuple[int, ...]  # where each answer's TTL is in `reply`

    def with_ttl(self, ttl: int) -> _Kept:
        reply = bytearray(self.reply)
        for at in self.ttl_at:
            reply[at:at + 4] = struct.pack("!I", ttl)
        return replace(self, ttl=ttl, reply=bytes(reply))


def _basis(endpoints: Endpoints) -> tuple[tuple[str, ...], str]:
    return endpoints.addresses, endpoints.state


def _skip_name(wire: bytes, at: int) -> int:
    """The offset past the (possibly compressed) name at `at`."""
    while wire[at]:
        if wire[at] & 0xC0 == 0xC0:
            return at + 2
        at += 1 + wire[at]
    return at + 1


def _ttl_offsets(wire: bytes) -> tuple[int, ...]:
    """Where the TTL of each answer record of a reply of one question is (minus the id)."""
    at = _skip_name(wire, 12) + 4  # the question: name, type, class
    offsets = []
    for _ in range(struct.unpack_from("!H", wire, 6)[0]):
        at = _skip_name(wire, at) + 4  # name, type, class
        offsets.append(at - 2)
        at += 6 + struct.unpack_from("!H", wire, at + 4)[0]  # ttl, rdlength, rdata
    return tuple(offsets)


def _wire(message: dns.message.Message, udp_size: int | None) -> bytes:
    """`message` as bytes; over UDP, truncated (TC, no records) when it does not fit."""
    try:
        return bytes(message.to_wire(max_size=udp_size or 65535))
    except dns.exception.TooBig:
        message.answer.clear()
        message.authority.clear()
        message.additional.clear()
        message.flags |= dns.flags.TC
        return bytes(message.to_wire())


def local_reply(query: dns.message.Message, snapshot: Snapshot, ttl: Callable[[str], int],
                ) -> tuple[dns.message.Message | None, str, str, int]:
    """(reply, result label, name, its TTL) from what discovery knows; reply None: forward
    the query."""
    reply = dns.message.make_response(query)
    reply.flags |= dns.flags.RA
    if query.opcode() != dns.opcode.QUERY:
        reply.set_rcode(dns.rcode.NOTIMP)
        return reply, "malformed", "", TTL
    if len(query.question) != 1 or query.question[0].rdclass != dns.rdataclass.IN:
        reply.set_rcode(dns.rcode.FORMERR if len(query.question) != 1 else dns.rcode.REFUSED)
        return reply, "malformed", "", TTL
    question = query.question[0]
    name = question.name.to_text(omit_final_dot=True)
    endpoints = snapshot.get(name)
    if endpoints is None:
        if not name.lower().startswith("tasks."):
            return None, "forwarded", name, TTL
        reply.set_rcode(dns.rcode.SERVFAIL)  # a service's name, not known (yet): never asked
        return reply, "servfail", name, TTL  # of the nameserver on nginx's behalf
    if not endpoints.addresses:
        rcode = dns.rcode.NXDOMAIN if endpoints.state == "none" else dns.rcode.SERVFAIL
        reply.set_rcode(rcode)
        return reply, "nxdomain" if rcode == dns.rcode.NXDOMAIN else "servfail", name, TTL
    reply.flags |= dns.flags.AA
    seconds = ttl(name)
    v6 = question.rdtype == dns.rdatatype.AAAA
    if question.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        addresses = [a for a in endpoints.addresses if (":" in a) == v6]
        if addresses:
            reply.answer.append(dns.rrset.from_text_list(
                question.name, seconds, dns.rdataclass.IN, question.rdtype, addresses))
    return reply, "answered", name, seconds  # (no record of that type: NOERROR, no data)


@dataclass(frozen=True)
class Asked:
    """A lookup of the name asked for, to be waited for before the answer (respond())."""

    lookup: Awaitable[None]


class LocalResolver:
    """Answers nginx's lookups on `listen` (UDP and TCP, one port) from `snapshot()`.

    The sockets are bound at once (so the address, port 0 included, is known before the first
    configuration is rendered) and served from start(). `looked_up` is told each name answered
    from discovery (readiness: nginx has asked for its upstreams). A free port is none of
    `avoid`: nginx binds the HTTPS port for UDP too (HTTP/3), and the kernel may hand that very
    number out as a free UDP port when it lies in the ephemeral range. `ttl` gives a name's
    time to live (the reconciler's answer_ttl; TTL without it); `asked`, a lookup of a name
    nginx asks for, to be waited for before answering (None: none is due)."""

    def __init__(self, listen: HostPort, snapshot: Callable[[], Snapshot],
                 nameserver: HostPort, timeout: float, registry: CollectorRegistry,
                 looked_up: Callable[[str], None] | None = None,
                 avoid: Collection[int] = (), ttl: Callable[[str], int] | None = None,
                 asked: Callable[[str], Awaitable[None] | None] | None = None) -> None:
        self.snapshot = snapshot
        self.asked = asked if asked is not None else lambda name: None
        self.ttl = ttl if ttl is not None else lambda name: TTL
        self.nameserver = nameserver
        self.timeout = timeout
        self.metrics = ResolverMetrics(registry)
        self._answered = self.metrics.queries.labels("answered")  # the hot path's two results
        self._nxdomain = self.metrics.queries.labels("nxdomain")
        self.looked_up = looked_up
        self._kept: dict[bytes, _Kept] = {}
        self._forwards = 0
        self._udp_sock, self._tcp_sock = _bind(listen, avoid)
        host = listen.host
        self.address = HostPort(host, self._udp_sock.getsockname()[1])
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self), sock=self._udp_sock)
        self._tcp = await asyncio.start_server(self._serve_tcp, sock=self._tcp_sock)
        log.info("resolver_listening address=%s forwarding=%s", self.address, self.nameserver)

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        else:
            self._udp_sock.close()
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await self._tcp.wait_closed()
        else:
            self._tcp_sock.close()
        for task in list(self._tasks):
            task.cancel()

    # -- answering ---------------------------------------------------------------------------

    def respond(self, data: bytes, udp: bool, waited: bool = False,
                ) -> bytes | dns.message.Message | Asked | None:
        """The reply to `data`; or the parsed query, to be forwarded; or the lookup to wait for
        before answering (`waited`: it is done); None: no reply (not a query)."""
        key = (b"u" if udp else b"t") + data[2:]
        kept = self._kept.get(key)
        snapshot = self.snapshot()
        if kept is not None:
            endpoints = snapshot.get(kept.name)
            if endpoints is not None and _basis(endpoints) == kept.basis:
                if not waited and (lookup := self.asked(kept.name)) is not None:
                    return Asked(lookup)
                if kept.ttl_at and (ttl := self.ttl(kept.name)) != kept.ttl:
                    kept = self._kept[key] = kept.with_ttl(ttl)
                (self._answered if kept.basis[0] else self._nxdomain).inc()
                self._told(kept.name)
                return data[:2] + kept.reply
        try:
            query = dns.message.from_wire(data)
        except (dns.exception.DNSException, ValueError, struct.error, IndexError):
            self.metrics.queries.labels("malformed").inc()
            return None
        if query.flags & dns.flags.QR:  # a response: nothing to answer
            self.metrics.queries.labels("malformed").inc()
            return None
        reply, result, name, ttl = local_reply(query, snapshot, self.ttl)
        if reply is None:
            return query
        if not waited and name in snapshot and (lookup := self.asked(name)) is not None:
            return Asked(lookup)
        self.metrics.queries.labels(result).inc()
        wire = _wire(reply, max(UDP_SIZE, query.payload) if udp and query.edns >= 0 else
                     UDP_SIZE if udp else None)
        endpoints = snapshot.get(name)
        if endpoints is not None and result in ("answered", "nxdomain"):
            if len(self._kept) >= MAX_CACHED:
                self._kept.clear()
            self._kept[key] = _Kept(name, _basis(endpoints), ttl, wire[2:], _ttl_offsets(wire))
        if endpoints is not None:
            self._told(name)
        return wire

    async def answer_asked(self, data: bytes, udp: bool, lookup: Awaitable[None],
                           ) -> bytes | None:
        """The reply to `data` once `lookup` is done, or ASKED_WAIT later (forwarded, should
        the name have left discovery meanwhile)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(lookup), ASKED_WAIT)
        out = self.respond(data, udp, waited=True)
        if isinstance(out, dns.message.Message):
            return await self.forward(out, udp)
        return out if isinstance(out, bytes) else None

    def _told(self, name: str) -> None:
        if self.looked_up is not None:
            self.looked_up(name)

    async def forward(self, query: dns.message.Message, udp: bool) -> bytes:
        """A name that is no task: --nameserver's answer, unchanged (SERVFAIL if none)."""
        size = (max(UDP_SIZE, query.payload) if query.edns >= 0 else UDP_SIZE) if udp else None
        if self._forwards >= MAX_FORWARDS:
            self.metrics.queries.labels("forward_failed").inc()
            return _wire(_servfail(query), size)
        self._forwards += 1
        try:
            response, _ = await udp_with_fallback(
                query, self.nameserver.host, timeout=self.timeout, port=self.nameserver.port)
        except (dns.exception.DNSException, OSError, ValueError) as exc:
            log.debug("resolver_forward_failed name=%s error=%r",
                      query.question[0].name if query.question else "", str(exc))
            self.metrics.queries.labels("forward_failed").inc()
            return _wire(_servfail(query), size)
        finally:
            self._forwards -= 1
        self.metrics.queries.labels("forwarded").inc()
        response.id = query.id
        return _wire(response, size)

    def spawn(self, work: Coroutine[None, None, None]) -> None:
        """Run `work` (a forwarded query) in the background, kept until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_tcp(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE):
                    size = struct.unpack("!H", await reader.readexactly(2))[0]
                    data = await reader.readexactly(size)
                out = self.respond(data, udp=False)
                if isinstance(out, Asked):
                    out = await self.answer_asked(data, False, out.lookup)
                if out is None:
                    break
                if isinstance(out, dns.message.Message):
                    out = await self.forward(out, udp=False)
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _servfail(query: dns.message.Message) -> dns.message.Message:
    reply = dns.message.make_response(query)
    reply.flags |= dns.flags.RA
    reply.set_rcode(dns.rcode.SERVFAIL)
    return reply


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: LocalResolver) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (a datagram endpoint's)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        out = self.server.respond(data, udp=True)
        if out is None or self.transport is None:
            return
        if isinstance(out, bytes):
            self.transport.sendto(out, addr)
            return
        if isinstance(out, Asked):
            self.server.spawn(self._asked(data, out.lookup, addr))
            return
        self.server.spawn(self._forward(out, addr))

    async def _asked(self, data: bytes, lookup: Awaitable[None],
                     addr: tuple[str | int, ...]) -> None:
        out = await self.server.answer_asked(data, True, lookup)
        if out is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(out, addr)

    async def _forward(self, query: dns.message.Message, addr: tuple[str | int, ...]) -> None:
        out = await self.server.forward(query, udp=True)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(out, addr)


def _bind(listen: HostPort, avoid: Collection[int] = ()) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on one port (port 0: a free one, none of `avoid`)."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    error: OSError | None = None
    for _ in range(1 if listen.port else 20):  # port 0: the UDP port may be taken for TCP
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            udp.bind((listen.host, listen.port))
            if not listen.port and udp.getsockname()[1] in avoid:
                raise OSError(errno.EADDRINUSE, "a port nginx listens on")
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((listen.host, udp.getsockname()[1]))
            tcp.listen(128)
        except OSError as exc:
            udp.close()
            tcp.close()
            error = exc
            continue
        udp.setblocking(False)
        tcp.setblocking(False)
        return udp, tcp
    assert error is not None
    raise ResolverError(error.errno, f"--resolver-listen {listen}: {error.strerror}")
