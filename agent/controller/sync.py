"""The controller's state and loop: keeps the catalog in step with Docker (a list at start,
after every service event, every resync interval), holds the route of a new service until its
first task runs, and tells the waiting gateways when the routes change. The HTTP side is
controller/app.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agent import __version__
from agent.controller.acme import AcmeManager, acme_hosts
from agent.controller.catalog import Catalog
from agent.controller.labels import LabelRoutes, Service, routes_from_services
from agent.controller.metrics import ControllerMetrics
from agent.controller.routesfile import FILE_POLL, RoutesFile
from agent.core.aio import Backoff, first
from agent.core.merge import FILE_SOURCE, merge_sources
from agent.core.routes import RouteTable

log = logging.getLogger("agent.controller")

_BACKOFF_MAX = 10.0
ListServices = Callable[[], Awaitable[list[Service]]]
# the IDs, among the services given, of those with a task in state running
ListRunning = Callable[[list[str]], Awaitable[set[str]]]
TASK_POLL = 0.1  # seconds between two looks at the tasks of services whose routes wait


class Controller:
    """Keeps the catalog in step with Docker and answers the gateways."""

    def __init__(self, list_services: ListServices, metrics: ControllerMetrics,
                 prefix: str = "gateway", resync_interval: float = 60.0,
                 clock: Callable[[], float] = time.time,
                 list_running: ListRunning | None = None,
                 new_service_wait: float = 0.0, token: str | None = None,
                 zone_tokens: tuple[tuple[str, str], ...] = (),
                 acme: AcmeManager | None = None,
                 file_routes: RoutesFile | None = None) -> None:
        self.token = token  # the gateways' Authorization: Bearer (--controller-token-file)
        self.zone_tokens = zone_tokens  # (zone, token): that zone's routes only
        self.acme = acme
        # the routes file's routes: served to the gateways without a file of their own, their
        # names refused to labels, and with ACME, their `tls: acme` hosts get certificates too
        self.file_routes = file_routes
        self.challenges: dict[str, str] = acme.client.challenges if acme else {}
        self.list_services = list_services
        self.list_running = list_running
        self.new_service_wait = new_service_wait if list_running is not None else 0.0
        self._services: list[Service] = []
        self._found = LabelRoutes((), (), 0)  # the labels' routes, as last listed
        self._held: dict[str, float] = {}  # service name -> when its route is served anyway
        self._served: set[str] = set()  # services whose route the document has (or refuses)
        self.metrics = metrics
        self.prefix = prefix
        self.resync_interval = resync_interval
        self.clock = clock
        self.catalog = Catalog(acme.certificates if acme else None)
        if acme is not None:
            acme.on_change = self._certificates_changed
        self.dirty = asyncio.Event()
        self.changed = asyncio.Event()  # replaced by a fresh one at each change
        self.last_sync_at: float | None = None
        self.last_error: str | None = None
        self.last_event_at: float | None = None
        self.events_connected = False
        self.heartbeat = time.monotonic()
        self.closing = False
        self._announcing = False

    # -- Docker ------------------------------------------------------------------------------

    def event(self, action: str) -> None:
        """A service event (or `connected`: the stream opened): list the services again."""
        self.metrics.events.labels(action).inc()
        self.last_event_at = self.clock()
        if action == "connected":
            self.events_connected = True
        self.dirty.set()

    def events_lost(self, error: str) -> None:
        if self.events_connected:
            log.warning("docker_events_lost error=%r", error)
        self.events_connected = False

    async def sync(self) -> bool:
        """List the services and update the catalog; False when Docker did not answer."""
        started = time.monotonic()
        try:
            services = await self.list_services()
        except Exception as exc:  # whatever the SDK raises: keep serving the last routes
            error = f"{type(exc).__name__}: {exc}"
            if self.last_error is None:
                log.error("docker_unreachable error=%r keeping=%d", error,
                          len(self.catalog.merged.table.routes))
            self.last_error = error
            self.metrics.syncs.labels("error").inc()
            self.metrics.docker_up.set(0)
            return False
        self.metrics.sync_duration.observe(time.monotonic() - started)
        if self.last_error is not None:
            log.info("docker_reachable")
        self.last_error = None
        self.last_sync_at = self.clock()
        self.metrics.syncs.labels("ok").inc()
        self.metrics.docker_up.set(1)
        self.metrics.last_sync.set(self.last_sync_at)
        self._services = services
        found = routes_from_services(services, self.prefix)
        names = {route.service for _, route in found.routes if route.service}
        if self.catalog.synced and self.new_service_wait > 0:
            # a new route waits for its service's first task: one reload of each gateway, with
            # the task, instead of a 503 now and the task after the gateway's next reload
            deadline = time.monotonic() + self.new_service_wait
            for name in names - self._served - self._held.keys():
                self._held[name] = deadline
        self._held = {n: d for n, d in self._held.items() if n in names}
        await self._release()
        self._publish(found)
        return True

    async def _release(self) -> bool:
        """Serve the held routes whose service now runs a task, or that waited long enough."""
        if not self._held:
            return False
        ids = {s.name: s.id for s in self._services}
        assert self.list_running is not None
        try:
            running = await self.list_running([ids[n] for n in self._held if n in ids])
        except Exception as exc:  # Docker failing: the deadline still releases them
            log.debug("tasks_unavailable error=%r", str(exc))
            running = set()
        now = time.monotonic()
        released = [n for n, due in self._held.items() if ids.get(n) in running or now >= due]
        for name in released:
            del self._held[name]
            log.info("route_released service=%s reason=%s", name,
                     "task running" if ids.get(name) in running else "waited long enough")
        return bool(released)

    def _publish(self, found: LabelRoutes) -> None:
        self._found = found
        routes = tuple((s, r) for s, r in found.routes if r.service not in self._held)
        self._served = {r.service for _, r in routes if r.service}
        self.metrics.held.set(len(self._held))
        first = not self.catalog.synced
        file, error = RouteTable(()), None
        if self.file_routes is not None:
            file, error = self.file_routes(), self.file_routes.error
        if self.catalog.update(LabelRoutes(routes, found.errors, found.services), file,
                               error) or first:
            self._announce(first)

    async def watch_file(self, stop: asyncio.Event, interval: float = FILE_POLL) -> None:
        """Look at the routes file every `interval`: a change (a new config, an edit in place)
        is served at once, with the services as last listed (Docker need not answer)."""
        if self.file_routes is None:
            return
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await stop.wait()
            if self.file_routes.refresh() and self.catalog.synced:
                self._publish(self._found)

    def _certificates_changed(self) -> None:
        # during an announcement (new routes made hosts wanted) that announcement publishes
        if self.catalog.certificates_changed() and not self._announcing:
            self._announce(False)

    def acme_wanted(self) -> None:
        """Tell the ACME manager the hosts of the `tls: acme` routes: the labels' and the
        routes file's (which the gateways serve too)."""
        if self.acme is None:
            return
        labelled = [(s, r) for s, r in zip(self.catalog.merged.sources,
                                           self.catalog.merged.table.routes, strict=True)
                    if s != FILE_SOURCE]
        file = self.catalog.file  # the routes file's routes, as served
        # merged as the gateways merge them: a label route they refuse gets no certificate
        merged = merge_sources(file, labelled)
        self.acme.want(acme_hosts(merged.table.routes))

    def _announce(self, first: bool) -> None:
        self._announcing = True
        try:
            self.acme_wanted()
        finally:
            self._announcing = False
        doc = self.catalog.document(None)
        self.metrics.routes.set(len(doc["routes"]))
        self.metrics.errors.set(len(doc["errors"]))
        self.metrics.services.set(self.catalog.labels.services)
        if not first:
            self.metrics.changes.inc()
        log.info("routes_%s version=%s routes=%d services=%d errors=%d",
                 "listed" if first else "changed", doc["version"], len(doc["routes"]),
                 self.catalog.labels.services, len(doc["errors"]))
        for error in doc["errors"]:
            log.warning("labels_refused %s", error)
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    async def run(self, stop: asyncio.Event) -> None:
        """List at start, after every event, every `resync_interval`, and (with a growing
        delay) until Docker answers again after a failure."""
        delay = 0.0
        backoff = Backoff(1.0, _BACKOFF_MAX)
        self.dirty.set()
        while not stop.is_set():
            timeout = delay or (TASK_POLL if self._held else self.resync_interval)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await first(self.dirty.wait(), stop.wait())
            self.heartbeat = time.monotonic()
            if stop.is_set():
                return
            if self._held and not self.dirty.is_set() and not delay:
                if await self._release():
                    self._publish(routes_from_services(self._services, self.prefix))
                continue
            self.dirty.clear()
            delay = 0.0 if await self.sync() else backoff.failed()
            if not delay:
                backoff.reset()
            self.acme_wanted()

    def close(self) -> None:
        """Answer the waiting gateways now (304: nothing changed), so that shutting down does
        not wait for their long-polls to end."""
        self.closing = True
        self.changed.set()

    def ready(self) -> tuple[bool, list[str]]:
        problems = []
        if not self.catalog.synced:
            problems.append("Docker has not answered yet")
        if self.last_error is not None:
            problems.append(f"Docker does not answer: {self.last_error}")
        if not self.events_connected:
            problems.append("not following Docker's events")
        return not problems, problems

    def status(self, zone: str | None = None) -> dict[str, Any]:
        """Everything; with `zone`, what concerns that zone only (its routes, its errors, the
        certificates it gets), as a zone's token may see it."""
        ready, problems = self.ready()
        doc = self.catalog.document(zone)
        if zone is not None:
            zoned = {r["route"].get("service") for r in doc["routes"]}
            held = {n: d for n, d in self._held.items() if n in zoned}
            return {
                "version": __version__,
                "ready": ready,
                "problems": problems,
                "zone": zone,
                "routes_version": doc["version"] if self.catalog.synced else None,
                "held_for_tasks": {name: round(max(0.0, due - time.monotonic()), 1)
                                   for name, due in sorted(held.items())},
                "routes": [{"source": item["source"], **item["route"]}
                           for item in doc["routes"]],
                "errors": doc["errors"],
                "acme": self.acme.status(zone) if self.acme is not None else None,
            }
        return {
            "version": __version__,
            "ready": ready,
            "problems": problems,
            "label_prefix": self.prefix,
            "docker": {"last_sync_at": self.last_sync_at, "last_error": self.last_error,
                       "events_connected": self.events_connected,
                       "last_event_at": self.last_event_at},
            "routes_version": doc["version"] if self.catalog.synced else None,
            "services": self.catalog.labels.services,
            "held_for_tasks": {name: round(max(0.0, due - time.monotonic()), 1)
                               for name, due in sorted(self._held.items())},
            "routes": [{"source": item["source"], **item["route"]} for item in doc["routes"]],
            "errors": doc["errors"],
            "acme": self.acme.status() if self.acme is not None else None,
        }
