"""A DNS server the tests control (dnslib, real DNS over UDP): answers, NXDOMAIN, SERVFAIL,
REFUSED, silence, truncation, and a count of queries. For what dnsmasq cannot be made to do.

Optionally it behaves like Docker's embedded DNS with many tasks: UDP answers longer than 512
bytes are truncated (TC set) and the same port answers over TCP. A name can also be given a
sequence of outcomes that advances on every A query, i.e. every discovery round: answers that
flap every poll, or a server that fails every other round. And it can tell its clients apart
as a hostile server would: a client port that asks a name again (nginx keeps one source port;
the agent asks from a fresh one each round) gets other answers.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSError, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

from tests.support import free_port


class _Resolver(BaseResolver):  # type: ignore[misc]
    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.faults: dict[str, str] = {}  # name -> servfail | refused | silent | truncated
        self.ttl = 600
        self.queries = 0
        self.tcp_queries = 0
        # name -> outcomes (addresses, None for NXDOMAIN, or a fault for every name), and the
        # outcome in force, advanced by each A query for that name
        self.sequences: dict[str, list[Sequence[str] | str | None]] = {}
        self.rounds: dict[str, int] = {}
        # name -> addresses for a client port that asked for it before, and the ports seen
        self.repeats: dict[str, list[str]] = {}
        self.ports: dict[str, set[int]] = {}
        self.repeated = 0  # queries answered from `repeats`
        self.lock = threading.Lock()

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        with self.lock:
            self.queries += 1
            self.tcp_queries += getattr(handler, "protocol", "udp") == "tcp"
            name = str(request.q.qname).rstrip(".").lower()
            fault = self.faults.get(name) or self.faults.get("*")
            exists = name in self.records
            addresses = list(self.records.get(name, []))
            if name in self.sequences and request.q.qtype == QTYPE.A:
                self.rounds[name] = self.rounds.get(name, -1) + 1
            if name in self.repeats:
                port = int(handler.client_address[1])
                if port in self.ports.setdefault(name, set()):
                    exists, addresses = True, list(self.repeats[name])
                    self.repeated += 1
                self.ports[name].add(port)
            for sequenced, outcomes in self.sequences.items():
                outcome = outcomes[max(0, self.rounds.get(sequenced, 0)) % len(outcomes)]
                if isinstance(outcome, str):  # the whole server fails this round
                    fault = outcome
                elif sequenced == name:
                    exists, addresses = outcome is not None, list(outcome or [])
        reply = request.reply()
        if fault == "silent":  # dnslib's handler sends nothing, and logs nothing with -error
            raise DNSError("silent: no answer, as the test asked")
        if fault == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if fault == "refused":
            reply.header.rcode = RCODE.REFUSED
            return reply
        if fault == "truncated":
            reply.header.tc = 1
            return reply
        if not exists:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for a in addresses:
            if request.q.qtype == QTYPE.A and ":" not in a:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(a), ttl=self.ttl))
            elif request.q.qtype == QTYPE.AAAA and ":" in a:
                reply.add_answer(RR(request.q.qname, QTYPE.AAAA, rdata=AAAA(a), ttl=self.ttl))
        return reply


class _TruncatingHandler(DNSHandler):  # type: ignore[misc]
    """UDP answers longer than 512 bytes become an empty answer with TC set, the question kept
    (as Docker's DNS does; dnslib's own truncation drops the question, which clients refuse)."""

    def get_reply(self, data: bytes) -> bytes:
        rdata: bytes = super().get_reply(data)
        if self.protocol == "udp" and len(rdata) > 512:
            reply = DNSRecord.parse(data).reply()
            reply.header.tc = 1
            return bytes(reply.pack())
        return rdata


class ControlledDns:
    def __init__(self, address: str = "127.0.0.54", *, tcp: bool = False) -> None:
        """tcp=True: truncate UDP answers at 512 bytes and answer over TCP too, as Docker's DNS
        does; clients must retry over TCP to see more than a few dozen addresses."""
        self.address = address
        self.port = free_port(address)
        self.resolver = _Resolver()
        logger = DNSLogger(log="-request,-reply,-truncated,-error", prefix=False)
        handler = _TruncatingHandler if tcp else DNSHandler
        self.server = DNSServer(self.resolver, address=address, port=self.port, logger=logger,
                                handler=handler)
        self.tcp_server = DNSServer(self.resolver, address=address, port=self.port, tcp=True,
                                    logger=logger, handler=handler) if tcp else None

    @property
    def nameserver(self) -> str:
        return f"{self.address}:{self.port}"

    def start(self) -> None:
        self.server.start_thread()
        if self.tcp_server is not None:
            self.tcp_server.start_thread()

    def stop(self) -> None:
        for server in (self.server, self.tcp_server):
            if server is not None:
                server.stop()
                server.server.server_close()

    def set(self, name: str, addresses: Sequence[str] | None) -> None:
        """Answer `addresses` for `name`; None: NXDOMAIN; []: the name exists with no record."""
        with self.resolver.lock:
            if addresses is None:
                self.resolver.records.pop(name, None)
            else:
                self.resolver.records[name] = list(addresses)

    def fault(self, name: str, kind: str | None) -> None:
        with self.resolver.lock:
            if kind is None:
                self.resolver.faults.pop(name, None)
            else:
                self.resolver.faults[name] = kind

    def sequence(self, name: str, outcomes: Sequence[Sequence[str] | str | None] | None) -> None:
        """Answer the A queries for `name` with each outcome in turn, round and round: a list
        of addresses, None (NXDOMAIN), or a fault ("servfail", "silent", ...) that the whole
        server shows for that round. AAAA queries share the outcome of the last A query.
        None ends the sequence."""
        with self.resolver.lock:
            if outcomes is None:
                self.resolver.sequences.pop(name, None)
                self.resolver.rounds.pop(name, None)
            else:
                self.resolver.sequences[name] = list(outcomes)
                self.resolver.rounds[name] = -1

    def answer_repeats(self, name: str, addresses: Sequence[str]) -> None:
        """A client port that asks `name` a second time gets `addresses` from then on (a
        server that tells nginx, which keeps its port, from the agent)."""
        with self.resolver.lock:
            self.resolver.repeats[name] = list(addresses)

    @property
    def repeated(self) -> int:
        """How many queries got the answer of answer_repeats()."""
        with self.resolver.lock:
            return self.resolver.repeated

    @property
    def queries(self) -> int:
        with self.resolver.lock:
            return self.resolver.queries

    def rounds(self, name: str) -> int:
        """How many A queries for a sequenced `name` arrived (discovery rounds)."""
        with self.resolver.lock:
            return self.resolver.rounds.get(name, -1) + 1
