"""ACME in the controller: certificates for the routes with `tls: acme`, for every gateway.

The controller is the only ACME client of the swarm. It orders one certificate per host name
(HTTP-01), answers the challenges at /.well-known/acme-challenge/TOKEN, which every gateway
proxies to it whatever node the ACME server's request reaches, and hands the certificates to the
gateways in the routes document (app, agent.gateway.source), which only gateways that show
the shared token get. No gateway needs a shared filesystem, and none is the one that must be
reached. A wildcard host (`*.shop.example.com`), and every host with `--acme-challenge dns-01`,
is validated by DNS-01 instead (controller/dns01.py): a TXT record in the zone, written through
RFC 2136 or a DNS provider's API; a wildcard without a DNS provider is never ordered, and
/status says why.

The protocol is the `acme` package's (certbot's); this module decides what to order and when:

- a host of a `tls: acme` route without a certificate is ordered as soon as a gateway has
  fetched the routes that name it and had a few seconds to reload (a challenge no gateway can
  answer yet would only spend one of the few failures a CA allows);
- a certificate is renewed `renew_before` before it expires; one whose lifetime is not at least
  twice that, when a third of its lifetime is left (a 6-day certificate: after 4 days);
- a failed order is retried after `retry_min` seconds, doubling up to 6 hours, per host (Let's
  Encrypt allows 5 failed validations per host name and hour);
- `POST /acme/renew` (with the token) renews at once.

The account key and the certificates are kept in `state_dir` (a volume), the certificates apart
for each ACME server (a move from a staging to a production directory orders them all anew): a
restarted controller orders nothing it already has. While it is away the gateways serve what they
received last.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.controller.acme_client import (
    ERROR_MAX,
    Client,
    Issued,
    describe_error,
    issued_from_pem,
)
from agent.core.aio import Backoff, first
from agent.core.files import write_atomic
from agent.core.routes import Route
from agent.core.wire import Certificate

log = logging.getLogger("agent.controller.acme")

RETRY_MAX = 6 * 3600.0
# A new host is first ordered this long after a gateway has been seen with the routes that name
# it: time for the gateways to reload with the challenge location. An order made before any
# gateway can answer its challenge only spends one of the few failures a CA allows.
SETTLE = 5.0
_KEY_END = "-----END PRIVATE KEY-----"
_IDLE = 60.0  # seconds between two looks at what is due when nothing wakes the loop

def acme_hosts(routes: Iterable[Route]) -> dict[str, frozenset[str | None]]:
    """The hosts of the routes with `tls: acme`, each with the zones of its routes."""
    zones: dict[str, set[str | None]] = {}
    for route in routes:
        if route.tls is not None and route.tls.acme:
            for host in route.hosts:
                zones.setdefault(host, set()).add(route.zone)
    return {h: frozenset(z) for h, z in sorted(zones.items())}


@dataclass
class HostState:
    """What the manager knows of one host: its certificate, and how ordering went."""

    issued: Issued | None = None
    failures: int = 0  # in a row
    next_try: float = 0.0  # after a failure: not before (wall clock)
    last_error: str | None = None
    last_attempt_at: float | None = None
    last_success_at: float | None = None
    forced: bool = False


class AcmeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.orders = Counter("gateway_controller_acme_orders", "Certificate orders by result "
                              "(success, failure)", ["result"], registry=r)
        self.account = Gauge("gateway_controller_acme_account_registered",
                             "1 once the ACME server accepted (or found) the account",
                             registry=r)
        for result in ("success", "failure"):
            self.orders.labels(result)


class _HostsCollector(Collector):
    def __init__(self, manager: AcmeManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        expiry = GaugeMetricFamily(
            "gateway_controller_acme_certificate_expiry_timestamp_seconds",
            "When the certificate the controller holds for the host expires", labels=["host"])
        renew = GaugeMetricFamily(
            "gateway_controller_acme_certificate_renewal_timestamp_seconds",
            "When the controller renews the host's certificate", labels=["host"])
        failures = GaugeMetricFamily(
            "gateway_controller_acme_failures",
            "Orders for the host that failed in a row (0: the last one succeeded)",
            labels=["host"])
        for host, st in sorted(self.manager.hosts.items()):
            if host not in self.manager.wanted:
                continue
            if st.issued is not None:
                expiry.add_metric([host], st.issued.not_after)
                renew.add_metric([host], st.issued.renew_at(self.manager.renew_before))
            failures.add_metric([host], st.failures)
        yield expiry
        yield renew
        yield failures


class AcmeManager:
    """Decides what to order and when; keeps the certificates; tells the controller."""

    def __init__(self, client: Client, state_dir: Path, registry: CollectorRegistry, *,
                 renew_before: float, retry_min: float,
                 on_change: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.state_dir = state_dir
        self.renew_before = renew_before
        self.retry_min = retry_min
        self.on_change = on_change
        self.clock = clock
        self.metrics = AcmeMetrics(registry)
        registry.register(_HostsCollector(self))
        self.hosts: dict[str, HostState] = {}
        self.wanted: dict[str, frozenset[str | None]] = {}  # host -> zones of its routes
        self._wanted_since: dict[str, float] = {}
        self._gateway_has: dict[str, float] = {}  # host -> when a gateway had its route
        self.wake = asyncio.Event()
        self.ordering: str | None = None
        self.heartbeat = time.monotonic()  # the loop's last pass
        self.loop_errors = 0

    @property
    def certs_dir(self) -> Path:
        """One directory per ACME server: its certificates only (staging, then production)."""
        url = self.client.directory_url
        slug = re.sub(r"[^a-z0-9.-]", "_", (urlsplit(url).hostname or "acme").lower())
        return self.state_dir / "certificates" / \
            f"{slug}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"

    # -- the store ---------------------------------------------------------------------------

    def load(self) -> None:
        """The certificates kept from before: a restart orders nothing it already has."""
        try:
            entries = sorted(self.certs_dir.glob("*.pem"))
        except OSError:
            return
        for pem in entries:
            host = pem.stem
            try:
                key, end, chain = pem.read_text(encoding="ascii").partition(_KEY_END)
                issued = issued_from_pem(host, chain.lstrip(), key + end + "\n")
            except (OSError, ValueError) as exc:
                log.warning("acme_stored_certificate_ignored file=%s error=%r", pem, str(exc))
                continue
            self.hosts.setdefault(host, HostState()).issued = issued
        if self.hosts:
            log.info("acme_certificates_loaded dir=%s hosts=%d", self.certs_dir, len(self.hosts))
        self._load_backoff()

    @property
    def backoff_file(self) -> Path:
        return self.certs_dir / "backoff.json"

    def _load_backoff(self) -> None:
        """Failing hosts keep their backoff across restarts: a controller restarted often
        must not retry them sooner than it says (each failure counts at the CA)."""
        try:
            doc = json.loads(self.backoff_file.read_text(encoding="utf-8"))
            for host, item in doc.items():
                st = self.hosts.setdefault(str(host), HostState())
                st.failures = int(item["failures"])
                st.next_try = float(item["next_try"])
                st.last_error = str(item["last_error"])[:ERROR_MAX]
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("acme_backoff_unreadable file=%s error=%r", self.backoff_file, str(exc))

    def _save_backoff(self) -> None:
        doc = {h: {"failures": st.failures, "next_try": st.next_try, "last_error": st.last_error}
               for h, st in sorted(self.hosts.items()) if st.failures}
        try:
            self.certs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(self.backoff_file, json.dumps(doc, indent=1), 0o600)
        except OSError as exc:
            log.warning("acme_backoff_not_saved file=%s error=%r", self.backoff_file, str(exc))

    def _store(self, issued: Issued) -> None:
        """One file, `HOST.pem` (the key, then the chain), replaced at once: a key and a
        certificate from two orders can never be read together."""
        self.certs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.certs_dir / f"{issued.host}.pem",
                     issued.key.rstrip() + "\n" + issued.chain.lstrip(), 0o600)

    # -- what to order -----------------------------------------------------------------------

    def want(self, hosts: dict[str, frozenset[str | None]]) -> None:
        """The hosts of the routes with `tls: acme` now (label routes and the routes file)."""
        if hosts != self.wanted:
            added = sorted(set(hosts) - set(self.wanted))
            if added:
                log.info("acme_hosts_added hosts=%s", ",".join(added))
            now = self.clock()
            self.wanted = dict(hosts)
            self._wanted_since = {h: self._wanted_since.get(h, now) for h in hosts}
            self._gateway_has = {h: t for h, t in self._gateway_has.items() if h in hosts}
            self.on_change()  # the certificates served follow the hosts wanted
            self.wake.set()

    def gateway_seen(self, zone: str | None = None) -> None:
        """A gateway holds the current routes of `zone` (None: every zone), because it just got
        them or asked with their version: the hosts of those routes can be ordered once the
        gateways had time to reload."""
        now = self.clock()
        fresh = [h for h, zones in self.wanted.items() if h not in self._gateway_has
                 and (zone is None or zone in zones)]
        for host in fresh:
            self._gateway_has[host] = now
        if fresh:
            self.wake.set()

    def due(self, host: str, now: float) -> float:
        """When the host's next order is due (now or earlier: due)."""
        if self.client.unorderable(host):
            return float("inf")  # never with these settings: /status says why
        st = self.hosts.get(host) or HostState()
        if st.forced:
            return st.next_try if st.failures else now
        if st.issued is not None:
            at = st.issued.renew_at(self.renew_before)
        elif host in self._gateway_has:
            at = self._gateway_has[host] + SETTLE
        else:
            return float("inf")  # no gateway has its route yet
        return max(at, st.next_try)

    def renew(self, hosts: Iterable[str] | None = None) -> list[str]:
        """Renew now (POST /acme/renew): these hosts, or every wanted one."""
        chosen = sorted(self.wanted if hosts is None else set(hosts) & set(self.wanted))
        for host in chosen:
            st = self.hosts.setdefault(host, HostState())
            st.forced, st.next_try, st.failures = True, 0.0, 0
        self.wake.set()
        return chosen

    # -- ordering ----------------------------------------------------------------------------

    async def order(self, host: str) -> bool:
        st = self.hosts.setdefault(host, HostState())
        st.last_attempt_at = self.clock()
        self.ordering = host
        started = time.monotonic()
        try:
            issued = await asyncio.to_thread(self._order_and_keep, host)
        except Exception as exc:  # the ACME server, the network: report, retry later
            self.client.forget()
            st.failures += 1
            delay = Backoff.after(st.failures, self.retry_min, RETRY_MAX)
            st.next_try = self.clock() + delay
            st.last_error = describe_error(exc)
            self.metrics.orders.labels("failure").inc()
            log.error("acme_order_failed host=%s error=%r failures=%d retry_in=%.0fs "
                      "serving=%s", host, st.last_error, st.failures, delay,
                      "previous certificate" if st.issued else "no certificate")
            self._save_backoff()
            return False
        finally:
            self.ordering = None
            self.metrics.account.set(1 if self.client.account_uri else 0)
        st.issued, st.failures, st.next_try, st.last_error, st.forced = issued, 0, 0.0, None, \
            False
        st.last_success_at = self.clock()
        self.metrics.orders.labels("success").inc()
        self._save_backoff()
        log.info("acme_certificate_issued host=%s expires=%s renew_at=%s took=%.1fs", host,
                 _when(issued.not_after), _when(issued.renew_at(self.renew_before)),
                 time.monotonic() - started)
        self.on_change()
        return True

    def _order_and_keep(self, host: str) -> Issued:
        """In the worker thread: order, and save what the CA issued at once, so that a
        controller stopped meanwhile has it at its next start. A certificate that cannot be
        saved is served from memory all the same (ordering again would spend the CA's limits)."""
        issued = self.client.order(host)
        try:
            self._store(issued)
        except OSError as exc:
            log.error("acme_certificate_not_saved host=%s dir=%s error=%r effect=%r", host,
                      self.certs_dir, str(exc), "a restarted controller orders it again")
        return issued

    async def run(self, stop: asyncio.Event) -> None:
        """Order what is due, one host at a time; sleep until the next one is due."""
        self.load()
        try:
            self.on_change()  # the certificates loaded
        except Exception:
            log.exception("acme_loop_error")
            self.loop_errors += 1
        while not stop.is_set():
            self.heartbeat = time.monotonic()
            try:
                sleep = await self._pass(stop)
            except Exception:  # a bug must not end renewals silently: say it, go on
                log.exception("acme_loop_error")
                self.loop_errors += 1
                sleep = 5.0
            if sleep > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.05, sleep)):
                        await first(self.wake.wait(), stop.wait())

    async def _pass(self, stop: asyncio.Event) -> float:
        """Order what is due now; how long to sleep then (0: look again at once)."""
        self.wake.clear()
        now = self.clock()
        due = sorted((self.due(h, now), h) for h in self.wanted)
        ready = [h for at, h in due if at <= now]
        for host in ready:
            if stop.is_set():
                return 0.0
            await self.order(host)
        if ready:
            return 0.0
        return min([_IDLE] + [at - now for at, _ in due])  # (inf: woken by a gateway)

    # -- what the gateways and users get -----------------------------------------------------

    def certificates(self, zone: str | None) -> list[dict[str, str]]:
        """For the routes document: the certificates of the wanted hosts of this zone. A zone
        gets a host's certificate (and its private key) only when every route of the host is
        in that zone: a route of another zone under the same name must not hand the zone's
        gateways the key of a host that serves elsewhere."""
        out = []
        for host, zones in sorted(self.wanted.items()):
            st = self.hosts.get(host)
            if st is None or st.issued is None or (zone is not None and zones != {zone}):
                continue
            out.append(Certificate(host, st.issued.chain, st.issued.key).item())
        return out

    def status(self, zone: str | None = None) -> dict[str, Any]:
        """Every host's state; with `zone`, only the hosts whose certificate that zone gets
        (for a zone's token: it learns nothing of other zones)."""
        now = self.clock()
        hosts = {}
        for host in sorted(h for h, zones in self.wanted.items()
                           if zone is None or zones == {zone}):
            st = self.hosts.get(host) or HostState()
            issued = st.issued
            refused = self.client.unorderable(host)
            hosts[host] = {
                "certificate": issued is not None,
                "not_after": _iso(issued.not_after) if issued else None,
                "renew_at": _iso(issued.renew_at(self.renew_before)) if issued else None,
                "next_order": "ordering" if self.ordering == host else
                None if refused else _next(self.due(host, now)),
                "challenge": self.client.challenge(host),
                "failures": st.failures,
                "last_error": refused or st.last_error,
                "last_attempt_at": _iso(st.last_attempt_at),
                "last_success_at": _iso(st.last_success_at),
            }
        problems = [f"{h}: {item['last_error']}" for h, item in hosts.items()
                    if item["last_error"] is not None]
        return {"directory": self.client.directory_url, "account": self.client.account_uri,
                "renew_before_days": self.renew_before / 86400, "problems": problems,
                "loop_seconds_ago": round(time.monotonic() - self.heartbeat, 1),
                "loop_errors": self.loop_errors, "hosts": hosts}


def _when(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _next(moment: float) -> str | None:
    return "when a gateway has the route" if moment == float("inf") else _iso(moment)


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).isoformat(timespec="seconds")

