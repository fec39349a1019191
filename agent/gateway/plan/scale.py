"""What keeps the configuration's cost linear and small when the routes number thousands
(docs/operations.md, "A large installation"). Measured with nginx 1.30 at 10,000 hosts:

- Proxy settings said once, at the http level: nginx builds a table of request headers for
  every location that sets one (`proxy_set_header`), and inherits the http level's table
  where a location sets none. A location says its own only where it differs from a plain
  route's (websocket, strip_prefix, request headers, forward auth's identity headers, timeouts,
  body size, retries), and one that sets a request header of its own says the whole set again
  (the client-certificate, request id and traceparent headers among them, so that a forged
  one never reaches a task). Likewise `proxy_hide_header X-Request-Id` (the gateway's own id
  answers the client): nginx builds a hash of hidden headers for each location that hides one,
  so a location says it again only where it hides one of its own.
- One shared memory zone for the upstreams that nginx resolves: nginx looks each new zone up
  among all others (at parse time and again at a reload), which is quadratic in the zones; and
  a zone of its own per upstream costs at least a page table's worth of memory each. nginx
  keeps every group of a shared zone apart, and at a reload carries each group's resolved
  addresses over by its name (ngx_http_upstream_zone_module.c, preresolve).
- The hash of server names sized from the names: room for all of them at the first size nginx
  tries, without a search through sizes; likewise the maps' hash, whose largest maps have a key
  per route (the JSON access log's route and service). With many long names (a thousand of a
  hundred characters) nginx may still warn that it "could not build optimal server_names_hash"
  and build a larger one: it serves all the same.
- One server block for the hosts routed alike: hosts whose one route is `/`, to the same
  service with the same settings (the platform's customer domains on one app), share a server
  and its one location; only the route's root, which names it in the logs, differs, and the
  location takes it from a map of $host. nginx's memory, its start and reload and the agent's
  render grow with the servers (a server and a location are about 30 KB of nginx's memory), a
  map's key with a few dozen bytes. At 10,000 hosts on 1,000 services: 1,000 servers.

Pure: values in, values out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from agent.core.route import Route
from agent.gateway.plan.http import Server
from agent.gateway.plan.naming import route_root
from agent.gateway.plan.retry import DEFAULT as DEFAULT_RETRY
from agent.gateway.plan.retry import RetryPlan
from agent.gateway.plan.upstreams import Upstream

K = TypeVar("K")
SHARED_ZONE = "gateway_upstreams"
ZONE_MIN_KIB = 1024  # the shared zone starts at 1 MiB and doubles
# what one resolved peer and one group take in the zone (nginx 1.30, x86-64, measured
# generously: a peer's structure, its address and name; a group's peers structure and name)
PEER_BYTES = 1400
GROUP_BYTES = 2048
# server_names_hash_bucket_size: any host name (at most 253 characters) fits in one bucket;
# nginx allocates what the names take, not buckets of this size (map_hash_bucket_size too,
# larger for a longer key: a route's root is its first host and its path)
NAMES_BUCKET = 512
NAMES_MIN = 512  # nginx's default server_names_hash_max_size
MAP_MIN = 2048  # nginx's default map_hash_max_size
# the variable a shared server's location takes its root from (gateway.conf.j2)
HOST_ROOT_VAR = "gateway_host_root"
# a template (--template) that says this knows shared servers; one that does not gets a server
# per host as before (docs/configuration.md, "Your own template")
HOST_ROOTS_MARK = "host_roots"
# where the template writes the generation, until its digest is known (plan/desired.py): '[' is
# in no host name nor path
GENERATION_PLACEHOLDER = "[generation]"


@dataclass(frozen=True)
class ProxyDefaults:
    """What a plain route's location would say, written once at the http level."""

    connect_timeout_ms: int
    read_timeout_ms: int
    max_body_size: int
    retry: RetryPlan  # proxy_next_upstream, _tries: the gateway's policy (plan/retry.py)


def proxy_defaults() -> ProxyDefaults:
    """From the route model's own defaults, so that a route that keeps them writes nothing."""
    fields = Route.model_fields
    return ProxyDefaults(
        connect_timeout_ms=ms(float(fields["connect_timeout"].default)),
        read_timeout_ms=ms(float(fields["read_timeout"].default)),
        max_body_size=int(fields["max_body_size"].default),
        retry=DEFAULT_RETRY)


def ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def shared_zone_size(upstreams: Iterable[Upstream], tasks: dict[str, int]) -> str:
    """The size of the one zone of the resolved upstreams: room for twice the tasks known now
    (nginx adds the tasks that start without a reload), in powers of two from 1 MiB, so that
    the size changes (a reload) only when the tasks of all services together pass a step.
    `tasks`: the tasks of each upstream by its lookup name."""
    need = 0
    for u in upstreams:
        need += GROUP_BYTES + 2 * PEER_BYTES * max(1, tasks.get(u.lookup, 1))
    size = ZONE_MIN_KIB
    while size * 1024 < need:
        size *= 2
    return f"{size}k"


def share_zone(upstreams: dict[K, Upstream], tasks: dict[str, int]) -> dict[K, Upstream]:
    """The upstreams, those nginx resolves given the one shared zone's size."""
    resolved = [u for u in upstreams.values() if u.resolve]
    if not resolved:
        return upstreams
    size = shared_zone_size(resolved, tasks)
    return {k: replace(u, zone=size) if u.resolve else u for k, u in upstreams.items()}


def names_hash_max_size(names: int, least: int = NAMES_MIN) -> int:
    """A hash's max_size for `names` keys: the power of two at or above their number (nginx's
    default, `least`, at least)."""
    size = least
    while size < names:
        size *= 2
    return size


def map_hash_bucket_size(longest: int) -> int:
    """map_hash_bucket_size for keys of up to `longest` characters: NAMES_BUCKET, or the power
    of two that holds one such key (nginx: a pointer, the key and its length aligned to a
    pointer, and the bucket's end), if more."""
    need = 8 + (longest + 2 + 7) // 8 * 8 + 8
    size = NAMES_BUCKET
    while size < need:
        size *= 2
    return size


def shareable(server: Server) -> bool:
    """A server that may share its block: one location, `/`, chosen by no `match`; names
    that a map of $host matches as server_name does (exact names, with a dot: a name without
    one could be one of map's own words, `default` or `include`)."""
    return len(server.locations) == 1 and server.locations[0].path == "/" and \
        not server.locations[0].match and not server.host_roots and \
        all("." in name and not name.startswith("*") for name in server.names)


def share_servers(servers: Sequence[Server]) -> list[Server]:
    """The servers, those of hosts routed alike (`shareable`, the same location but for its
    root, the same TLS and redirect) made one, whose location takes each host's root from the
    map of $host (`host_roots`). Servers that share with no other stay as they are."""
    kept: list[Server] = []
    alike: dict[tuple[object, ...], list[Server]] = defaultdict(list)
    for server in servers:
        if not shareable(server):
            kept.append(server)
            continue
        loc = server.locations[0]
        alike[(replace(loc, root=""), server.redirect, server.certificate, server.hsts,
               server.acme)].append(server)
    for group in alike.values():
        if len(group) == 1:
            kept.extend(group)
            continue
        first = group[0]
        kept.append(replace(
            first, names=tuple(sorted(name for s in group for name in s.names)),
            locations=(replace(first.locations[0], root=""),),
            host_roots=tuple(sorted((name, s.locations[0].root)
                                    for s in group for name in s.names))))
    return sorted(kept, key=lambda s: s.names)


def host_roots(servers: Sequence[Server]) -> list[tuple[str, str]]:
    """The map of $host to the root of its route, for the shared servers' locations: the root
    as nginx's $document_root gives it (a `root` that is a variable keeps a trailing '/', one
    written out does not). A host served over both HTTP and HTTPS has the same route on both."""
    roots = {host: root.removesuffix("/") for s in servers for host, root in s.host_roots}
    return sorted(roots.items())


def scale_context(servers: Sequence[Server], routes: Sequence[Route]) -> dict[str, Any]:
    """The template's values of this module (gateway.conf.j2). The largest maps have a key per
    route, its root (the JSON access log's route and service), or per shared host (its root);
    cors's origins are shorter."""
    names = len({name for s in servers for name in s.names})
    roots = host_roots(servers)
    longest = max((len(route_root(r)) for r in routes), default=0)
    return {"proxy_defaults": proxy_defaults(), "shared_zone": SHARED_ZONE,
            "names_hash_max_size": names_hash_max_size(names),
            "names_hash_bucket_size": NAMES_BUCKET,
            "map_hash_max_size": names_hash_max_size(max(len(routes), len(roots)) + 1,
                                                     MAP_MIN),
            "map_hash_bucket_size": map_hash_bucket_size(longest),
            "host_roots": roots, "host_root_var": HOST_ROOT_VAR}
