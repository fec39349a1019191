"""The controller's HTTP server: routes from service labels, served to the gateways.

One replica on a manager node reads Docker (through a socket proxy that allows only reads, or the
socket itself) with the docker SDK: it lists the services, follows the event stream for service
create, update and remove, and turns the labels into routes (labels). The gateways never
see the Docker socket: they ask this server.

    GET /routes                          {"version": V, "routes": [...], "errors": [...]}
    GET /routes?version=V&wait=30        the same, at once if the routes are not V any more,
                                         otherwise when they change; 304 after `wait` seconds
    GET /routes?zone=dmz                 only the routes of that zone (a gateway with --zone)
    /metrics /healthz /readyz /status
    /dashboard/                          a page showing /status (core/dashboard.py)

Until Docker has answered once, /routes answers 503 and the gateways keep the routes they have.
When Docker stops answering later, the last routes keep being served, and /readyz says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from agent.controller.sync import Controller
from agent.core.dashboard import add_page
from agent.core.fields import ZONE_RE
from agent.core.settings import bearer_matches

WAIT_MAX = 300.0


def make_app(c: Controller) -> web.Application:
    """/routes (long-polled by the gateways), /healthz, /readyz, /status, /metrics, the ACME
    challenges and /acme/renew, and the dashboard; behind the controller's tokens."""

    async def routes(request: web.Request) -> web.StreamResponse:
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
        if not c.catalog.synced:
            return web.json_response({"error": "not synchronised with Docker yet",
                                      "detail": c.last_error}, status=503)
        known = request.query.get("version") or _etag(request.headers.get("If-None-Match"))
        deadline = time.monotonic() + wait
        doc = c.catalog.document(zone)
        if c.acme is not None and known == doc["version"]:
            c.acme.gateway_seen(zone)  # it has the routes: their challenges can be answered
        c.metrics.waiting.inc()
        try:
            while known == doc["version"] and not c.closing and \
                    (left := deadline - time.monotonic()) > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await c.changed.wait()
                doc = c.catalog.document(zone)
        finally:
            c.metrics.waiting.dec()
        headers = {"ETag": f'"{doc["version"]}"', "Cache-Control": "no-cache"}
        if known == doc["version"]:
            return web.Response(status=304, headers=headers)
        response = web.json_response(doc, headers=headers)
        if c.acme is not None:
            c.acme.gateway_seen(zone)  # (as soon as it has reloaded)
        return response

    def authorized(request: web.Request) -> bool:
        """The token of every zone; or a zone's token, for that zone's routes and status only
        (`?zone=` of that zone), and /readyz."""
        if c.token is None:
            return True
        given = request.headers.get("Authorization", "")
        allowed = bearer_matches(given, c.token)
        for zone, token in c.zone_tokens:  # each compared: the time tells nothing
            if bearer_matches(given, token):
                allowed |= request.path == "/readyz" or (
                    request.path in ("/routes", "/status") and
                    request.query.getall("zone", []) == [zone])
        return allowed

    async def challenge(request: web.Request) -> web.Response:
        """HTTP-01: the key authorization of a pending challenge, which a gateway forwards."""
        validation = c.challenges.get(request.match_info["token"])
        if validation is None:
            raise web.HTTPNotFound(text="no such challenge\n")
        return web.Response(text=validation, content_type="application/octet-stream")

    async def renew(request: web.Request) -> web.Response:
        """POST /acme/renew[?host=H]: order these certificates again now."""
        if c.acme is None:
            raise web.HTTPNotFound(text="ACME is off (no --acme-directory)\n")
        hosts = request.query.getall("host", None)
        chosen = c.acme.renew(hosts)
        if hosts and not chosen:
            raise web.HTTPNotFound(text="no route with tls: acme has these hosts\n")
        return web.json_response({"renewing": chosen}, status=202)

    async def healthz(_: web.Request) -> web.Response:
        age = time.monotonic() - c.heartbeat
        ok = age < max(60.0, 3 * c.resync_interval)
        return web.Response(status=200 if ok else 503,
                            text=f"{'ok' if ok else 'dead'}: loop {age:.1f}s ago\n")

    async def readyz(_: web.Request) -> web.Response:
        ok, problems = c.ready()
        return web.Response(status=200 if ok else 503,
                            text="ready\n" if ok else "not ready: " + "; ".join(problems)
                            + "\n")

    async def status(request: web.Request) -> web.Response:
        zones = request.query.getall("zone", [])
        if len(zones) > 1 or (zones and not ZONE_RE.fullmatch(zones[0])):
            raise web.HTTPBadRequest(text="zone: give one valid zone name\n")
        return web.json_response(c.status(zones[0] if zones else None),
                                 dumps=lambda o: json.dumps(o, indent=2) + "\n")

    @web.middleware
    async def token(request: web.Request, handler: Any) -> web.StreamResponse:
        """With a token, everything but /healthz (the stack's healthcheck) and the ACME
        challenges (which the CA fetches without credentials) needs it: /routes carries
        the ACME keys, /status and /metrics name every zone's hosts, services and errors.
        A zone's token (--zone-token-files) gets that zone's routes and status only."""
        if request.path != "/healthz" and \
                not request.path.startswith("/.well-known/acme-challenge/") and \
                not authorized(request):
            c.metrics.unauthorized.inc()
            raise web.HTTPUnauthorized(
                text="a token is needed (--controller-token-file), or a zone's token with "
                "?zone= of that zone\n", headers={"WWW-Authenticate": "Bearer"})
        response: web.StreamResponse = await handler(request)
        return response

    app = web.Application(middlewares=[token])
    for path, handler in (("/routes", routes), ("/healthz", healthz),
                          ("/readyz", readyz), ("/status", status),
                          ("/metrics", make_aiohttp_handler(c.metrics.registry)),
                          ("/.well-known/acme-challenge/{token}", challenge)):
        app.router.add_get(path, handler)
    app.router.add_post("/acme/renew", renew)
    add_page(app)  # shows /status, which it fetches: behind whatever protects /status
    return app


def _etag(value: str | None) -> str | None:
    if not value:
        return None
    return value.strip().removeprefix("W/").strip('"') or None
