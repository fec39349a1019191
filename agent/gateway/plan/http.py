"""The http context: routes, endpoints, certificates and files in, the servers and locations of
nginx's `http {}` out (the values the template writes; plan/desired.py renders it). No I/O.

Same input, same values: everything is sorted, nothing depends on time or dict order.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.core.routes import Route, Target
from agent.gateway.model import FilesPlan, Served, TlsPlan
from agent.gateway.plan.clientchecks import RateZone, allow_var, rate_zone
from agent.gateway.plan.cors import CorsPlan, cors_plan
from agent.gateway.plan.edgetls import (
    ClientCerts,
    UpstreamTlsPlan,
    ca_locked,
    client_certs,
    upstream_tls,
)
from agent.gateway.plan.forwardauth import AuthPlan, auth_plan
from agent.gateway.plan.match import Condition, Dispatch, conditions, dispatch
from agent.gateway.plan.naming import route_root, sticky_var
from agent.gateway.plan.paths import PathMap, path_map, strict
from agent.gateway.plan.retry import DEFAULT as DEFAULT_RETRY
from agent.gateway.plan.retry import RetryPlan, retry_plan
from agent.gateway.plan.traffic import NO_TRAFFIC, Traffic, traffic
from agent.gateway.plan.upstreams import Upstream, upstream_key

# A kept-alive client connection is not closed within this many seconds of its last request, not
# even by an old worker after a reload: a request the client sends then is answered (with
# `Connection: close`) instead of meeting a closed socket (nginx 1.27.4, keepalive_min_timeout).
KEEPALIVE_MIN_TIMEOUT = 5
# compress: what gzip is worth it for (text/html is always among them for nginx)
GZIP_TYPES = ("text/plain", "text/css", "text/xml", "text/javascript", "application/javascript",
              "application/json", "application/xml", "application/rss+xml", "image/svg+xml")

@dataclass(frozen=True)
class Location:
    path: str
    root: str  # names the route in the access log (agent.gateway.observe.traffic.route_root)
    target: str
    upstream: str | None
    websocket: bool
    connect_timeout_ms: int
    read_timeout_ms: int
    max_body_size: int
    allow: tuple[str, ...] = ()  # client networks let in; empty: every client
    auth_realm: str | None = None  # basic_auth: the realm, and the checked file nginx reads
    auth_file: str | None = None
    locked: bool = False  # basic_auth with no usable password file: 503, never open
    rate_limit: RateZone | None = None
    strip_prefix: bool = False
    request_headers: tuple[tuple[str, str | None], ...] = ()  # (name, value; None: removed)
    response_headers: tuple[tuple[str, str | None], ...] = ()
    compress: bool = False
    error_page: str | None = None  # the page's copy (gateway/routefiles.py), under ERROR_PAGES_PATH
    maintenance: bool = False
    grpc: bool = False
    sticky: str | None = None  # the cookie's variable: the gateway sets the cookie when absent
    redirect_code: int | None = None  # a route that only redirects: `return CODE URL`
    redirect_to: str = ""
    redirect_keep_path: bool = False
    traffic: Traffic = NO_TRAFFIC  # h2c, canary, mirror (plan/traffic.py)
    auth: AuthPlan | None = None  # forward auth (plan/forwardauth.py)
    retry: RetryPlan = DEFAULT_RETRY  # proxy_next_upstream (plan/retry.py)
    cors: CorsPlan | None = None  # plan/cors.py
    client_certs: ClientCerts | None = None  # tls.client_ca (plan/edgetls.py)
    upstream_tls: UpstreamTlsPlan | None = None
    ca_locked: bool = False  # a CA file it needs was never good: 503
    match: tuple[Condition, ...] = ()  # the requests it takes of its path (plan/match.py)

    @property
    def adds_headers(self) -> bool:
        """An add_header here hides the server's (HSTS), which must then be said again."""
        return any(value is not None for _, value in self.response_headers) or \
            self.sticky is not None or self.traffic.sets_cookie or self.cors is not None or \
            self.upstream is not None  # X-Request-Id (observe.py)

    @property
    def own_headers(self) -> bool:
        """Request headers of its own: the http level's common set (plan/scale.py) does not
        apply, so the location says the whole set again."""
        return self.websocket or self.strip_prefix or bool(self.request_headers) or \
            bool(self.auth and self.auth.headers)  # forward auth's identity headers

    @property
    def own_hidden(self) -> bool:
        """Answer headers hidden of its own: the http level's proxy_hide_header (X-Request-Id,
        plan/scale.py) does not apply, so the location says it again."""
        return bool(self.response_headers) or self.cors is not None

    @property
    def checks(self) -> tuple[object, ...]:  # what a client must pass (gateway/paths.py)
        return (self.allow, self.auth_realm, self.auth_file, self.locked, self.rate_limit,
                self.client_certs, self.ca_locked)

    @property
    def allow_var(self) -> str | None:  # set by a `geo` of its networks (one per list)
        return allow_var(self.allow) if self.allow else None

    @property
    def checks_client(self) -> bool:
        """The location decides by the client's address (behind a trusted proxy: the one
        nginx's realip module takes from X-Forwarded-For)."""
        return bool(self.allow) or self.rate_limit is not None


@dataclass(frozen=True)
class Server:
    names: tuple[str, ...]
    locations: tuple[Location, ...]
    redirect: bool = False  # plain HTTP: every location redirects to HTTPS (the route's tls)
    certificate: Served | None = None  # an HTTPS server, with this certificate
    hsts: int = 0  # HTTPS: Strict-Transport-Security max-age (0: none)
    acme: bool = False  # plain HTTP: /.well-known/acme-challenge/ goes to the controller
    # hosts routed alike that share this server (plan/scale.py): each host and the root of its
    # route, which the one location takes from a map of $host; empty: the location's own root
    host_roots: tuple[tuple[str, str], ...] = ()

    @property
    def has_root(self) -> bool:
        return any(loc.path == "/" for loc in self.locations)

    @property
    def strict_paths(self) -> bool:  # routes that check differently (gateway/paths.py)
        return strict(self.locations)

    @property
    def path_map(self) -> PathMap | None:
        return path_map(self.locations)

    @functools.cached_property
    def _dispatch(self) -> tuple[dict[str, str], list[Dispatch]]:
        return dispatch(self.locations)

    @property
    def named(self) -> dict[str, str]:
        """The named location of each route (by its root) whose path is chosen by match."""
        return self._dispatch[0]

    @property
    def dispatches(self) -> list[Dispatch]:
        """The paths whose route is chosen by match (plan/match.py)."""
        return self._dispatch[1]

    @property
    def client_ca(self) -> str | None:
        """The CA file client certificates are verified against (the hosts' routes share it)."""
        return next((loc.client_certs.ca for loc in self.locations
                     if loc.client_certs is not None and loc.client_certs.ca), None)

    @property
    def pages_dir(self) -> str | None:
        """Where this server's error pages are (one directory: agent.gateway.drivers.routefiles)."""
        pages = sorted({str(Path(loc.error_page).parent) for loc in self.locations
                        if loc.error_page})
        return pages[0] + "/" if pages else None

    @property
    def auth_locations(self) -> list[AuthPlan]:
        """The internal locations the routes' auth subrequests go to, one per auth service."""
        found = {a.location: a for a in (loc.auth for loc in self.locations) if a is not None}
        return [found[name] for name in sorted(found)]


def location(route: Route, upstream: Upstream | None, files: FilesPlan | None,
             auth: AuthPlan | None = None) -> Location:
    auth_file = None
    if route.basic_auth is not None and files is not None:
        path = files.path(route.basic_auth.file)
        auth_file = str(path) if path is not None else None
    page_file = None
    if route.error_page is not None and files is not None:
        page = files.path(route.error_page, "page")
        page_file = str(page) if page is not None else None
    client, to_tasks = client_certs(route, files), upstream_tls(route, files)
    return Location(
        path=route.path,
        root=route_root(route),
        target=route.target.name if route.proxies else "",
        upstream=upstream.name if upstream else None,
        websocket=route.websocket,
        connect_timeout_ms=max(1, round(route.connect_timeout * 1000)),
        read_timeout_ms=max(1, round(route.read_timeout * 1000)),
        max_body_size=route.max_body_size,
        allow=route.allow or (),
        auth_realm=route.basic_auth.realm if route.basic_auth is not None else None,
        auth_file=auth_file,
        locked=route.basic_auth is not None and auth_file is None,
        rate_limit=rate_zone(route),
        strip_prefix=route.strip_prefix,
        request_headers=route.headers.request if route.headers else (),
        response_headers=route.headers.response if route.headers else (),
        compress=route.compress,
        error_page=page_file,
        maintenance=route.maintenance,
        grpc=route.protocol == "grpc",
        # (an upstream nginx resolves sets its sticky cookie itself: plan/upstreams.py)
        sticky=sticky_var(route.sticky.cookie) if route.sticky is not None and not (
            upstream is not None and upstream.resolve) else None,
        redirect_code=route.redirect.code if route.redirect else None,
        redirect_to=route.redirect.target if route.redirect else "",
        redirect_keep_path=route.redirect.keep_path if route.redirect else False,
        auth=auth,
        retry=retry_plan(route),
        cors=cors_plan(route.cors),
        client_certs=client, upstream_tls=to_tasks, ca_locked=ca_locked(client, to_tasks),
        match=conditions(route.match),
    )


def servers(routes: Sequence[Route], upstreams: dict[tuple[Target, int, str], Upstream],
             files: FilesPlan | None = None) -> list[Server]:
    """One server block per set of hosts that share exactly the same locations."""
    by_host: dict[str, list[Location]] = defaultdict(list)
    for route in routes:
        upstream = upstreams.get(upstream_key(route)) if route.proxies else None
        auth = auth_plan(route, upstreams) if route.proxies else None
        loc = dataclasses.replace(location(route, upstream, files, auth), traffic=traffic(
            route, lambda r: u.name if (u := upstreams.get(upstream_key(r))) else None))
        for host in route.hosts:
            by_host[host].append(loc)
    grouped: dict[tuple[Location, ...], list[str]] = defaultdict(list)
    for host, locs in by_host.items():
        # longest path first reads best; nginx picks the longest match whatever the order
        grouped[tuple(sorted(locs, key=lambda x: (-len(x.path), x.path)))].append(host)
    servers = [Server(tuple(sorted(hosts)), locs) for locs, hosts in grouped.items()]
    return sorted(servers, key=lambda s: s.names)


def with_tls(servers: list[Server], tls: TlsPlan | None) -> tuple[list[Server], list[Server]]:
    """Plain HTTP servers (the hosts whose route asks for it redirect) and HTTPS servers (the
    hosts with a certificate to serve), hosts grouped when they share locations and settings."""
    if tls is None:
        return servers, []
    by_host = {h.host: h for h in tls.hosts}
    plain: dict[tuple[tuple[Location, ...], bool, bool], list[str]] = defaultdict(list)
    secure: dict[tuple[tuple[Location, ...], Served, int], list[str]] = defaultdict(list)
    for server in servers:
        for name in server.names:
            h = by_host.get(name)
            plain[(server.locations, h is not None and h.redirect,
                   h is not None and h.source.acme)].append(name)
            if h is not None and h.served is not None:
                secure[(server.locations, h.served, h.hsts)].append(name)
    http = [Server(tuple(sorted(names)), locs, redirect=redirect, acme=acme)
            for (locs, redirect, acme), names in plain.items()]
    https = [Server(tuple(sorted(names)), locs, certificate=cert, hsts=hsts)
             for (locs, cert, hsts), names in secure.items()]
    return sorted(http, key=lambda s: s.names), sorted(https, key=lambda s: s.names)
