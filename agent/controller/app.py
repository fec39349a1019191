"""`gateway-agent controller`: routes from service labels, served to the gateways over HTTP.

One replica on a manager node reads Docker (through a socket proxy that allows only reads, or the
socket itself) with the docker SDK: it lists the services, follows the event stream for service
create, update and remove, and turns the labels into routes (labels). The gateways never
see the Docker socket: they ask this server.

    GET /routes                          {"version": V, "routes": [...], "errors": [...]}
    GET /routes?version=V&wait=30        the same, at once if the routes are not V any more,
                                         otherwise when they change; 304 after `wait` seconds
    GET /routes?zone=dmz                 only the routes of that zone (a gateway with --zone)
    /metrics /healthz /readyz /status
    /dashboard/                          a page showing /status (agent/dashboard.py)

Until Docker has answered once, /routes answers 503 and the gateways keep the routes they have.
When Docker stops answering later, the last routes keep being served, and /readyz says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.aiohttp import make_aiohttp_handler

from agent import __version__
from agent.controller.acme import AcmeManager, Client, acme_hosts
from agent.controller.labels import LabelRoutes, Service, routes_from_services
from agent.core.aio import first
from agent.core.dashboard import add_page
from agent.core.files import FileStamp, stamp
from agent.core.routes import ZONE_RE, RoutesError, RouteTable, load_routes
from agent.core.settings import Settings, SettingsError, read_token
from agent.gateway.source import FILE_SOURCE, Merged, merge, route_item

log = logging.getLogger("agent.controller.app")

DOCKER_API_VERSION = "1.41"  # Docker Engine 20.10; later engines answer it too
WAIT_MAX = 300.0
_BACKOFF_MAX = 10.0
_SYNC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

ListServices = Callable[[], Awaitable[list[Service]]]
# the IDs, among the services given, of those with a task in state running
ListRunning = Callable[[list[str]], Awaitable[set[str]]]
TASK_POLL = 0.1  # seconds between two looks at the tasks of services whose routes wait


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.docker_up = Gauge("gateway_controller_docker_up",
                               "1 while Docker answered the last list of services", registry=r)
        self.syncs = Counter("gateway_controller_syncs", "Lists of the services by result "
                             "(ok, error)", ["result"], registry=r)
        self.sync_duration = Histogram("gateway_controller_sync_duration_seconds",
                                       "Duration of one list of the services",
                                       buckets=_SYNC_BUCKETS, registry=r)
        self.last_sync = Gauge("gateway_controller_last_sync_success_timestamp_seconds",
                               "When Docker last answered a list of the services", registry=r)
        self.events = Counter("gateway_controller_docker_events", "Docker service events by "
                              "action (create, update, remove; connected: the stream (re)opened)",
                              ["action"], registry=r)
        self.services = Gauge("gateway_controller_services",
                              "Services with gateway labels (valid or not)", registry=r)
        self.routes = Gauge("gateway_controller_routes", "Routes served", registry=r)
        self.errors = Gauge("gateway_controller_label_errors", "Problems with labels: one per "
                            "bad label, and one per route refused for a host another claims",
                            registry=r)
        self.changes = Counter("gateway_controller_routes_changes",
                               "Times the routes served changed", registry=r)
        self.waiting = Gauge("gateway_controller_waiting_requests",
                             "Gateways waiting for a change (long-polls in progress)", registry=r)
        self.unauthorized = Counter("gateway_controller_unauthorized_requests",
                                    "Requests refused for a missing or wrong token", registry=r)
        self.held = Gauge("gateway_controller_routes_held", "Routes of new services not served "
                          "yet: waiting for the service's first running task", registry=r)
        ProcessCollector(registry=r)
        for result in ("ok", "error"):
            self.syncs.labels(result)


def _version(body: dict[str, Any]) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Catalog:
    """The labelled services' routes, and the document each zone is served. Pure."""

    def __init__(self, certificates: Callable[[str | None], list[dict[str, str]]] | None = None,
                 ) -> None:
        self.labels = LabelRoutes((), (), 0)
        self.merged: Merged = merge(())
        self.synced = False
        self.certificates = certificates  # ACME: the certificates of a zone's hosts
        self._documents: dict[str | None, dict[str, Any]] = {}

    def certificates_changed(self) -> bool:
        """The ACME certificates changed: True when a document served changed."""
        before = self.document(None) if self.synced else None
        self._documents = {}
        return self.synced and self.document(None) != before

    def update(self, labels: LabelRoutes, file: RouteTable | None = None) -> bool:
        """Take a new list; True when the routes or errors served changed. With the routes
        file's routes, a label route claiming one of its names is refused here too, and
        reported in this controller's /status as in the gateways'."""
        before = self.document(None) if self.synced else None
        self.labels = labels
        # two services claiming one host: the oldest keeps it; the file's names are the file's
        self.merged = merge([(FILE_SOURCE, r) for r in (file.routes if file else ())]
                            + list(labels.routes))
        self.synced = True
        self._documents = {}
        return self.document(None) != before

    @property
    def errors(self) -> list[tuple[str | None, str]]:
        conflicts = [(route.zone, text) for route, text in zip(self.merged.refused,
                                                               self.merged.errors, strict=True)]
        return list(self.labels.errors) + conflicts

    def document(self, zone: str | None) -> dict[str, Any]:
        if zone not in self._documents:
            routes = [route_item(s, r) for s, r in zip(self.merged.sources,
                                                       self.merged.table.routes, strict=True)
                      if s != FILE_SOURCE and (zone is None or r.zone == zone)]
            errors = [text for z, text in self.errors if zone is None or z == zone]
            body: dict[str, Any] = {"routes": routes, "errors": errors}
            if self.certificates is not None:
                body["certificates"] = self.certificates(zone)
            self._documents[zone] = {"version": _version(body), **body}
        return self._documents[zone]


class Controller:
    """Keeps the catalog in step with Docker and answers the gateways."""

    def __init__(self, list_services: ListServices, metrics: ControllerMetrics,
                 prefix: str = "gateway", resync_interval: float = 60.0,
                 clock: Callable[[], float] = time.time,
                 list_running: ListRunning | None = None,
                 new_service_wait: float = 0.0, token: str | None = None,
                 zone_tokens: tuple[tuple[str, str], ...] = (),
                 acme: AcmeManager | None = None,
                 file_routes: Callable[[], RouteTable] | None = None) -> None:
        self.token = token  # the gateways' Authorization: Bearer (--controller-token-file)
        self.zone_tokens = zone_tokens  # (zone, token): that zone's routes only
        self.acme = acme
        # the routes file's routes: their names are refused to labels, and with ACME, their
        # `tls: acme` hosts get certificates too
        self.file_routes = file_routes
        self.challenges: dict[str, str] = acme.client.challenges if acme else {}
        self.list_services = list_services
        self.list_running = list_running
        self.new_service_wait = new_service_wait if list_running is not None else 0.0
        self._services: list[Service] = []
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
        routes = tuple((s, r) for s, r in found.routes if r.service not in self._held)
        self._served = {r.service for _, r in routes if r.service}
        self.metrics.held.set(len(self._held))
        first = not self.catalog.synced
        file = self.file_routes() if self.file_routes is not None else RouteTable(())
        if self.catalog.update(LabelRoutes(routes, found.errors, found.services), file) or first:
            self._announce(first)

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
        file = self.file_routes().routes if self.file_routes is not None else ()
        # merged as the gateways merge them: a label route they refuse gets no certificate
        merged = merge([(FILE_SOURCE, r) for r in file] + labelled)
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
            delay = 0.0 if await self.sync() else min(max(1.0, delay * 2), _BACKOFF_MAX)
            self.acme_wanted()  # the routes file may have changed too

    # -- HTTP --------------------------------------------------------------------------------

    async def routes(self, request: web.Request) -> web.StreamResponse:
        zone = request.query.get("zone") or None
        if len(request.query.getall("zone", [])) > 1:
            raise web.HTTPBadRequest(text="zone: give one\n")
        if zone is not None and not ZONE_RE.fullmatch(zone):
            raise web.HTTPBadRequest(text="zone: not a valid zone name\n")
        try:
            wait = min(float(request.query.get("wait", "0")), WAIT_MAX)
        except ValueError:
            raise web.HTTPBadRequest(text="wait: seconds expected\n") from None
        if not wait >= 0:
            raise web.HTTPBadRequest(text="wait: seconds expected\n")
        if not self.catalog.synced:
            return web.json_response({"error": "not synchronised with Docker yet",
                                      "detail": self.last_error}, status=503)
        known = request.query.get("version") or _etag(request.headers.get("If-None-Match"))
        deadline = time.monotonic() + wait
        doc = self.catalog.document(zone)
        if self.acme is not None and known == doc["version"]:
            self.acme.gateway_seen(zone)  # it has the routes: their challenges can be answered
        self.metrics.waiting.inc()
        try:
            while known == doc["version"] and not self.closing and \
                    (left := deadline - time.monotonic()) > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await self.changed.wait()
                doc = self.catalog.document(zone)
        finally:
            self.metrics.waiting.dec()
        headers = {"ETag": f'"{doc["version"]}"', "Cache-Control": "no-cache"}
        if known == doc["version"]:
            return web.Response(status=304, headers=headers)
        response = web.json_response(doc, headers=headers)
        if self.acme is not None:
            self.acme.gateway_seen(zone)  # (as soon as it has reloaded)
        return response

    def authorized(self, request: web.Request) -> bool:
        """The token of every zone; or a zone's token, for that zone's routes and status only
        (`?zone=` of that zone), and /readyz."""
        if self.token is None:
            return True
        given = request.headers.get("Authorization", "").encode()
        allowed = hmac.compare_digest(given, f"Bearer {self.token}".encode())
        for zone, token in self.zone_tokens:  # each compared: the time tells nothing
            if hmac.compare_digest(given, f"Bearer {token}".encode()):
                allowed |= request.path == "/readyz" or (
                    request.path in ("/routes", "/status") and
                    request.query.getall("zone", []) == [zone])
        return allowed

    async def challenge(self, request: web.Request) -> web.Response:
        """HTTP-01: the key authorization of a pending challenge, which a gateway forwards."""
        validation = self.challenges.get(request.match_info["token"])
        if validation is None:
            raise web.HTTPNotFound(text="no such challenge\n")
        return web.Response(text=validation, content_type="application/octet-stream")

    async def renew(self, request: web.Request) -> web.Response:
        """POST /acme/renew[?host=H]: order these certificates again now."""
        if self.acme is None:
            raise web.HTTPNotFound(text="ACME is off (no --acme-directory)\n")
        hosts = request.query.getall("host", None)
        chosen = self.acme.renew(hosts)
        if hosts and not chosen:
            raise web.HTTPNotFound(text="no route with tls: acme has these hosts\n")
        return web.json_response({"renewing": chosen}, status=202)

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

    def app(self) -> web.Application:
        async def healthz(_: web.Request) -> web.Response:
            age = time.monotonic() - self.heartbeat
            ok = age < max(60.0, 3 * self.resync_interval)
            return web.Response(status=200 if ok else 503,
                                text=f"{'ok' if ok else 'dead'}: loop {age:.1f}s ago\n")

        async def readyz(_: web.Request) -> web.Response:
            ok, problems = self.ready()
            return web.Response(status=200 if ok else 503,
                                text="ready\n" if ok else "not ready: " + "; ".join(problems)
                                + "\n")

        async def status(request: web.Request) -> web.Response:
            zones = request.query.getall("zone", [])
            if len(zones) > 1 or (zones and not ZONE_RE.fullmatch(zones[0])):
                raise web.HTTPBadRequest(text="zone: give one valid zone name\n")
            return web.json_response(self.status(zones[0] if zones else None),
                                     dumps=lambda o: json.dumps(o, indent=2) + "\n")

        @web.middleware
        async def token(request: web.Request, handler: Any) -> web.StreamResponse:
            """With a token, everything but /healthz (the stack's healthcheck) and the ACME
            challenges (which the CA fetches without credentials) needs it: /routes carries
            the ACME keys, /status and /metrics name every zone's hosts, services and errors.
            A zone's token (--zone-token-files) gets that zone's routes and status only."""
            if request.path != "/healthz" and \
                    not request.path.startswith("/.well-known/acme-challenge/") and \
                    not self.authorized(request):
                self.metrics.unauthorized.inc()
                raise web.HTTPUnauthorized(
                    text="a token is needed (--controller-token-file), or a zone's token with "
                    "?zone= of that zone\n", headers={"WWW-Authenticate": "Bearer"})
            response: web.StreamResponse = await handler(request)
            return response

        app = web.Application(middlewares=[token])
        for path, handler in (("/routes", self.routes), ("/healthz", healthz),
                              ("/readyz", readyz), ("/status", status),
                              ("/metrics", make_aiohttp_handler(self.metrics.registry)),
                              ("/.well-known/acme-challenge/{token}", self.challenge)):
            app.router.add_get(path, handler)
        app.router.add_post("/acme/renew", self.renew)
        add_page(app)  # shows /status, which it fetches: behind whatever protects /status
        return app


def _etag(value: str | None) -> str | None:
    if not value:
        return None
    return value.strip().removeprefix("W/").strip('"') or None


class Docker:
    """The Docker API through the docker SDK (blocking: used from threads)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        self._closing = threading.Event()
        self._stream: Any = None
        self._api: Any = None  # for the lists: one connection, used by one thread at a time

    def client(self) -> Any:
        import docker  # only the controller needs the SDK

        return docker.APIClient(base_url=self.url, version=DOCKER_API_VERSION,
                                timeout=self.timeout)

    def _call(self, call: Callable[[Any], Any]) -> Any:
        if self._api is None:
            self._api = self.client()
        try:
            return call(self._api)
        except Exception:
            self._api.close()
            self._api = None
            raise

    def services(self) -> list[Service]:
        return [Service.from_api(doc) for doc in self._call(lambda api: api.services())]

    def running(self, service_ids: list[str]) -> set[str]:
        tasks = self._call(lambda api: api.tasks(filters={"service": service_ids,
                                                          "desired-state": "running"}))
        return {str(t.get("ServiceID")) for t in tasks
                if (t.get("Status") or {}).get("State") == "running"}

    async def list_services(self) -> list[Service]:
        return await asyncio.to_thread(self.services)

    async def list_running(self, service_ids: list[str]) -> set[str]:
        return await asyncio.to_thread(self.running, service_ids)

    def follow(self, loop: asyncio.AbstractEventLoop, controller: Controller) -> None:
        """In a thread: pass each service event to the controller; reconnect when the stream
        breaks (1 s, doubling to 10 s)."""
        delay = 1.0
        while not self._closing.is_set():
            try:
                client = self.client()
                self._stream = client.events(decode=True, filters={"type": "service"})
                loop.call_soon_threadsafe(controller.event, "connected")
                delay = 1.0
                for event in self._stream:
                    action = str(event.get("Action") or event.get("status") or "unknown")
                    loop.call_soon_threadsafe(controller.event, action[:32])
                error = "the event stream ended"
            except Exception as exc:  # the SDK raises many kinds; retry after any
                error = f"{type(exc).__name__}: {exc}"
            if self._closing.is_set():
                return
            loop.call_soon_threadsafe(controller.events_lost, error)
            self._closing.wait(delay)
            delay = min(delay * 2, _BACKOFF_MAX)

    def close(self) -> None:
        self._closing.set()
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()


class FileRoutes:
    """The routes file as the controller reads it: its names are refused to labels (as the
    gateways refuse them), and with ACME its `tls: acme` routes get certificates. Read again
    when it changes; a bad file keeps the last good routes (the gateways report its errors)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: FileStamp | None = None
        self._table = RouteTable(())
        self._missing_said = False

    def __call__(self) -> RouteTable:
        current = stamp(self.path)
        if current is None and not self._missing_said:
            self._missing_said = True
            log.warning("routes_file_missing file=%s effect=%r", self.path,
                        "its names are not checked against labels here, and its tls: acme "
                        "routes get no certificate (mount the routes config)")
        if current != self._stamp:
            self._stamp = current
            try:
                self._table = load_routes(self.path)
            except RoutesError as exc:
                log.error("routes_file_refused file=%s error=%r", self.path, str(exc))
        return self._table


def _acme(settings: Settings, metrics: ControllerMetrics) -> AcmeManager | None:
    if settings.acme_directory is None:
        return None
    client = Client(settings.acme_directory, settings.acme_state_dir, settings.acme_email,
                    settings.acme_ca_bundle, challenges={})
    return AcmeManager(client, settings.acme_state_dir, metrics.registry,
                       renew_before=settings.acme_renew_before * 86400,
                       retry_min=settings.acme_retry_min)


async def run(settings: Settings) -> int:
    token = None
    if settings.controller_token_file is not None:
        token = read_token(settings.controller_token_file)
    elif settings.zone_token_files:
        raise SettingsError("--zone-token-files needs --controller-token-file (the token of "
                            "every zone)")
    elif settings.acme_directory is not None:
        raise SettingsError("--acme-directory needs --controller-token-file: the controller "
                            "sends the certificates' private keys to the gateways that show "
                            "the token, and to no one else")
    metrics = ControllerMetrics()
    acme = _acme(settings, metrics)
    docker_api = Docker(settings.docker_url)
    controller = Controller(docker_api.list_services, metrics, prefix=settings.label_prefix,
                            resync_interval=settings.resync_interval,
                            list_running=docker_api.list_running,
                            new_service_wait=settings.new_service_wait, token=token,
                            zone_tokens=tuple((z, read_token(f, "--zone-token-files"))
                                              for z, f in settings.zone_token_files),
                            acme=acme,
                            file_routes=FileRoutes(settings.routes) if settings.routes else None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(controller.app(), access_log=None)
    await runner.setup()
    listen = settings.controller_listen
    try:
        await web.TCPSite(runner, listen.host, listen.port).start()
    except OSError as exc:
        log.error("listen_failed address=%s error=%r", listen, str(exc))
        await runner.cleanup()
        return 1
    log.info("controller_listening address=%s docker=%s prefix=%s", listen,
             settings.docker_url, settings.label_prefix)
    watcher = threading.Thread(target=docker_api.follow, args=(loop, controller),
                               name="docker-events", daemon=True)
    watcher.start()
    acme_task = None
    if acme is not None:
        log.info("acme_on directory=%s state_dir=%s", settings.acme_directory,
                 settings.acme_state_dir)
        controller.acme_wanted()
        acme_task = asyncio.create_task(acme.run(stop), name="acme")
    try:
        await controller.run(stop)
    finally:
        if acme_task is not None:
            acme_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acme_task
        controller.close()
        docker_api.close()
        await runner.cleanup()
    log.info("controller_stopped")
    return 0
