"""Where a gateway's routes come from: the routes file and the controller, merged.

The controller (`gateway-agent controller`, agent/controller/) serves the routes of labelled
services at a URL. The gateway long-polls it (`GET URL?version=V&wait=30`): the controller answers
at once when its routes differ from version V, otherwise when they change or the wait ends. Every
route received is validated again here with the routes model, so a controller cannot make a
gateway render anything the routes file could not.

When the controller cannot be reached the gateway keeps the routes it last received, and with
--state-dir it saves them, so a gateway restarted meanwhile starts with them.

The controller serves the routes file's routes too (its own copy of the file, source `routes
file`, and its tcp routes): a gateway without a routes file of its own serves those as its file's,
so a change of the file is a new document and a reload here, never a restart. A gateway with a
file of its own serves its file and takes only the labels' routes from the controller. Either way
the file's routes and the labels' are merged by core/merge.py (docs/labels.md); the document is
read by core/wire.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from agent.core.aio import Backoff
from agent.core.files import TooLarge, read_bounded, write_atomic
from agent.core.merge import FILE_SOURCE, Merged, merge_sources
from agent.core.routes import RouteTable
from agent.core.wire import (
    MAX_DOCUMENT,
    Certificate,
    Received,
    parse_document,
    route_item,
    tcp_item,
    valid_until,
)
from agent.gateway.drivers.ports import off_reserved

log = logging.getLogger("agent.gateway.source")

__all__ = ["FILE_SOURCE", "ControllerRoutes", "SourceMetrics"]
_BACKOFF_MAX = 5.0
START_WAIT = 3.0  # at start, how long the first request to the controller may take


async def _body(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The answer's body, read no further than `limit` bytes: TooLarge (a ValueError) past it,
    however long the peer goes on sending."""
    if resp.content_length is not None and resp.content_length > limit:
        raise TooLarge(f"the routes document is larger than {limit // 1024**2} MiB")
    data = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > limit:
            raise TooLarge(f"the routes document is larger than {limit // 1024**2} MiB")
    return bytes(data)


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
                 acme_dir: Path | None = None, reserved: Mapping[int, str] | None = None,
                 ) -> None:
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
        self.reserved = reserved or {}  # the gateway's own ports: no tcp route of the controller's
        self.file_from: str | None = None  # whose routes file is served: "own", "controller"
        self.tcp_errors: list[str] = []  # the controller's tcp routes not served here
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
                received = parse_document(json.loads(await _body(resp, MAX_DOCUMENT)))
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
        certificate is still good (drivers/tls.py serves one only to a `tls: acme` host)."""
        if self.received is None:
            return received
        sent = {c.host for c in received.certificates}
        now = self.clock()
        kept = tuple(c for c in self.received.certificates
                     if c.host not in sent and valid_until(c) > now)
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
        """`H.crt` and `H.key` per host, where drivers/tls.py reads `tls: acme` certificates; the
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
            # (written indented: room for the whitespace)
            doc = json.loads(read_bounded(self.state_file, 2 * MAX_DOCUMENT))
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
                            "tcp": [tcp_item(route) for route in r.tcp],
                            "certificates": [c.item() for c in r.certificates]}}
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            # private keys of ACME certificates: readable by the agent only
            write_atomic(self.state_file, json.dumps(doc, indent=1, sort_keys=True), 0o600)
        except OSError as exc:
            log.warning("routes_source_not_saved file=%s error=%r", self.state_file, str(exc))

    # -- the loop ------------------------------------------------------------------------------

    def session(self) -> aiohttp.ClientSession:
        """No DNS cache: a restarted controller task has a new address. Not aiohttp's default
        resolver either: with aiodns installed (it is not a dependency) that is c-ares, which
        keeps answers for their TTL, and Docker's DNS answers with 600 s."""
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
        backoff = Backoff(1.0, _BACKOFF_MAX)
        while True:
            started = time.monotonic()
            # after a failure, a plain request first: it tells at once that the controller is
            # back (a long-poll would wait for a change before answering)
            if await self.fetch(session, self.wait if self.last_error is None else 0):
                backoff.reset()
                # a controller that answers at once without waiting must not make a busy loop
                await asyncio.sleep(max(0.0, 0.2 - (time.monotonic() - started)))
            else:
                await asyncio.sleep(backoff.failed())

    # -- merging ---------------------------------------------------------------------------------

    def merge(self, file_routes: RouteTable | None) -> RouteTable:
        """The routes file's routes, then the controller's labels'; refused routes are logged
        once. `file_routes`: the gateway's own file; None: it has none, and the controller's
        copy of the file (its http and tcp routes) is served as the file."""
        received = self.received.routes if self.received else ()
        labelled = [(s, r) for s, r in received if s != FILE_SOURCE]
        self.file_from, self.tcp_errors = "own", []
        if file_routes is None:
            tcp, self.tcp_errors = off_reserved(self.received.tcp if self.received else (),
                                                self.reserved)
            file_routes = RouteTable(tuple(r for s, r in received if s == FILE_SOURCE), tcp)
            self.file_from = "controller"
        merged = merge_sources(file_routes, labelled)
        self.merged = merged
        errors = frozenset(merged.errors) | frozenset(self.errors)
        for error in sorted(errors - self._logged):
            log.error("route_refused %s", error)
        self._logged = errors
        self.metrics.conflicts.set(len(merged.errors))
        self.metrics.errors.set(len(self.errors))
        return replace(merged.table, tcp=file_routes.tcp)

    @property
    def errors(self) -> list[str]:
        """What the controller reported (labels, its routes file), what this gateway refused
        of its document."""
        return list(self.received.errors if self.received else ()) + self.tcp_errors

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
            "tcp": len(r.tcp) if r else 0,
            # whose routes file this gateway serves: its own, or the controller's copy
            "file_routes": self.file_from,
            "certificates": [c.host for c in r.certificates] if r else [],
            "errors": self.errors,
            "conflicts": list(self.merged.errors),
            "served": [{"source": s, "hosts": list(route.hosts), "path": route.path,
                        **({"match": route.match.model_dump(mode="json")} if route.match
                           else {})}
                       for s, route in zip(self.merged.sources, self.merged.table.routes,
                                           strict=True)],
        }
