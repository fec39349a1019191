"""The names the configuration gives things, made from values: upstreams, the variable of a
sticky cookie, the `root` that names a route in the access log (observe/traffic.py reads it
back). One place, so that the plan, the metrics and the admin page agree."""

from __future__ import annotations

import hashlib
import re

from agent.core.routes import Route, Target

ROUTE_ROOT = "/gateway-route/"
UNROUTED_ROOT = "/gateway-unrouted"


def digest(text: str, length: int = 12) -> str:
    """A name's part made from `text`: its SHA-256, the first `length` hex digits."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def route_label(route: Route) -> str:
    """The `route` label: first host and path prefix, e.g. `managerhttp/`, `a.example.com/api`;
    a route with `match` adds its digest (`a.example.com/api[match:1f2e3d4c]`): routes that
    differ by match share the host and path."""
    return route.hosts[0] + route.path + (f"[match:{route.match.key}]" if route.match else "")


def route_root(route: Route) -> str:
    """The `root` the template gives the route's locations, to name the route in its records."""
    return ROUTE_ROOT + route_label(route)


def upstream_name(target: Target, port: int, balance: str) -> str:
    base = re.sub(r"[^a-z0-9_]", "_", target.name.lower())
    if base != target.name:  # keep `a-b` and `a_b` apart
        base += "_" + digest(target.name, 6)
    suffix = "" if balance == "round_robin" else f"_{balance}"
    return f"{target.kind}_{base}_{port}{suffix}"


def sticky_var(cookie: str) -> str:
    """The variable a sticky upstream hashes: the cookie, or for a client without it the
    request's id, which the gateway then sets as the cookie (named from a digest: nginx
    variable names ignore case, cookie names do not)."""
    return "gateway_sticky_" + digest(cookie)
