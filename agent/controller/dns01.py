"""DNS-01 for the controller's ACME client: the `_acme-challenge` TXT records of an order
written through a provider (controller/dnsproviders.py), checked on the zone's authoritative
servers until each shows them (bounded) before the CA is told to look, and removed afterwards.

A CA that looks too early fails the order, and failed validations count against the account's
limits: the check asks the authoritative servers themselves, never a cache.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rdatatype

from agent.controller.dnsproviders import TIMEOUT, DnsError, Provider

log = logging.getLogger("agent.controller.acme")

INTERVAL = 1.0  # seconds between two looks at the authoritative servers


@dataclass(frozen=True)
class Record:
    host: str  # the host ordered (for messages)
    zone: str
    fqdn: str  # _acme-challenge.NAME
    value: str


def txt_at(server: tuple[str, int], fqdn: str) -> set[str]:
    """The TXT strings of `fqdn` as one server answers them now (no recursion)."""
    query = dns.message.make_query(fqdn, dns.rdatatype.TXT)
    query.flags &= ~dns.flags.RD
    reply = dns.query.udp(query, server[0], timeout=TIMEOUT / 2, port=server[1])
    if reply.flags & dns.flags.TC:
        reply = dns.query.tcp(query, server[0], timeout=TIMEOUT / 2, port=server[1])
    return {b"".join(rr.strings).decode("ascii", "replace")
            for rrset in reply.answer if rrset.rdtype == dns.rdatatype.TXT for rr in rrset}


class Dns01:
    """The DNS side of DNS-01 orders: present, wait until visible, remove."""

    def __init__(self, provider: Provider, propagation_timeout: float, *,
                 lookup: Callable[[tuple[str, int], str], set[str]] = txt_at,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.provider = provider
        self.propagation_timeout = propagation_timeout
        self.lookup, self.sleep, self.clock = lookup, sleep, clock

    @property
    def description(self) -> str:
        return self.provider.description

    def present(self, host: str, fqdn: str, value: str) -> Record:
        """Write the record; DnsError naming the host."""
        try:
            zone = self.provider.zone_for(fqdn)
            self.provider.add_txt(zone, fqdn, value)
        except DnsError as exc:
            raise DnsError(f"DNS-01 for {host}: {exc}") from None
        log.info("acme_dns_record_added host=%s record=%s zone=%s provider=%r", host, fqdn,
                 zone, self.description)
        return Record(host, zone, fqdn, value)

    def wait_visible(self, records: Sequence[Record]) -> None:
        """Until every authoritative server of each record's zone answers its value; DnsError
        after `propagation_timeout` seconds, naming the record and the servers still behind."""
        try:
            pending = {(r, s) for r in records for s in self.provider.authoritative(r.zone)}
        except DnsError as exc:
            raise DnsError(f"DNS-01 for {records[0].host}: {exc}") from None
        deadline = self.clock() + self.propagation_timeout
        last: dict[tuple[Record, tuple[str, int]], str] = {}
        while True:
            for record, server in sorted(pending, key=lambda p: (p[0].fqdn, p[1])):
                try:
                    seen = self.lookup(server, record.fqdn)
                except (dns.exception.DNSException, OSError) as exc:
                    last[(record, server)] = type(exc).__name__
                    continue
                if record.value in seen:
                    pending.discard((record, server))
                else:
                    last[(record, server)] = f"{len(seen)} other TXT value(s)"
            if not pending:
                return
            if self.clock() >= deadline:
                record, server = min(pending, key=lambda p: (p[0].fqdn, p[1]))
                raise DnsError(
                    f"DNS-01 for {record.host}: TXT {record.fqdn} not seen at "
                    f"{server[0]}:{server[1]} within {self.propagation_timeout:g}s (it answered: "
                    f"{last.get((record, server), 'nothing')}); --acme-dns-propagation-timeout")
            self.sleep(INTERVAL)

    def remove(self, records: Sequence[Record]) -> None:
        """Remove the records of an order, whatever its outcome; a failure is logged (the
        record is left, harmless: a CA reads a token of this order only once)."""
        for record in records:
            try:
                self.provider.remove_txt(record.zone, record.fqdn, record.value)
            except DnsError as exc:
                log.warning("acme_dns_record_not_removed host=%s record=%s error=%r",
                            record.host, record.fqdn, str(exc))
            else:
                log.info("acme_dns_record_removed host=%s record=%s", record.host, record.fqdn)
