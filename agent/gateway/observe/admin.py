"""The admin HTTP server: /metrics, /healthz, /readyz, /status. Read-only: nothing here changes
state. /status and /metrics name every route, service and task address: with a token
(--admin-token-file) they answer only `Authorization: Bearer TOKEN`; /healthz and /readyz, which
keepalived's check and the orchestrator ask, stay open and say nothing but ok or why not.

- /healthz: the loop is alive (a cycle finished within a few intervals).
- /readyz: nginx runs, a configuration is applied and serving, and discovery is fresh.
- /status: JSON, what a human asks first: routes, endpoints per service, last reload, last error.
- /dashboard/: a page that shows /status and follows it (agent/dashboard.py).

HEAD answers with the status code only (aiohttp drops the body for HEAD).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import hdrs, web

from agent import __version__
from agent.core.dashboard import PREFIX, add_page
from agent.core.settings import bearer_matches
from agent.core.vrrp import vrrp_status
from agent.gateway.drivers.nginx import Nginx
from agent.gateway.drivers.ports import table_rows
from agent.gateway.drivers.source import FILE_SOURCE, ControllerRoutes
from agent.gateway.observe.certs import status as tls_status
from agent.gateway.observe.metrics import Metrics
from agent.gateway.observe.state import State, words
from agent.gateway.plan.naming import route_label
from agent.gateway.settings import GatewaySettings

TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # keepalived's check, the orchestrator's


def is_open(path: str) -> bool:
    """Paths that answer without the admin token: the health checks, and the dashboard's own
    files (they hold no data: the page fetches /status with the token)."""
    return path in OPEN_PATHS or path in ("/", "/dashboard") or path.startswith(PREFIX)
LIVENESS_INTERVALS = 10  # a loop silent for this many intervals (at least 30 s) is not alive


def liveness(state: State, settings: GatewaySettings, now: float) -> tuple[bool, str]:
    limit = max(30.0, LIVENESS_INTERVALS * settings.poll_interval)
    if state.heartbeat == 0.0:
        age = now - state.started
        return age < limit, f"no cycle finished yet ({age:.1f}s since start)"
    age = now - state.heartbeat
    return age < limit, f"last cycle {age:.1f}s ago"


def readiness(state: State, nginx: Nginx, now: float) -> tuple[bool, list[str]]:
    problems = []
    if state.draining:  # first: keepalived's check must fail at once (agent/gateway/drain.py)
        problems.append("draining: the gateway is stopping")
    if not nginx.running:
        problems.append("nginx is not running")
    if nginx.generation is None:
        problems.append("no configuration applied yet")
    if state.last_discovery_ok == 0.0 and state.routes.routes and not state.serving_saved:
        problems.append("discovery has not answered yet")
    if state.routes_pending is not None:  # a gateway with no routes must not take the VIP
        problems.append(state.routes_pending)
    if now < state.first_lookups_until and state.first_lookups:
        problems.append(f"nginx has not looked up {len(state.first_lookups)} of its upstreams' "
                        "names yet")
    # A DNS outage later on does not make the gateway unready: it serves the last known tasks
    # (marked stale in /status and gateway_upstream_endpoints_stale). Unready there would have
    # keepalived put every node in FAULT when DNS fails everywhere at once (no VIP at all) and
    # swarm restart every gateway for something a restart cannot fix.
    return not problems, problems


def status_document(state: State, nginx: Nginx, settings: GatewaySettings, now: float,
                    sources: ControllerRoutes | None = None,
                    traffic: dict[str, Any] | None = None) -> dict[str, Any]:
    """/status. `traffic`: per-route request counts (Traffic.status) when they are on."""
    ready, problems = readiness(state, nginx, now)
    endpoints = {}
    for target in state.routes.targets:
        e = state.snapshot.get(target.lookup_name)
        endpoints[target.name] = {
            "kind": target.kind,
            "lookup": target.lookup_name,
            "addresses": list(e.addresses) if e else [],
            "state": e.state if e else "unknown",
            "stale": e.stale if e else False,
            "error": e.error if e else None,
            "since": e.since if e and e.since else None,  # these addresses first seen (wall)
            # answered, but not tasks: outside --task-networks (gateway_dns_refused_addresses)
            "refused": list(e.refused) if e else [],
        }
    source_of = {}
    if sources is not None:
        source_of = {(r.hosts, r.path, r.match): s for s, r in zip(
            sources.merged.sources, sources.merged.table.routes, strict=True)}
    routes = [{**r.model_dump(mode="json", exclude_none=True), "label": route_label(r),
               "source": source_of.get((r.hosts, r.path, r.match), FILE_SOURCE)}
              for r in state.routes.routes]
    return {
        "version": __version__,
        "status": state.status,
        "ready": ready,
        "problems": problems,
        "zone": settings.zone,
        "nginx": {
            "running": nginx.running,
            "pid": nginx.process.pid if nginx.process else None,
            "generation": nginx.generation,
            # open files and connections per worker, listen backlog (gateway/capacity.py)
            "capacity": nginx.capacity.status() if nginx.capacity is not None else None,
        },
        "routes": routes,
        "tcp": table_rows(state.routes, state.tcp_refused),
        "routes_error": state.routes_error,
        "routes_source": sources.status() if sources is not None else None,
        "endpoints": endpoints,
        "tls": tls_status(state.tls),
        "last_reload": {
            "at": state.last_reload_at,
            "result": state.last_reload_result,
            "detail": state.last_reload_detail,
        },
        "last_error": state.last_error,
        "history": [{"at": at, "status": words(outcome)}
                    for at, outcome in reversed(state.history)],
        "discovery_age": round(now - state.last_discovery_ok, 1)
        if state.last_discovery_ok else None,
        "traffic": {"at": time.time(), **traffic} if traffic is not None else None,
        "vrrp": vrrp_status(settings.vrrp_state_file),
    }


def make_app(state: State, nginx: Nginx, metrics: Metrics, settings: GatewaySettings,
             clock: Callable[[], float] = time.monotonic,
             sources: ControllerRoutes | None = None,
             token: str | None = None) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        ok, detail = liveness(state, settings, clock())
        return web.Response(status=200 if ok else 503, text=("ok: " if ok else "dead: ") + detail
                            + "\n")

    async def readyz(_: web.Request) -> web.Response:
        ok, problems = readiness(state, nginx, clock())
        text = "ready\n" if ok else "not ready: " + "; ".join(problems) + "\n"
        # gateway-check's watcher tells a drain from a failure by the reason phrase: it hands
        # the VIP over without cutting connections (agent/check/hold.py)
        reason = "Draining" if state.draining else None
        return web.Response(status=200 if ok else 503, text=text, reason=reason)

    async def status(_: web.Request) -> web.Response:
        return web.json_response(status_document(state, nginx, settings, clock(), sources,
                                                 metrics.traffic.status()),
                                 dumps=lambda o: json.dumps(o, indent=2) + "\n")

    @web.middleware
    async def authorized(request: web.Request, handler: Any) -> web.StreamResponse:
        if token is not None and not is_open(request.path) and \
                not bearer_matches(request.headers.get("Authorization", ""), token):
            metrics.admin_unauthorized.inc()
            raise web.HTTPUnauthorized(text="a token is needed (--admin-token-file)\n",
                                       headers={"WWW-Authenticate": "Bearer"})
        response: web.StreamResponse = await handler(request)
        return response

    app = web.Application(middlewares=[authorized])
    async def metrics_text(request: web.Request) -> web.StreamResponse:
        """Prometheus's text format whatever the client accepts (every Prometheus reads it);
        compressed when the client asks. Sent a part at a time (chunked): at 10,000 routes a
        scrape is 36 MB, which built whole, encoded and compressed took the agent's memory
        100 MiB above its resting size."""
        if request.method == hdrs.METH_HEAD:  # a streamed body would go out unframed
            return web.Response(headers={hdrs.CONTENT_TYPE: TEXT_FORMAT})
        response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: TEXT_FORMAT})
        response.enable_compression()
        await response.prepare(request)
        try:
            for chunk in metrics.exposition_chunks(request.query.getall("name[]", [])):
                await response.write(chunk)
        except ConnectionError:  # the scraper went away (its timeout): nothing to answer
            return response
        await response.write_eof()
        return response

    for path, handler in (("/metrics", metrics_text), ("/healthz", healthz),
                          ("/readyz", readyz), ("/status", status)):
        app.router.add_get(path, handler)  # add_get also answers HEAD
    # The page holds no data: what it shows is /status, fetched by the page, so whatever
    # protects /status protects what the page shows (docs/dashboard.md). Its files stay open:
    # a browser opening the page cannot send a header, and on 401 from /status the page asks
    # for the token and sends it as `Authorization: Bearer` itself.
    add_page(app)
    return app
