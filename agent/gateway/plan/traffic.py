"""The second services of routes (core/traffic.py): the upstreams a canary or a mirror needs, and
the values the template writes for them (split_clients, maps, the mirror's internal location).
No I/O.

A canary's split is nginx's split_clients on each request's id: the share is the same however
many tasks either side has (`weight=` on a resolved name would be per task, and drift). A mirror
is nginx's `mirror` subrequest to an internal location that passes a share of the copies on and
answers the rest itself (204), with short timeouts: nginx sends the client its answer without
waiting for the mirror, but the client's next request on the same connection waits until the
mirror's subrequest ends. The copy carries what the route's own request carries, set by the
gateway (forwarding headers, request id, the client certificate's subject, the route's request
headers, forward auth's identity: a subrequest shares its request's variables), never the
client's forged copies of them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.core.routes import Route
from agent.core.traffic import MIRROR_PATH
from agent.gateway.plan.naming import digest, route_label


@dataclass(frozen=True)
class CanaryPlan:
    var: str  # the prefix of this canary's variables
    weight: int  # percent of the requests split to the canary
    stable: str  # upstream names (a canary without tasks is left out: all to the stable)
    canary: str
    service: str
    cookie: str | None = None  # the cookie that keeps a client on its side
    header_var: str | None = None  # `http_x_canary`: the header that forces a side


@dataclass(frozen=True)
class MirrorPlan:
    var: str  # 1 for a request whose copy goes on, else 0
    share: int
    upstream: str
    service: str
    path: str  # the internal location of the copies
    timeout_ms: int
    request_headers: tuple[tuple[str, str | None], ...] = ()  # the route's, as its location's
    identity: tuple[tuple[str, str], ...] = ()  # (header, variable): forward auth's answer


@dataclass(frozen=True)
class Traffic:
    """A location's part of this: HTTP/2 to the tasks, its canary, its mirror."""

    h2c: bool = False
    canary: CanaryPlan | None = None
    mirror: MirrorPlan | None = None

    @property
    def sets_cookie(self) -> bool:
        return self.canary is not None and self.canary.cookie is not None


def _var(kind: str, route: Route) -> str:
    return f"gateway_{kind}_" + digest(route_label(route))


def side_route(route: Route, side: str) -> Route:
    """The route as its canary or mirror service would be routed (for its upstream)."""
    options = route.canary if side == "canary" else route.mirror
    assert options is not None
    assert route.port is not None
    return route.model_copy(update={
        "service": options.service, "host": None, "port": options.port or route.port,
        "sticky": None, "canary": None, "mirror": None,
        "balance": route.balance if side == "canary" else "round_robin"})


def side_routes(routes: Iterable[Route]) -> list[Route]:
    return [side_route(r, side) for r in routes if r.proxies
            for side in ("canary", "mirror") if getattr(r, side) is not None]


def traffic(route: Route, upstream_of: Callable[[Route], str | None]) -> Traffic:
    """A route's h2c, canary and mirror (those whose service has tasks: `upstream_of` names
    the upstream of a route, None without tasks)."""
    if not route.proxies:
        return Traffic()
    canary = mirror = None
    stable = upstream_of(route)
    if route.canary is not None and stable is not None and (
            side := upstream_of(side_route(route, "canary"))) is not None:
        c = route.canary
        canary = CanaryPlan(
            _var("canary", route), c.weight, stable, side, c.service, c.cookie,
            "http_" + c.header.lower().replace("-", "_") if c.header else None)
    if route.mirror is not None and (
            side := upstream_of(side_route(route, "mirror"))) is not None:
        var = _var("mirror", route)
        mirror = MirrorPlan(
            var, route.mirror.share, side, route.mirror.service,
            MIRROR_PATH + var.removeprefix("gateway_mirror_"),
            max(1, round(route.mirror.timeout * 1000)),
            route.headers.request if route.headers else (),
            route.auth.identity if route.auth else ())
    return Traffic(route.protocol == "h2c", canary, mirror)


def traffic_context(parts: Iterable[Traffic]) -> dict[str, object]:
    """The http context's part: each canary's and mirror's split, once."""
    parts = list(parts)
    return {
        "canaries": sorted({t.canary for t in parts if t.canary is not None},
                           key=lambda c: c.var),
        "mirrors": sorted({t.mirror for t in parts if t.mirror is not None},
                          key=lambda m: m.var),
    }


NO_TRAFFIC = Traffic()
