"""A DNS server the tests control (dnslib, real DNS over UDP): answers, NXDOMAIN, SERVFAIL,
REFUSED, silence, truncation, and a count of queries. For what dnsmasq cannot be made to do."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from tests.support import free_port


class _Resolver(BaseResolver):  # type: ignore[misc]
    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.faults: dict[str, str] = {}  # name -> servfail | refused | silent | truncated
        self.ttl = 600
        self.queries = 0
        self.lock = threading.Lock()

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord | None:
        with self.lock:
            self.queries += 1
            name = str(request.q.qname).rstrip(".").lower()
            fault = self.faults.get(name) or self.faults.get("*")
            addresses = list(self.records.get(name, []))
        reply = request.reply()
        if fault == "silent":
            return None
        if fault == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if fault == "refused":
            reply.header.rcode = RCODE.REFUSED
            return reply
        if fault == "truncated":
            reply.header.tc = 1
            return reply
        if name not in self.records:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for a in addresses:
            if request.q.qtype == QTYPE.A and ":" not in a:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(a), ttl=self.ttl))
            elif request.q.qtype == QTYPE.AAAA and ":" in a:
                reply.add_answer(RR(request.q.qname, QTYPE.AAAA, rdata=AAAA(a), ttl=self.ttl))
        return reply


class ControlledDns:
    def __init__(self, address: str = "127.0.0.54") -> None:
        self.address = address
        self.port = free_port(address)
        self.resolver = _Resolver()
        self.server = DNSServer(self.resolver, address=address, port=self.port,
                                logger=DNSLogger(log="-request,-reply,-truncated,-error",
                                                 prefix=False))

    @property
    def nameserver(self) -> str:
        return f"{self.address}:{self.port}"

    def start(self) -> None:
        self.server.start_thread()

    def stop(self) -> None:
        self.server.stop()
        self.server.server.server_close()

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
