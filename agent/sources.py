"""Where a gateway's routes come from: the routes file and the controller, merged.

The controller (`gateway-agent controller`, agent/controller.py) serves the routes of labelled
services at a URL. The gateway long-polls it (`GET URL?version=V&wait=30`): the controller answers
at once when its routes differ from version V, otherwise when they change or the wait ends. Every
route received is validated again here with the routes model, so a controller cannot make a
gateway render anything the routes file could not.

When the controller cannot be reached the gateway keeps the routes it last received, and with
--state-dir it saves them, so a gateway restarted meanwhile starts with them.

Merge rules (docs/labels.md): the routes file first, then the controller's routes in its order
(oldest service first). A route that claims a host and path already claimed, or a host already
routed with a different `tls`, is refused whole and reported; every other route is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge

from agent.files import write_atomic
from agent.routes import HOST_RE, Route, RoutesError, RouteTable, parse_routes

log = logging.getLogger("agent.sources")

FILE_SOURCE = "routes file"
_SOURCE_RE = re.compile(r"[ -~]{1,200}")  # printable ASCII: shown in logs and /status only
_ERROR_MAX = 500
_PEM_MAX = 64 * 1024  # a chain of a few certificates is a few KiB
_BACKOFF_MAX = 5.0
START_WAIT = 3.0  # at start, how long the first request to the controller may take


@dataclass(frozen=True)
class Merged:
    table: RouteTable
    sources: tuple[str, ...]  # the source of each route of the table
    errors: tuple[str, ...]  # one per refused route
    refused: tuple[Route, ...] = ()  # the refused routes, in the order of `errors`


def _file_owns(host: str, names: frozenset[str]) -> str | None:
    """The routes file's name that `host` falls under: the same name, or a wildcard of the
    file that covers it (`*.example.com` covers `a.example.com`, `a.b.example.com` and
    `*.b.example.com`: nginx would prefer the more specific name); None when it is free."""
    if host in names:
        return host
    parent = host.removeprefix("*.")
    while "." in parent:
        parent = parent.split(".", 1)[1]
        if f"*.{parent}" in names:
            return f"*.{parent}"
    return None


def merge(candidates: Iterable[tuple[str, Route]]) -> Merged:
    """First come, first served: each route keeps its hosts unless an earlier route claimed one
    of them (same host and path, or the same host with a different `tls`); then it is refused
    whole, with an error naming both sources, and the others are not affected.

    The routes file's names belong to the file, every path under them included: a route from
    another source that names one of them (or a name under one of its wildcards) is refused,
    whatever its path. Otherwise `gateway.path=/login` on a file's host would take that path,
    under the host's certificate, and its zone would get the host's ACME key."""
    candidates = list(candidates)
    file_names = frozenset(h for source, route in candidates if source == FILE_SOURCE
                           for h in route.hosts)
    claimed: dict[tuple[str, str], str] = {}
    tls_of: dict[str, tuple[object, str]] = {}
    routes: list[Route] = []
    sources: list[str] = []
    errors: list[str] = []
    refused: list[Route] = []
    for source, route in candidates:
        problems = []
        for host in route.hosts:
            owner = _file_owns(host, file_names) if source != FILE_SOURCE else None
            if owner == host:
                problems.append(f"{host!r} belongs to the routes file, every path under it "
                                "included")
            elif owner is not None:
                problems.append(f"{host!r} is under {owner!r}, which belongs to the routes "
                                "file")
            elif (host, route.path) in claimed:
                problems.append(f"{host!r} with path {route.path!r} is already routed by "
                                f"{claimed[host, route.path]}")
            elif host in tls_of and tls_of[host][0] != route.tls:
                problems.append(f"{host!r} is also routed by {tls_of[host][1]} with a "
                                "different 'tls'")
        if problems:
            errors.append(f"{source}: not routed: " + "; ".join(problems))
            refused.append(route)
            continue
        for host in route.hosts:
            claimed[host, route.path] = source
            tls_of.setdefault(host, (route.tls, source))
        routes.append(route)
        sources.append(source)
    return Merged(RouteTable(tuple(routes)), tuple(sources), tuple(errors), tuple(refused))


@dataclass(frozen=True)
class Certificate:
    """A certificate the controller's ACME client obtained, as PEM text: checked like any
    certificate (agent.tls) once written where the gateway reads `tls: acme` certificates."""

    host: str
    chain: str
    key: str = field(repr=False)


@dataclass(frozen=True)
class Received:
    """A controller's answer, checked: its routes (source, route), the errors to show, and the
    ACME certificates for the hosts of its routes."""

    version: str
    routes: tuple[tuple[str, Route], ...]
    errors: tuple[str, ...]
    certificates: tuple[Certificate, ...] = ()


def _text(value: object, limit: int) -> str | None:
    if not isinstance(value, str):
        return None
    shown = value.encode("ascii", "backslashreplace").decode()
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def parse_document(doc: Any) -> Received:
    """Check the controller's JSON: a bad document is refused whole (ValueError); a bad route
    in it is refused alone, as the routes file would refuse it."""
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object")
    version, items, reported = doc.get("version"), doc.get("routes"), doc.get("errors", [])
    if not isinstance(version, str) or not _SOURCE_RE.fullmatch(version):
        raise ValueError("'version' is missing or not a short string")
    if not isinstance(items, list) or not isinstance(reported, list):
        raise ValueError("'routes' and 'errors' must be lists")
    routes: list[tuple[str, Route]] = []
    errors = [e for e in (_text(r, _ERROR_MAX) for r in reported) if e is not None]
    for i, item in enumerate(items):
        source = item.get("source") if isinstance(item, dict) else None
        if not isinstance(source, str) or not _SOURCE_RE.fullmatch(source):
            source = f"controller routes[{i}]"
        route = item.get("route") if isinstance(item, dict) else None
        try:
            (parsed,) = parse_routes({"routes": [route]}, source).routes
        except RoutesError as exc:
            errors.append(f"{source}: refused by the gateway: " + "; ".join(
                "route" + e.removeprefix("routes[0]") for e in exc.errors))
            continue
        routes.append((source, parsed))
    certificates = _certificates(doc.get("certificates", []), errors)  # adds to `errors`
    return Received(version, tuple(routes), tuple(errors), certificates)


def _valid_until(cert: Certificate) -> float:
    """The notAfter of the certificate's first block (0 when it does not parse)."""
    try:
        return x509.load_pem_x509_certificate(cert.chain.encode()).not_valid_after_utc.timestamp()
    except ValueError:
        return 0.0


def _certificates(items: Any, errors: list[str]) -> tuple[Certificate, ...]:
    """`[{"host": H, "chain": PEM, "key": PEM}]`; an item that is not that is refused alone.
    The host becomes a file name: only a plain host name (no wildcard) is taken."""
    if not isinstance(items, list):
        raise ValueError("'certificates' must be a list")
    out: dict[str, Certificate] = {}
    for i, item in enumerate(items):
        host = item.get("host") if isinstance(item, dict) else None
        chain = item.get("chain") if isinstance(item, dict) else None
        key = item.get("key") if isinstance(item, dict) else None
        if not isinstance(host, str) or not HOST_RE.fullmatch(host) or host.startswith("*") \
                or len(host) > 253 or host in out:
            errors.append(f"controller certificates[{i}]: refused by the gateway: the host is "
                          "not a plain host name, or comes twice")
        elif not all(isinstance(v, str) and v.isascii() and len(v) <= _PEM_MAX and
                     "-----BEGIN " in v for v in (chain, key)):
            errors.append(f"controller certificates[{i}] ({host}): refused by the gateway: "
                          "'chain' and 'key' must be PEM text")
        else:
            assert isinstance(chain, str)
            assert isinstance(key, str)
            out[host] = Certificate(host, chain, key)
    return tuple(out[h] for h in sorted(out))


def route_item(source: str, route: Route) -> dict[str, Any]:
    """One route as the controller serves it and the gateway saves it."""
    return {"source": source, "route": route.model_dump(mode="json", exclude_none=True)}


class SourceMetrics:
    """gateway_routes_source_*: the gateway's view of the controller."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.fetches = Counter(
            "gateway_routes_source_fetches", "Answers from the controller by result "
            "(changed, unchanged, error)", ["result"], registry=r)
        self.up = Gauge("gateway_routes_source_up",
                        "1 while the last request to the controller got an answer", registry=r)
        self.last_success = Gauge(
            "gateway_routes_source_last_success_timestamp_seconds",
            "When the controller last answered", registry=r)
        self.routes = Gauge("gateway_routes_source_routes",
                            "Routes received from the controller (before merging)", registry=r)
        self.errors = Gauge(
            "gateway_routes_source_errors", "Labelled services the controller skipped, and "
            "routes from it this gateway refused", registry=r)
        self.conflicts = Gauge(
            "gateway_routes_conflicts", "Routes not served because an earlier source claims "
            "their host and path", registry=r)
        for result in ("changed", "unchanged", "error"):
            self.fetches.labels(result)


class ControllerRoutes:
    """Long-polls the controller, keeps (and saves) the last routes it sent, and merges them
    with the routes file's. `on_change` is called when new routes arrived (wake the loop)."""

    def __init__(self, url: str, metrics: SourceMetrics, *, zone: str | None = None,
                 wait: float = 30.0, state_dir: Path | None = None,
                 on_change: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time, token: str | None = None,
                 acme_dir: Path | None = None) -> None:
        self.url = url
        self.token = token  # sent as `Authorization: Bearer` (--controller-token-file)
        self.acme_dir = acme_dir  # where the ACME certificates received are written
        self.metrics = metrics
        self.zone = zone
        self.wait = wait
        self.state_file = state_dir / "controller-routes.json" if state_dir else None
        self.on_change = on_change
        self.clock = clock
        self.received: Received | None = None
        self.from_saved = False
        self.last_fetch_at: float | None = None
        self.last_fetch_result: str | None = None
        self.last_success_at: float | None = None
        self.last_change_at: float | None = None
        self.last_error: str | None = None
        self.merged = Merged(RouteTable(()), (), ())
        self._logged: frozenset[str] = frozenset()
        self._task: asyncio.Task[None] | None = None

    # -- receiving ---------------------------------------------------------------------------

    @property
    def version(self) -> str | None:
        return self.received.version if self.received else None

    def _params(self, wait: float) -> dict[str, str]:
        params = {"zone": self.zone} if self.zone else {}
        if self.version is not None and wait > 0:
            params.update(version=self.version, wait=f"{wait:g}")
        return params

    async def fetch(self, session: aiohttp.ClientSession, wait: float) -> bool:
        """One request; True when it got an answer (changed or not). Never raises for a
        controller that is down or answers nonsense: that is recorded and logged once."""
        headers = {"If-None-Match": f'"{self.version}"'} if self.version and wait > 0 else {}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        self.last_fetch_at = self.clock()
        try:
            async with session.get(self.url, params=self._params(wait), headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=wait + 10, connect=5),
                                   ) as resp:
                if resp.status == 304:
                    self._answered("unchanged")
                    return True
                if resp.status != 200:
                    body = (await resp.text(errors="replace"))[:200]
                    raise ValueError(f"HTTP {resp.status}: {' '.join(body.split())}")
                received = parse_document(await resp.json(content_type=None))
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            self._failed(exc)
            return False
        self._use(received, saved=False)
        return True

    def _answered(self, result: str) -> None:
        now = self.clock()
        if self.last_error is not None:
            log.info("routes_source_reachable url=%s version=%s", self.url, self.version)
        self.last_error = None
        self.last_fetch_result = result
        self.last_success_at = now
        self.metrics.fetches.labels(result).inc()
        self.metrics.up.set(1)
        self.metrics.last_success.set(now)

    def _failed(self, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self.last_error is None:  # once per outage, not once per retry
            kept = len(self.received.routes) if self.received else 0
            log.warning("routes_source_unreachable url=%s error=%r keeping=%d", self.url,
                        error, kept)
        self.last_error = error
        self.last_fetch_result = "error"
        self.metrics.fetches.labels("error").inc()
        self.metrics.up.set(0)

    def _keep_certificates(self, received: Received) -> Received:
        """Certificates the controller stops sending are kept until they expire: a controller
        started with ACME off, or with a lost volume, must not take HTTPS from a host whose
        certificate is still good (agent.tls serves one only to a `tls: acme` host)."""
        if self.received is None:
            return received
        sent = {c.host for c in received.certificates}
        now = self.clock()
        kept = tuple(c for c in self.received.certificates
                     if c.host not in sent and _valid_until(c) > now)
        if not kept:
            return received
        if received.version != self.received.version:
            log.info("acme_certificates_kept hosts=%s reason=%r", ",".join(c.host for c in kept),
                     "the controller no longer sends them; kept until they expire")
        return replace(received, certificates=tuple(sorted(
            received.certificates + kept, key=lambda c: c.host)))

    def _use(self, received: Received, saved: bool) -> None:
        received = self._keep_certificates(received)
        changed = self.received != received
        if not saved:
            self._answered("changed" if changed else "unchanged")
        if not changed:
            return
        self.received = received
        self.from_saved = saved
        self.last_change_at = self.clock()
        self.metrics.routes.set(len(received.routes))
        log.info("routes_source_changed version=%s routes=%d errors=%d certificates=%d%s",
                 received.version, len(received.routes), len(received.errors),
                 len(received.certificates), " (saved)" if saved else "")
        self._write_certificates(received.certificates)
        if not saved:
            self._save()
        self.on_change()

    def _write_certificates(self, certificates: tuple[Certificate, ...]) -> None:
        """`H.crt` and `H.key` per host, where agent.tls reads `tls: acme` certificates; the
        files of hosts the controller no longer sends are removed. Unchanged files are left
        alone. A file that cannot be written is logged: the host keeps its last good copy."""
        if self.acme_dir is None:
            return
        wanted: dict[str, bytes] = {}
        for cert in certificates:
            wanted[f"{cert.host}.crt"] = cert.chain.encode()
            wanted[f"{cert.host}.key"] = cert.key.encode()
        try:
            self.acme_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            for name, data in sorted(wanted.items()):
                path = self.acme_dir / name
                with contextlib.suppress(OSError):
                    if path.read_bytes() == data:
                        continue
                write_atomic(path, data, 0o600 if name.endswith(".key") else 0o644)
            for entry in self.acme_dir.iterdir():
                if entry.name not in wanted and entry.suffix in (".crt", ".key"):
                    entry.unlink()
        except OSError as exc:
            log.error("acme_certificates_not_written dir=%s error=%r", self.acme_dir, str(exc))

    # -- the saved copy ------------------------------------------------------------------------

    def load_saved(self) -> None:
        if self.state_file is None:
            return
        try:
            doc = json.loads(self.state_file.read_text(encoding="utf-8"))
            if doc.get("url") != self.url or doc.get("zone") != self.zone:
                log.info("routes_source_saved_ignored file=%s reason='another url or zone'",
                         self.state_file)
                return
            received = parse_document(doc["document"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("routes_source_saved_unreadable file=%s error=%r", self.state_file,
                        str(exc))
            return
        self._use(received, saved=True)

    def _save(self) -> None:
        if self.state_file is None or self.received is None:
            return
        r = self.received
        doc = {"url": self.url, "zone": self.zone, "saved_at": self.clock(),
               "document": {"version": r.version, "errors": list(r.errors),
                            "routes": [route_item(s, route) for s, route in r.routes],
                            "certificates": [{"host": c.host, "chain": c.chain, "key": c.key}
                                             for c in r.certificates]}}
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            # private keys of ACME certificates: readable by the agent only
            write_atomic(self.state_file, json.dumps(doc, indent=1, sort_keys=True), 0o600)
        except OSError as exc:
            log.warning("routes_source_not_saved file=%s error=%r", self.state_file, str(exc))

    # -- the loop ------------------------------------------------------------------------------

    def session(self) -> aiohttp.ClientSession:
        """No DNS cache: a restarted controller task has a new address. Not aiohttp's default
        resolver either: with aiodns installed that is c-ares, which keeps answers for their
        TTL, and Docker's DNS answers with 600 s."""
        connector = aiohttp.TCPConnector(use_dns_cache=False, resolver=aiohttp.ThreadedResolver())
        return aiohttp.ClientSession(connector=connector)

    async def start(self, within: float = START_WAIT) -> None:
        """Before the first configuration: the saved routes, then one quick request (a
        controller that does not answer `within` seconds does not hold up the gateway); then
        the long-poll, in the background until close()."""
        self.load_saved()
        async with self.session() as session:
            try:
                async with asyncio.timeout(within):
                    await self.fetch(session, wait=0)
            except TimeoutError:
                self._failed(TimeoutError(f"no answer within {within:g}s"))
        self._task = asyncio.create_task(self._follow(), name="routes-source")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _follow(self) -> None:
        async with self.session() as session:
            await self.run(session)

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Long-poll until cancelled; after a failure retry with a growing delay (1 s to 5 s)."""
        delay = 0.0
        while True:
            started = time.monotonic()
            # after a failure, a plain request first: it tells at once that the controller is
            # back (a long-poll would wait for a change before answering)
            if await self.fetch(session, self.wait if self.last_error is None else 0):
                delay = 0.0
                # a controller that answers at once without waiting must not make a busy loop
                await asyncio.sleep(max(0.0, 0.2 - (time.monotonic() - started)))
            else:
                delay = min(max(1.0, delay * 2), _BACKOFF_MAX)
                await asyncio.sleep(delay)

    # -- merging ---------------------------------------------------------------------------------

    def merge(self, file_routes: RouteTable) -> RouteTable:
        """The routes file's routes, then the controller's; refused routes are logged once."""
        received = self.received.routes if self.received else ()
        merged = merge([(FILE_SOURCE, r) for r in file_routes.routes] + list(received))
        self.merged = merged
        errors = frozenset(merged.errors) | frozenset(self.received.errors
                                                      if self.received else ())
        for error in sorted(errors - self._logged):
            log.error("route_refused %s", error)
        self._logged = errors
        self.metrics.conflicts.set(len(merged.errors))
        self.metrics.errors.set(len(self.received.errors) if self.received else 0)
        return replace(merged.table, tcp=file_routes.tcp)  # tcp routes: the file's only

    def status(self) -> dict[str, Any]:
        r = self.received
        return {
            "url": self.url,
            "version": self.version,
            "reachable": self.last_error is None and self.last_success_at is not None,
            "from_saved_state": self.from_saved,
            "last_fetch": {"at": self.last_fetch_at, "result": self.last_fetch_result},
            "last_success_at": self.last_success_at,
            "last_change_at": self.last_change_at,
            "last_error": self.last_error,
            "routes": len(r.routes) if r else 0,
            "certificates": [c.host for c in r.certificates] if r else [],
            "errors": list(r.errors) if r else [],
            "conflicts": list(self.merged.errors),
            "served": [{"source": s, "hosts": list(route.hosts), "path": route.path}
                       for s, route in zip(self.merged.sources, self.merged.table.routes,
                                           strict=True)],
        }
