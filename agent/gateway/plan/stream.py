"""Rendering the stream context: tcp routes (core/tcp.py) and an endpoints snapshot in, the text of
nginx's `stream {}` block out. No I/O; same input, same output.

One `server` per port. A plain route's server passes every connection to its upstream (after
`allow`). An SNI port's server reads the name from the client's TLS hello (`ssl_preread`)
without terminating TLS, and a `map` of names (exact, or `*.` wildcards: the most specific
wins) picks the upstream; a route with `allow` is a `geo` of client networks whose value is the
upstream or the refusal. A connection no route takes (a name no route gives, no TLS hello, a
client not allowed, a service without tasks) goes to an upstream with no server nginx may use:
nginx closes it at once and logs "no live upstreams ... upstream: gateway_tcp_refused".

Upstreams follow the same rule as the HTTP side's (plan/upstreams.py upstream_servers): nginx
resolves `tasks.NAME` itself, or the addresses found are written when the answer is stale or
partly refused, or with --upstream-mode static. Every value passes the same `nginx` filter.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace

import jinja2

from agent import __version__
from agent.core.tcp import PREREAD_TIMEOUT, TcpRoute
from agent.gateway.model import Endpoints, Snapshot
from agent.gateway.plan.filters import TEMPLATES, RenderError, environment
from agent.gateway.plan.naming import upstream_name
from agent.gateway.plan.upstreams import RESOLVER_VALID, Upstream, upstream_servers, zone_size

REFUSED = "gateway_tcp_refused"


@dataclass(frozen=True)
class Geo:
    """A route's `allow` on an SNI port: the client's network picks the upstream or REFUSED."""

    var: str
    allow: tuple[str, ...]
    upstream: str


@dataclass(frozen=True)
class Sni:
    name: str  # as the route gives it: exact, or a `*.` wildcard
    value: str  # an upstream, REFUSED, or (variable) a Geo's variable
    variable: bool = False


@dataclass(frozen=True)
class StreamServer:
    listen: str
    port: int
    about: tuple[str, ...]  # one line per route, for the reader of the file
    connect_timeout_ms: int
    idle_timeout_ms: int
    proxy_protocol: bool
    upstream: str = REFUSED  # plain: where connections go
    allow: tuple[str, ...] = ()  # plain: the clients let in (empty: every client)
    map_var: str | None = None  # SNI: the variable of the port's map of names
    sni: tuple[Sni, ...] = ()
    geos: tuple[Geo, ...] = ()


def _key(route: TcpRoute) -> tuple[str, str, int, str]:
    return (route.target.kind, route.target.name, route.port, route.balance)


def _upstreams(routes: Sequence[TcpRoute], snapshot: Snapshot, resolve: bool,
               own_resolver: bool = False) -> dict[tuple[str, str, int, str], Upstream]:
    """One upstream per (target, port, balance) that has tasks."""
    out = {}
    for route in routes:
        key = _key(route)
        endpoints = snapshot.get(route.target.lookup_name, Endpoints())
        if key in out or not endpoints.addresses:
            continue
        servers, by_name = upstream_servers(route.target.lookup_name, route.port, endpoints,
                                            resolve, own_resolver)
        out[key] = Upstream(
            "tcp_" + upstream_name(route.target, route.port, route.balance), route.target.kind,
            route.target.name, route.port, route.balance, servers, resolve=by_name,
            zone=zone_size(len(endpoints.addresses)) if by_name else "",
            lookup=route.target.lookup_name if by_name else "")
    return dict(sorted(out.items(), key=lambda kv: kv[1].name))


def _about(route: TcpRoute) -> str:
    sni = f", sni {' '.join(route.sni)}" if route.sni else ""
    return f"port {route.listen}{sni}: {route.target.kind} {route.target.name} port {route.port}"


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _servers(routes: Sequence[TcpRoute], upstreams: dict[tuple[str, str, int, str],
             Upstream], address: str) -> list[StreamServer]:
    by_port: dict[int, list[TcpRoute]] = defaultdict(list)
    for route in routes:
        by_port[route.listen].append(route)
    host = f"[{address}]" if ":" in address else address
    servers = []
    for port, on_port in sorted(by_port.items()):
        first = on_port[0]  # (routes of one port agree on these: core/tcp.py conflicts())
        common = StreamServer(f"{host}:{port}", port, tuple(_about(r) for r in on_port),
                              _ms(first.connect_timeout), _ms(first.idle_timeout),
                              first.proxy_protocol)
        if first.sni is None:
            found = upstreams.get(_key(first))
            servers.append(replace(common, upstream=found.name if found else REFUSED,
                                   allow=first.allow or ()))
            continue
        names, geos = [], []
        for k, route in enumerate(on_port):
            found = upstreams.get(_key(route))
            value, variable = (found.name if found else REFUSED), False
            if route.allow and found:
                geo = Geo(f"gateway_tcp_{port}_{k}", route.allow, found.name)
                geos.append(geo)
                value, variable = geo.var, True
            names += [Sni(name, value, variable) for name in route.sni or ()]
        servers.append(replace(common, map_var=f"gateway_tcp_{port}",
                               sni=tuple(sorted(names, key=lambda n: n.name)),
                               geos=tuple(geos)))
    return servers


class StreamRenderer:
    """The stream context of a gateway: tcp routes listen on `address` (--listen's)."""

    def __init__(self, *, address: str, resolver: str | None = None,
                 resolve: bool = False, own_resolver: bool = False,
                 access_log: str | None = None) -> None:
        self.address = address
        self.access_log = access_log  # the metrics file, as the http context's (tcptraffic.py)
        # nginx's own lookups of tasks (resolve); own_resolver: the agent's (gateway/dnsserver.py)
        self.resolver = resolver
        self.resolve = resolve
        self.own_resolver = own_resolver
        self._template = environment(TEMPLATES).get_template("stream.conf.j2")

    def render(self, routes: Sequence[TcpRoute], snapshot: Snapshot,
               ) -> tuple[str, frozenset[str]]:
        """The stream context's text ('' when there is no tcp route), and the names nginx
        resolves itself."""
        if not routes:
            return "", frozenset()
        upstreams = _upstreams(routes, snapshot, self.resolve, self.own_resolver)
        servers = _servers(routes, upstreams, self.address)
        resolving = any(u.resolve for u in upstreams.values())
        if resolving and self.resolver is None:
            raise RenderError("tcp routes: nginx resolves their tasks, and no resolver is set")
        context = {
            "version": __version__,
            "routes_count": len(routes),
            "resolver": self.resolver if resolving else None,
            "resolver_valid": RESOLVER_VALID,
            "own_resolver": self.own_resolver,
            "preread_timeout": PREREAD_TIMEOUT,
            "refused": REFUSED,
            # an SNI port's map refuses the names no route gives
            "uses_refused": any(s.map_var is not None or s.upstream == REFUSED
                                for s in servers),
            "upstreams": list(upstreams.values()),
            "servers": servers,
            "any_sni": any(s.map_var is not None for s in servers),
            "access_log": self.access_log,
        }
        try:
            text = self._template.render(context)
        except jinja2.TemplateError as exc:
            raise RenderError(f"stream template: {exc}") from exc
        return text, frozenset(u.lookup for u in upstreams.values() if u.resolve)
