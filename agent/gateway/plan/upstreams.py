"""Upstreams: one per (target, port, balance or sticky cookie) that has tasks, and the `server`
entries nginx gets for it (the name nginx resolves itself, or the addresses found). The http
context's (plan/http.py) and the stream context's (plan/stream.py) follow the same rule."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from agent.core.fields import is_address
from agent.core.retry import DEFAULT_FAIL_TIMEOUT
from agent.core.routes import Route, Target
from agent.gateway.model import Endpoints, Snapshot
from agent.gateway.plan.edgetls import tls_pool
from agent.gateway.plan.filters import RenderError
from agent.gateway.plan.naming import sticky_var, upstream_name
from agent.gateway.plan.traffic import side_routes

# idle connections to the tasks each worker keeps per upstream: beyond it, a connection is closed
# after its request and the next opens a new one. 64 closed most of them under 320 HTTP/2 streams
# (bench part 9: HTTP/2 22,498 -> 44,858 req/s with 512, side by side); nginx keeps only as many
# as were busy at once, each for keepalive_timeout (60 s)
KEEPALIVE = 512
# nginx's resolver keeps answers this long (whole seconds); a name is looked up again about every
# valid + 1 s. Docker answers with a TTL of 600 s, which must not be used.
RESOLVER_VALID = 1

@dataclass(frozen=True)
class Upstream:
    name: str
    kind: str
    target: str
    port: int
    balance: str
    servers: tuple[str, ...]
    # resolve mode: nginx looks the name up itself (`server NAME:PORT resolve`); `servers` is
    # then that one entry, and the addresses the agent found decide only whether it exists
    resolve: bool = False
    zone: str = ""  # resolve: the size of its shared memory zone
    sticky: str | None = None  # the variable the task is chosen by (gateway/render.py.sticky_var)
    lookup: str = ""  # resolve: the name nginx looks up
    # resolve and sticky: nginx's own `sticky cookie` names the task (by its address) in it
    sticky_cookie: str | None = None
    max_conns: int = 0  # requests a task takes at once (0: no limit)
    fail_timeout: int = 5  # seconds a task that failed is left out (max_fails=1)


def server_address(lookup: str, address: str, port: int) -> str:
    """An upstream server written from the address as parsed, never from the text as given."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise RenderError(f"endpoints of {lookup}: {str(address)[:80]!r} is not an IP address",
                          ) from None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            raise RenderError(f"endpoints of {lookup}: {str(address)[:80]!r} has a scope")
        return f"[{ip.compressed}]:{port}"
    return f"{ip.compressed}:{port}"


def zone_size(tasks: int) -> str:
    """Shared memory for an upstream that nginx resolves: room for twice `tasks` peers (about
    1.4 KiB each), in powers of two from 256 KiB, so the size changes (a reload) only when a
    service grows past a step."""
    size = 256
    while size * 1024 < tasks * 2 * 1400:
        size *= 2
    return f"{size}k"


def upstream_servers(lookup: str, port: int, endpoints: Endpoints, resolve: bool,
                     own_resolver: bool = False) -> tuple[tuple[str, ...], bool]:
    """The `server` entries of an upstream of `lookup`'s tasks, and whether nginx resolves the
    name itself (then the one entry is the name). With `own_resolver` nginx asks the agent
    (agent.gateway.drivers.dnsserver), which answers the accepted and last known addresses only.
    Otherwise nginx asks the nameserver itself, and an answer with addresses outside
    --task-networks is not left to it to follow: the block gets the accepted addresses only,
    or none, until the answer is clean; nor is a stale one (nginx started while DNS is down
    has no addresses of its own to keep)."""
    screened = own_resolver or (not endpoints.stale and not endpoints.refused)
    if resolve and screened and not is_address(lookup):
        return (f"{lookup}:{port}",), True
    return tuple(server_address(lookup, a, port) for a in endpoints.addresses), False


def upstream_key(route: Route) -> tuple[Target, int, str]:
    """What tells a route's upstream apart: target, port, how a task is chosen, and the TLS
    to its tasks (plan/edgetls.py)."""
    assert route.port is not None
    how = f"sticky_{route.sticky.cookie.lower()}_{sticky_var(route.sticky.cookie)[-6:]}" \
        if route.sticky is not None else route.balance
    if route.protocol == "h2c":  # its kept-alive connections speak HTTP/2: not shared
        how = "h2c" if how == "round_robin" else f"{how}_h2c"
    return (route.target, route.port, tls_pool(route, how) + peer_limits(route))


def fail_seconds(route: Route) -> int:
    """fail_timeout in the whole seconds nginx takes (at least 1)."""
    return max(1, round(route.fail_timeout))


def peer_limits(route: Route) -> str:
    """What a route's max_conns and fail_timeout add to its upstream's key and name (nothing
    for the defaults, so that existing names stay)."""
    if route.max_conns == 0 and fail_seconds(route) == DEFAULT_FAIL_TIMEOUT:
        return ""
    return f"_c{route.max_conns}_f{fail_seconds(route)}"


def http_upstreams(routes: Sequence[Route], snapshot: Snapshot, resolve: bool,
               own_resolver: bool = False) -> dict[tuple[Target, int, str], Upstream]:
    """One upstream per (target, port, balance or sticky cookie) that has tasks.

    With `resolve`, the upstream names the target and nginx follows its addresses (re-resolved
    every `valid=` + 1 s): the text changes only when a target goes to or from no tasks. A
    target whose lookups fail (stale) is written with its last known addresses instead: nginx
    started while DNS is down has no addresses of its own to keep. So is one whose answer had
    addresses outside the task networks (drivers/discovery.py screen()): nginx would take them
    all; unless nginx asks the agent's own resolver (`own_resolver`), which answers those
    itself. A sticky route's upstream that nginx resolves chooses its task with nginx's own
    `sticky cookie`, which names a task by its address: its tasks come and go without a reload.
    """
    out = {}
    for route in [*routes, *side_routes(routes)]:
        if not route.proxies:
            continue
        key = upstream_key(route)
        if key in out:
            continue
        endpoints = snapshot.get(route.target.lookup_name, Endpoints())
        if not endpoints.addresses:
            continue
        servers, by_name = upstream_servers(route.target.lookup_name, key[1], endpoints,
                                            resolve, own_resolver)
        out[key] = Upstream(
            upstream_name(*key), route.target.kind, route.target.name, key[1], route.balance,
            servers, resolve=by_name,
            zone=zone_size(len(endpoints.addresses)) if by_name else "",
            sticky=sticky_var(route.sticky.cookie) if route.sticky is not None else None,
            lookup=route.target.lookup_name if by_name else "",
            sticky_cookie=route.sticky.cookie if route.sticky is not None and by_name else None,
            max_conns=route.max_conns, fail_timeout=fail_seconds(route))
    return dict(sorted(out.items(), key=lambda kv: kv[1].name))
