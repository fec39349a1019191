"""The reconcile loop: one cycle = read routes, discover, render, apply. Returns a status line.

Cadence is fixed (`next_run += interval`); a cycle that overruns is logged. Changes are applied at
once after a quiet period, and coalesced while reloads come fast: after a reload, the next one
waits until `reload_min_interval` has passed, and then applies the latest state. A rolling update
of ten tasks thus costs a handful of reloads, not twenty.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from agent.core.aio import Backoff, first
from agent.core.fields import is_address
from agent.core.files import FileStamp, stamp, write_atomic
from agent.core.routes import RoutesError, RoutesUnreadable, RouteTable, Target
from agent.gateway.drivers.discovery import Discovery, sort_addresses
from agent.gateway.drivers.dnsserver import LocalResolver
from agent.gateway.drivers.nginx import ApplyError, Nginx
from agent.gateway.drivers.ports import load_for_gateway, unbindable, without_ports
from agent.gateway.drivers.routefiles import RouteFiles
from agent.gateway.drivers.source import ControllerRoutes
from agent.gateway.drivers.tls import Certificates
from agent.gateway.model import Endpoints, Rendered, Snapshot
from agent.gateway.observe.metrics import Metrics
from agent.gateway.observe.state import State, describe_change
from agent.gateway.plan.desired import Planner, acme_target
from agent.gateway.plan.filters import RenderError
from agent.gateway.settings import GatewaySettings

log = logging.getLogger("agent.gateway.reconciler")

_RETRY_FAILED_MAX = 60.0
_RETRY_UNREADABLE_MAX = 30.0  # seconds between reads of a routes file that cannot be read
# seconds after nginx starts before a gateway whose upstreams nginx resolves is ready: without
# the agent's resolver, its first lookups have been answered or have timed out by then
# (resolver_timeout 1s); with it, readiness waits until nginx has asked for every name, and at
# most FIRST_LOOKUPS_MAX (a name nginx never asks must not keep the gateway unready for ever)
FIRST_LOOKUPS = 1.0
FIRST_LOOKUPS_MAX = 10.0
class Reconciler:
    def __init__(self, settings: GatewaySettings, nginx: Nginx, discovery: Discovery,
                 renderer: Planner, metrics: Metrics, state: State,
                 clock: Callable[[], float] = time.monotonic,
                 certificates: Certificates | None = None,
                 sources: ControllerRoutes | None = None,
                 route_files: RouteFiles | None = None,
                 resolver: LocalResolver | None = None) -> None:
        self.resolver = resolver  # answers nginx's lookups (gateway/dnsserver.py)
        self.certificates = certificates
        self.route_files = route_files
        self.sources = sources  # routes from the controller, merged with the file's
        self.settings = settings
        self.nginx = nginx
        self.discovery = discovery
        self.renderer = renderer
        self.metrics = metrics
        self.state = state
        self.clock = clock
        self.wake = asyncio.Event()
        self._routes_stamp: FileStamp | None = None
        # the routes file's; None: the gateway has none (absent at start), and serves the
        # controller's copy of it (gateway/source.py)
        self._file_routes: RouteTable | None = RouteTable(())
        # a routes file that could not be read is tried again (its stamp does not tell)
        self._routes_retry = Backoff(settings.poll_interval, _RETRY_UNREADABLE_MAX)
        self._routes_retry_at: float | None = None
        self._applied_snapshot: Snapshot = {}
        self._routes_pending: str | None = None  # why the gateway has no routes yet
        self._applied_routes = RouteTable(())  # as rendered: without refused tcp ports
        self._table = RouteTable(())  # the routes last rendered (_servable())
        self._last_reload_mono: float | None = None
        self._failed: tuple[str, float, int] | None = None  # generation, retry at, failures
        self._pending_due: float | None = None
        self._rendered: tuple[object, Rendered] | None = None
        self._lookup_cursor = 0

    # -- routes ------------------------------------------------------------------------------

    def load_initial_routes(self) -> None:
        """At start: an invalid routes file is fatal (RoutesError with every problem)."""
        path = self.settings.routes
        if path is not None:
            self._routes_stamp = stamp(path)
            if self._routes_stamp is None and self.sources is not None:
                self._file_routes = None
                log.info("routes_file_absent file=%s effect=%r", path, "the controller's copy "
                         "of the routes file is served, and followed without a restart")
            else:
                self._file_routes = load_for_gateway(path, self.settings)
                self.metrics.routes_loads.labels("success").inc()
        elif self.sources is not None:
            self._file_routes = None
        self._use_routes()

    def _use_routes(self) -> None:
        """The file's routes, merged with the controller's when there is one; then the zone."""
        if self.sources is not None:
            table = self.sources.merge(self._file_routes)
            self._routes_pending = None if self._file_routes is not None or \
                self.sources.received is not None else (
                    f"no routes yet: no routes file here, and the controller "
                    f"({self.sources.url}) has not answered (nor left a saved copy)")
        else:
            assert self._file_routes is not None, "a gateway without a controller has a file"
            table = self._file_routes
        table = table.for_zone(self.settings.zone)
        if self._routes_pending is not None or table == self._applied_routes:
            self.state.routes_pending = self._routes_pending  # else: once nginx serves them
        if self.sources is not None and table != self.state.routes:
            log.info("routes_merged routes=%d", len(table.routes))
        self.state.routes = table

    def _reload_routes_if_changed(self) -> None:
        """On a live change, a bad file is refused and the routes in use keep serving."""
        if self.sources is not None:  # the controller's routes may have changed
            self._use_routes()
        path = self.settings.routes
        if path is None:
            return
        current = stamp(path)
        retry = self._routes_retry_at
        if current == self._routes_stamp and (retry is None or self.clock() < retry):
            return
        self._routes_stamp = current
        try:
            table = load_for_gateway(path, self.settings)
        except RoutesError as exc:
            # not read at all (no descriptor left, a moment without the file): read it again
            # then, not only when it changes
            unreadable = isinstance(exc, RoutesUnreadable)
            delay = self._routes_retry.failed() if unreadable else 0.0
            self._routes_retry_at = self.clock() + delay if unreadable else None
            self.state.routes_error = str(exc)
            self.metrics.routes_loads.labels("invalid").inc()
            log.error("routes_refused file=%s errors=%d keeping=%d detail=%r%s", path,
                      len(exc.errors), len(self.state.routes.routes), str(exc),
                      f" retry_in={delay:.0f}s" if unreadable else "")
            return
        self._routes_retry.reset()
        self._routes_retry_at = None
        self.state.routes_error = None
        self.metrics.routes_loads.labels("success").inc()
        if table != self._file_routes:
            log.info("routes_loaded file=%s routes=%d", path,
                     len(table.for_zone(self.settings.zone).routes))
        self._file_routes = table
        self._use_routes()

    # -- one cycle ---------------------------------------------------------------------------

    @property
    def acme_controller(self) -> tuple[Target, int] | None:
        return acme_target(self.sources.url if self.sources else None, self.state.routes)

    def _applied(self, rendered: Rendered, at: float, detail: str) -> None:
        """nginx serves `rendered` (started with it, or reloaded): remember what it was made
        of, say so, save the endpoints, and let the stores drop the files it no longer uses."""
        self._applied_snapshot = self.state.snapshot
        self._applied_routes = self._table
        self.state.routes_pending = self._routes_pending
        self.state.applied_generation = rendered.generation
        self.state.last_reload_at = at
        self.state.last_reload_result = "success"
        self.state.last_reload_detail = detail
        self.metrics.last_reload_success.set(at)
        self.metrics.last_reload_successful.set(1)
        self._save()
        if self.certificates is not None:
            self.certificates.applied(self.state.tls)
        if self.route_files is not None:
            self.route_files.applied(self.state.files)

    def _due_names(self, names: list[str]) -> list[str]:
        """The names to look up this cycle: all of them when they fit the budget of
        --dns-lookups-per-second; else names never looked up, then the next ones in turn, so
        that each is looked up again every len(names) / budget cycles."""
        budget = max(1, int(self.settings.dns_lookups_per_second * self.settings.poll_interval))
        if len(names) <= budget:
            return names
        known = self.state.snapshot
        due = [n for n in names if n not in known]
        rest = sorted(n for n in names if n in known)
        take = max(0, budget - len(due))
        if rest and take:
            start = self._lookup_cursor % len(rest)
            due += (rest[start:] + rest[:start])[:take]
            self._lookup_cursor = start + take
        return due

    async def discover(self) -> Snapshot:
        table = self.state.routes
        names = [t.lookup_name for t in table.targets]
        acme = self.acme_controller
        if acme is not None and not is_address(acme[0].name):
            names.append(acme[0].lookup_name)
        # a service's tasks are screened (--task-networks); a `host:` name is the operator's
        services = {t.lookup_name for t in table.targets if t.kind == "service"}
        due = self._due_names(names)
        resolved = await self.discovery.resolve(due, self.state.snapshot, services)
        snapshot = {n: resolved[n] if n in resolved else self.state.snapshot[n] for n in names
                    if n in resolved or n in self.state.snapshot}
        self.state.snapshot = snapshot
        # The nameserver works if it answered anything; one service failing (a typo, a name the
        # resolver forwards upstream) must not make the whole gateway unready.
        if not snapshot or not all(e.stale for e in snapshot.values()):
            self.state.last_discovery_ok = self.clock()
        self.metrics.set_endpoints({
            t.name: (len(snapshot[t.lookup_name].addresses), snapshot[t.lookup_name].stale)
            for t in table.targets})
        self.metrics.routes.set(len(table.routes))
        return snapshot

    def _servable(self) -> RouteTable:
        """The routes to render: the tcp routes on a port nginx could not listen on (another
        program holds it) are refused alone, saying why in nginx's words, and tried again
        every cycle; everything else is applied. nginx -t does not bind, and a reload that
        cannot bind keeps the old configuration for every route."""
        table = self.state.routes
        refused: dict[int, str] = {}
        if table.tcp and self.renderer.stream is not None:
            held = {r.listen for r in self._applied_routes.tcp} if self.nginx.running else set()
            refused = unbindable(table, self.renderer.stream.address, held)
        if refused != self.state.tcp_refused:
            for port, why in refused.items():
                if self.state.tcp_refused.get(port) != why:
                    log.error("tcp_port_refused listen=%d error=%r", port, why)
            for port in sorted(set(self.state.tcp_refused) - set(refused)):
                log.info("tcp_port_free listen=%d", port)
            self.state.tcp_refused = refused
        self._table = without_ports(table, refused)
        return self._table

    def render(self) -> Rendered:
        """Render, or reuse the last rendering when its inputs are the same (the idle case).

        Certificates are an input: a replaced certificate file changes the plan (its copy is
        named by its content), so the next cycle renders and reloads.
        """
        if self.certificates is not None:
            self.state.tls = self.certificates.plan(self.state.routes)
            self.metrics.tls.plan = self.state.tls
        if self.route_files is not None:
            self.state.files = self.route_files.plan(self.state.routes)
        table = self._servable()
        key = (table, tuple(sorted(
            (name, e.addresses) for name, e in self.state.snapshot.items())), self.state.tls,
            self.state.files)
        if self._rendered is None or self._rendered[0] != key:
            self._rendered = (key, self.renderer.render(table, self.state.snapshot,
                                                        tls=self.state.tls,
                                                        acme=self.acme_controller,
                                                        files=self.state.files))
        return self._rendered[1]

    async def apply(self, rendered: Rendered) -> str:
        change = describe_change(self._applied_snapshot, self.state.snapshot,
                                 self._applied_routes, self._table)
        started = time.time()
        try:
            await self.nginx.apply(rendered.text, rendered.generation, rendered.stream)
        except ApplyError as exc:
            self.metrics.reloads.labels("failure").inc()
            self.metrics.apply_failures.labels(exc.stage).inc()
            self.metrics.last_reload_successful.set(0)
            self.state.last_reload_result = "failure"
            self.state.last_reload_detail = str(exc)
            self.state.last_error = str(exc)
            failures = self._failed[2] + 1 if self._failed and self._failed[0] == \
                rendered.generation else 1
            backoff = Backoff.after(failures, max(self.settings.reload_min_interval, 2.0),
                                    _RETRY_FAILED_MAX)
            self._failed = (rendered.generation, self.clock() + backoff, failures)
            log.error("reload_failed stage=%s change=%r error=%r retry_in=%.0fs", exc.stage,
                      change, str(exc), backoff)
            return f"reload refused ({change}): {exc}"
        self._failed = None
        self._last_reload_mono = self.clock()
        self.metrics.reloads.labels("success").inc()
        self._applied(rendered, started, change)
        return f"reloaded: {change}"

    def _followed_without_reload(self) -> str:
        """The configuration is the one serving; tasks may still have changed, which nginx
        follows by itself (upstream `resolve`): say so, and keep them as applied."""
        if self._applied_routes != self._table or {
                n: e.addresses for n, e in self._applied_snapshot.items()} == {
                n: e.addresses for n, e in self.state.snapshot.items()}:
            return "no change"
        change = describe_change(self._applied_snapshot, self.state.snapshot,
                                 self._applied_routes, self._table)
        self._applied_snapshot = self.state.snapshot
        self._save()
        self.metrics.endpoint_changes.inc()
        return f"followed without reload: {change}"

    def _due(self, generation: str) -> float | None:
        """When a configuration of this generation may be applied (None: now)."""
        now = self.clock()
        if self._failed is not None and self._failed[0] == generation and self._failed[1] > now:
            return self._failed[1]
        if self._last_reload_mono is not None:
            due = self._last_reload_mono + self.settings.reload_min_interval
            if due > now:
                return due
        return None

    async def cycle(self) -> str:
        self._reload_routes_if_changed()
        await self.discover()
        rendered = self.render()
        self._pending_due = None
        if rendered.generation == self.nginx.generation:
            if self._failed is not None:  # the refused change went away: nothing is pending
                self._failed = None
                self.metrics.last_reload_successful.set(1)
            status = self._followed_without_reload()
        elif (due := self._due(rendered.generation)) is not None:
            self._pending_due = due
            retry = self._failed is not None and self._failed[0] == rendered.generation
            status = (f"reload refused earlier; retrying in {due - self.clock():.1f}s" if retry
                      else f"change pending: applying in {due - self.clock():.1f}s")
        else:
            status = await self.apply(rendered)
        if self.state.routes_error:
            status += f"; routes file refused: {self.state.routes_error}"
        status += self._tcp_note()
        if self.state.tls is not None and self.state.tls.errors:
            status += "; certificate refused for " + ", ".join(
                h.host for h in self.state.tls.errors)
        for kind, what in (("htpasswd", "password file"), ("page", "error page")):
            refused = [f.error or f.name for f in (self.state.files.errors
                                                    if self.state.files else ())
                       if f.kind == kind]
            if refused:
                status += f"; {what} refused: " + "; ".join(refused)
        stub = await self.nginx.stub_status()
        self.metrics.stub_status.last = stub
        return status

    # -- start and the saved state ------------------------------------------------------------

    async def start(self) -> str:
        """First configuration, then nginx. Failures here are fatal (ApplyError, NginxDied).

        Lookups that fail now fall back to the endpoints saved by the last run (--state-dir), so a
        gateway restarted while discovery is down serves its last known tasks at once.
        """
        saved = self._load_saved()
        if saved:
            self.state.snapshot = saved
        if self.resolver is not None:
            await self.resolver.start()
        await self.discover()
        self.state.serving_saved = any(e.stale and e.addresses
                                       for e in self.state.snapshot.values())
        rendered = self.render()
        await self.nginx.apply(rendered.text, rendered.generation, rendered.stream)
        if rendered.resolving:
            # nginx's workers look their upstreams' names up 1 ms after they start, and until
            # the answer is in, such an upstream has no server ("no live upstreams", 502: seen
            # for the first request, a millisecond after the start). The agent's resolver says
            # which names nginx has asked for (state.first_lookups); without it, they are
            # answered within resolver_timeout.
            self.state.first_lookups.update(rendered.resolving)
        await self.nginx.start()
        await self.nginx.wait_serving(rendered.generation)
        if rendered.resolving:
            self.state.first_lookups_until = self.clock() + (
                FIRST_LOOKUPS_MAX if self.resolver is not None else FIRST_LOOKUPS)
        self._applied(rendered, time.time(), "started")
        stale = sorted(n for n, e in self.state.snapshot.items() if e.stale and e.addresses)
        return "started" + (f" with saved endpoints for {', '.join(stale)}" if stale else "") \
            + self._tcp_note()

    def _tcp_note(self) -> str:
        """'; tcp port refused: 5432: bind() to ... failed (...)', or ''."""
        if not self.state.tcp_refused:
            return ""
        return "; tcp port refused: " + ", ".join(
            f"{port}: {why}" for port, why in sorted(self.state.tcp_refused.items()))

    def _state_file(self) -> Path | None:
        d = self.settings.state_dir
        return d / "endpoints.json" if d is not None else None

    def _load_saved(self) -> dict[str, Endpoints]:
        path = self._state_file()
        if path is None:
            return {}
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            # addresses from a file pass the same check as addresses from DNS
            return {name: Endpoints(sort_addresses(e["addresses"]),
                                    "ok" if e["addresses"] else "none", True,
                                    "saved by a previous run", float(e.get("since", 0.0)))
                    for name, e in doc["endpoints"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("state_unreadable file=%s error=%r", path, str(exc))
            return {}

    def _save(self) -> None:
        path = self._state_file()
        if path is None:
            return
        doc = {"endpoints": {n: {"addresses": list(e.addresses), "state": e.state,
                                 "since": e.since}
                             for n, e in self._applied_snapshot.items() if e.state != "unknown"}}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(doc, indent=1, sort_keys=True))
        except OSError as exc:
            log.warning("state_not_saved file=%s error=%r", path, str(exc))

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        interval = self.settings.poll_interval
        next_run = self.clock()
        last_status = ""
        while not stop.is_set():
            started = self.clock()
            try:
                status = await self.cycle()
                self.metrics.cycles.labels("ok").inc()
            except (RenderError, OSError, ValueError) as exc:
                status = f"cycle failed: {exc}"
                self.state.last_error = status
                self.metrics.cycles.labels("error").inc()
                log.error("cycle_failed error=%r", str(exc))
            except Exception as exc:  # one bad cycle must not end the daemon
                status = f"cycle failed: {exc!r}"
                self.state.last_error = status
                self.metrics.cycles.labels("error").inc()
                log.exception("cycle_failed")
            elapsed = self.clock() - started
            self.metrics.reconcile_duration.observe(elapsed)
            self.state.record(status)
            self.state.heartbeat = self.clock()
            if status != last_status or status.startswith("reloaded"):
                log.log(logging.DEBUG if status == "no change" else logging.INFO,
                        "cycle status=%r seconds=%.3f", status, elapsed)
                last_status = status
            next_run += interval
            now = self.clock()
            if now > next_run:
                log.warning("cycle_overran seconds=%.3f interval=%.3f", elapsed, interval)
                next_run = now
            wake_at = next_run
            if self._pending_due is not None:
                wake_at = min(wake_at, self._pending_due)
            await self._sleep_until(wake_at, stop)

    async def _sleep_until(self, when: float, stop: asyncio.Event) -> None:
        """Until `when` (by the clock), or earlier when woken or stopped."""
        self.wake.clear()
        await first(stop.wait(), self.wake.wait(), asyncio.sleep(max(0.0, when - self.clock())))
