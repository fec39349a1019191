"""Forward auth (`auth`, core/forwardauth.py) in the plan: the upstream of each auth service, the
internal location each server asks it through, and what a route's locations say about it. No I/O.

A route's location asks `auth_request` of an internal location of its server; that location
passes the request's method, scheme, host and URI to the auth service as X-Forwarded-Method,
-Proto, -Host and -Uri (oauth2-proxy's protocol), with the client's headers but no body. The
headers the auth service answers with are kept by auth_request_set and set on the request to the
task, which replaces any copy the client sent."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.core.forwardauth import AUTH_PATH
from agent.core.routes import Route, Target
from agent.gateway.model import Endpoints, Snapshot
from agent.gateway.plan.naming import digest, upstream_name
from agent.gateway.plan.upstreams import Upstream, upstream_servers, zone_size


@dataclass(frozen=True, order=True)
class AuthPlan:
    """One auth service as a server asks it: the internal location, and where it goes."""

    location: str  # AUTH_PATH + a digest of where it goes
    upstream: str | None  # None: the auth service has no task (every request answers 500)
    path: str  # the path asked on the auth service
    host: str  # the auth service's name, for the comments
    headers: tuple[tuple[str, str], ...] = ()  # (header, the variable auth_request_set fills)
    signin: str | None = None  # a 401 redirects here, with the URL asked for as `rd`


def auth_key(route: Route) -> tuple[Target, int, str]:
    assert route.auth is not None
    return Target(route.auth.kind, route.auth.name), route.auth.target_port, "round_robin"


def auth_upstreams(routes: Sequence[Route], snapshot: Snapshot, resolve: bool,
                   own_resolver: bool, known: dict[tuple[Target, int, str], Upstream],
                   ) -> dict[tuple[Target, int, str], Upstream]:
    """The upstreams of the auth services `routes` ask that no route's upstream is already."""
    out: dict[tuple[Target, int, str], Upstream] = {}
    for route in routes:
        if route.auth is None or not route.proxies:
            continue
        key = auth_key(route)
        if key in known or key in out:
            continue
        target, port, _ = key
        endpoints = snapshot.get(target.lookup_name, Endpoints())
        if not endpoints.addresses:
            continue
        servers, by_name = upstream_servers(target.lookup_name, port, endpoints, resolve,
                                            own_resolver)
        out[key] = Upstream(upstream_name(*key), target.kind, target.name, port, "round_robin",
                            servers, resolve=by_name,
                            zone=zone_size(len(endpoints.addresses)) if by_name else "",
                            lookup=target.lookup_name if by_name else "")
    return out


def auth_plan(route: Route, upstreams: dict[tuple[Target, int, str], Upstream],
              ) -> AuthPlan | None:
    if route.auth is None or not route.proxies:
        return None
    key = auth_key(route)
    upstream = upstreams.get(key)
    return AuthPlan(
        location=AUTH_PATH + digest(f"{upstream_name(*key)} {route.auth.target_path}"),
        upstream=upstream.name if upstream is not None else None,
        path=route.auth.target_path,
        host=route.auth.name,
        headers=route.auth.identity,
        signin=route.auth.signin,
    )

