"""Rendering: routes and an endpoints snapshot in, nginx configuration text out. No I/O.

Same input, byte-identical output: everything is sorted, nothing depends on time or dict order.
The template sees only values that passed the routes model, and every interpolation goes through
the `nginx` filter, which raises on anything but a plain token: a route, a label or a DNS answer
cannot add a directive, even through a user's own template.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2

from agent import __version__
from agent.core.fields import ERROR_PAGES_PATH, is_address
from agent.core.routes import Route, RouteTable, Target
from agent.gateway.clientchecks import RateZone, allow_var, rate_zone
from agent.gateway.discovery import Endpoints, Snapshot
from agent.gateway.paths import PathMap, path_map, paths_context, strict
from agent.gateway.routefiles import FilesPlan
from agent.gateway.tls import Served, TlsPlan
from agent.gateway.traffic import UNROUTED_ROOT, route_root

if TYPE_CHECKING:
    from agent.gateway.stream import StreamRenderer

SAFE_TOKEN = re.compile(r"[A-Za-z0-9._:/\[\]*~+,@-]+")
# What may stand between double quotes: printable ASCII without '"', '\\' and '$' (which nginx
# reads inside quotes) nor '{', '}' (which would open or close a block if a quote slipped). A
# ';' is text there: nginx's parser (ngx_conf_read_token) ends a quoted word at its closing
# quote only, and every quote is refused.
SAFE_QUOTED = re.compile(r"[ !#%&'()*+,\-./0-9:;<=>?@A-Z\[\]^_`a-z|~]*")
KEEPALIVE = 64
# A kept-alive client connection is not closed within this many seconds of its last request, not
# even by an old worker after a reload: a request the client sends then is answered (with
# `Connection: close`) instead of meeting a closed socket (nginx 1.27.4, keepalive_min_timeout).
KEEPALIVE_MIN_TIMEOUT = 5
# nginx's resolver keeps answers this long (whole seconds); a name is looked up again about every
# valid + 1 s. Docker answers with a TTL of 600 s, which must not be used.
RESOLVER_VALID = 1
# compress: what gzip is worth it for (text/html is always among them for nginx)
GZIP_TYPES = ("text/plain", "text/css", "text/xml", "text/javascript", "application/javascript",
              "application/json", "application/xml", "application/rss+xml", "image/svg+xml")
_TEMPLATES = Path(__file__).parent / "templates"


class RenderError(ValueError):
    """A value that is not a plain nginx token reached the template, or the template failed."""


def nginx_token(value: object) -> str:
    text = str(value)
    if not SAFE_TOKEN.fullmatch(text):
        raise RenderError(f"refusing to write {text[:80]!r} into nginx configuration")
    return text


def nginx_quoted(value: object) -> str:
    """A double-quoted nginx string, for text the routes model allows spaces in (a realm)."""
    text = str(value)
    if not SAFE_QUOTED.fullmatch(text):
        raise RenderError(f"refusing to write {text[:80]!r} into nginx configuration")
    return f'"{text}"'


def _environment(template_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # nginx text, not HTML; values pass the nginx filter
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["nginx"] = nginx_token
    env.filters["nginx_quoted"] = nginx_quoted
    return env


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


@dataclass(frozen=True)
class Location:
    path: str
    root: str  # names the route in the access log (agent.gateway.traffic.route_root)
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

    @property
    def adds_headers(self) -> bool:
        """An add_header here hides the server's (HSTS), which must then be said again."""
        return any(value is not None for _, value in self.response_headers) or \
            self.sticky is not None

    @property
    def checks(self) -> tuple[object, ...]:  # what a client must pass (gateway/paths.py)
        return (self.allow, self.auth_realm, self.auth_file, self.locked, self.rate_limit)

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

    @property
    def has_root(self) -> bool:
        return any(loc.path == "/" for loc in self.locations)

    @property
    def strict_paths(self) -> bool:  # routes that check differently (gateway/paths.py)
        return strict(self.locations)

    @property
    def path_map(self) -> PathMap | None:
        return path_map(self.locations)

    @property
    def pages_dir(self) -> str | None:
        """Where this server's error pages are (one directory: agent.gateway.routefiles)."""
        pages = sorted({str(Path(loc.error_page).parent) for loc in self.locations
                        if loc.error_page})
        return pages[0] + "/" if pages else None


@dataclass(frozen=True)
class Rendered:
    text: str
    generation: str  # a digest of the configuration, served by nginx to prove it is live
    # the names nginx looks up itself (upstreams `resolve`, both contexts)
    resolving: frozenset[str] = frozenset()
    stream: str = ""  # the stream context (tcp routes: gateway/stream.py); '' when there is none


def upstream_name(target: Target, port: int, balance: str) -> str:
    base = re.sub(r"[^a-z0-9_]", "_", target.name.lower())
    if base != target.name:  # keep `a-b` and `a_b` apart
        base += "_" + hashlib.sha256(target.name.encode()).hexdigest()[:6]
    suffix = "" if balance == "round_robin" else f"_{balance}"
    return f"{target.kind}_{base}_{port}{suffix}"


def _server_address(lookup: str, address: str, port: int) -> str:
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


def sticky_var(cookie: str) -> str:
    """The variable a sticky upstream hashes: the cookie, or for a client without it the
    request's id, which the gateway then sets as the cookie (named from a digest: nginx
    variable names ignore case, cookie names do not)."""
    return "gateway_sticky_" + hashlib.sha256(cookie.encode()).hexdigest()[:12]


def upstream_servers(lookup: str, port: int, endpoints: Endpoints, resolve: bool,
                     own_resolver: bool = False) -> tuple[tuple[str, ...], bool]:
    """The `server` entries of an upstream of `lookup`'s tasks, and whether nginx resolves the
    name itself (then the one entry is the name). With `own_resolver` nginx asks the agent
    (agent.gateway.dnsserver), which answers the accepted and last known addresses only.
    Otherwise nginx asks the nameserver itself, and an answer with addresses outside
    --task-networks is not left to it to follow: the block gets the accepted addresses only,
    or none, until the answer is clean; nor is a stale one (nginx started while DNS is down
    has no addresses of its own to keep)."""
    screened = own_resolver or (not endpoints.stale and not endpoints.refused)
    if resolve and screened and not is_address(lookup):
        return (f"{lookup}:{port}",), True
    return tuple(_server_address(lookup, a, port) for a in endpoints.addresses), False


def upstream_key(route: Route) -> tuple[Target, int, str]:
    """What tells a route's upstream apart: target, port, and how a task is chosen."""
    assert route.port is not None
    return (route.target, route.port,
            f"sticky_{route.sticky.cookie.lower()}_{sticky_var(route.sticky.cookie)[-6:]}"
            if route.sticky is not None else route.balance)


def _upstreams(routes: Sequence[Route], snapshot: Snapshot, resolve: bool,
               own_resolver: bool = False) -> dict[tuple[Target, int, str], Upstream]:
    """One upstream per (target, port, balance or sticky cookie) that has tasks.

    With `resolve`, the upstream names the target and nginx follows its addresses (re-resolved
    every `valid=` + 1 s): the text changes only when a target goes to or from no tasks. A
    target whose lookups fail (stale) is written with its last known addresses instead: nginx
    started while DNS is down has no addresses of its own to keep. So is one whose answer had
    addresses outside the task networks (agent.gateway.discovery.screen): nginx would take them
    all; unless nginx asks the agent's own resolver (`own_resolver`), which answers those
    itself. And a sticky route's (see below), whose changes of tasks are reloads.
    """
    out = {}
    for route in routes:
        if not route.proxies:
            continue
        key = upstream_key(route)
        if key in out:
            continue
        endpoints = snapshot.get(route.target.lookup_name, Endpoints())
        if not endpoints.addresses:
            continue
        # A sticky route's upstream lists its tasks: nginx's consistent hash tells servers
        # apart by the name written, the same for every task resolved from one name, and would
        # stick to none.
        servers, by_name = upstream_servers(route.target.lookup_name, key[1], endpoints,
                                            resolve and route.sticky is None, own_resolver)
        out[key] = Upstream(
            upstream_name(*key), route.target.kind, route.target.name, key[1], route.balance,
            servers, resolve=by_name,
            zone=zone_size(len(endpoints.addresses)) if by_name else "",
            sticky=sticky_var(route.sticky.cookie) if route.sticky is not None else None,
            lookup=route.target.lookup_name if by_name else "")
    return dict(sorted(out.items(), key=lambda kv: kv[1].name))


def _location(route: Route, upstream: Upstream | None, files: FilesPlan | None) -> Location:
    auth_file = None
    if route.basic_auth is not None and files is not None:
        path = files.path(route.basic_auth.file)
        auth_file = str(path) if path is not None else None
    page_file = None
    if route.error_page is not None and files is not None:
        page = files.path(route.error_page, "page")
        page_file = str(page) if page is not None else None
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
        sticky=sticky_var(route.sticky.cookie) if route.sticky is not None else None,
        redirect_code=route.redirect.code if route.redirect else None,
        redirect_to=route.redirect.target if route.redirect else "",
        redirect_keep_path=route.redirect.keep_path if route.redirect else False,
    )


def _servers(routes: Sequence[Route], upstreams: dict[tuple[Target, int, str], Upstream],
             files: FilesPlan | None = None) -> list[Server]:
    """One server block per set of hosts that share exactly the same locations."""
    by_host: dict[str, list[Location]] = defaultdict(list)
    for route in routes:
        upstream = upstreams.get(upstream_key(route)) if route.proxies else None
        loc = _location(route, upstream, files)
        for host in route.hosts:
            by_host[host].append(loc)
    grouped: dict[tuple[Location, ...], list[str]] = defaultdict(list)
    for host, locs in by_host.items():
        # longest path first reads best; nginx picks the longest match whatever the order
        grouped[tuple(sorted(locs, key=lambda x: (-len(x.path), x.path)))].append(host)
    servers = [Server(tuple(sorted(hosts)), locs) for locs, hosts in grouped.items()]
    return sorted(servers, key=lambda s: s.names)


def _with_tls(servers: list[Server], tls: TlsPlan | None) -> tuple[list[Server], list[Server]]:
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


class Renderer:
    def __init__(self, *, listen: str, status_listen: str, trusted_proxies: Sequence[str] = (),
                 template: Path | None = None, access_log: str | None = None,
                 https_listen: str | None = None, https_redirect_port: int = 443,
                 resolver: str | None = None, resolve: bool = False,
                 stream: StreamRenderer | None = None, own_resolver: bool = False,
                 backlog: int | None = None) -> None:
        self.backlog = backlog  # of the HTTP and HTTPS listeners (gateway/capacity.py)
        self.stream = stream  # tcp routes; without it a table with tcp routes is refused
        self.resolve = resolve  # upstreams name their targets; nginx resolves them (resolver)
        self.https_listen = https_listen  # None: no HTTPS listener, whatever the routes say
        self.https_redirect_port = https_redirect_port
        # nginx's own lookups: upstream targets (resolve) and OCSP responders (stapling);
        # own_resolver: `resolver` is the agent's (agent.gateway.dnsserver)
        self.resolver = resolver
        self.own_resolver = own_resolver
        self.listen = listen
        self.status_listen = status_listen
        self.trusted_proxies = tuple(trusted_proxies)
        self.access_log = access_log  # the access-log file the agent reads, or None
        directory, name = (template.parent, template.name) if template else (
            _TEMPLATES, "gateway.conf.j2")
        self._template = _environment(directory).get_template(name)

    def render(self, table: RouteTable, snapshot: Snapshot, tls: TlsPlan | None = None,
               acme: tuple[Target, int] | None = None,
               files: FilesPlan | None = None) -> Rendered:
        """The configuration for these routes and endpoints (and certificates: gateway/tls.py;
        the files routes name: gateway/routefiles.py; without them a route with basic_auth
        answers 503).

        `acme` is the controller (its name and port): the hosts of `tls: acme` routes pass
        /.well-known/acme-challenge/ to it, over plain HTTP, before any redirect."""
        routes = table.routes
        upstreams = _upstreams(routes, snapshot, self.resolve, self.own_resolver)
        if self.https_listen is None:
            tls = None
        http_servers, https_servers = _with_tls(_servers(routes, upstreams, files), tls)
        acme_upstream = None
        if acme is not None and any(s.acme for s in http_servers):
            addresses = snapshot.get(acme[0].lookup_name, Endpoints()).addresses
            with contextlib.suppress(ValueError):  # the controller's URL names an address
                addresses = (ipaddress.ip_address(acme[0].name).compressed,)
            if addresses:
                acme_upstream = Upstream(
                    "gateway_acme_controller", acme[0].kind, acme[0].name, acme[1],
                    "round_robin", tuple(_server_address(acme[0].lookup_name, a, acme[1])
                                         for a in addresses))
        https = None if tls is None else {
            "listen": self.https_listen,
            "redirect_port": self.https_redirect_port,
        }
        # one resolver for the http context: nginx refuses a second one
        needs_resolver = any(u.resolve for u in upstreams.values()) or (
            tls is not None and tls.stapling)
        context = {
            "version": __version__,
            "routes_count": len(routes),
            "listen": self.listen,
            "status_listen": self.status_listen,
            "backlog": self.backlog,
            "trusted_proxies": self.trusted_proxies,
            "access_log": self.access_log,
            "unrouted_root": UNROUTED_ROOT,
            "keepalive": KEEPALIVE,
            "keepalive_min_timeout": KEEPALIVE_MIN_TIMEOUT,
            "resolver": self.resolver if needs_resolver else None,
            "resolver_valid": RESOLVER_VALID,
            "own_resolver": self.own_resolver,
            "gzip_types": GZIP_TYPES,
            "error_pages_path": ERROR_PAGES_PATH,
            "sticky_cookies": sorted({(r.sticky.cookie, sticky_var(r.sticky.cookie))
                                      for r in routes if r.sticky is not None}),
            "rate_zones": sorted({z for r in routes if (z := rate_zone(r)) is not None},
                                 key=lambda z: z.name),
            "allow_lists": sorted({(allow_var(r.allow), r.allow) for r in routes if r.allow}),
            "upstreams": list(upstreams.values()) + ([acme_upstream] if acme_upstream else []),
            "acme_upstream": acme_upstream.name if acme_upstream else None,
            "acme": any(s.acme for s in http_servers),
            "servers": http_servers,
            # hosts whose routes check clients differently: strict_paths, path_maps
            **paths_context([s.locations for s in http_servers + https_servers]),
            "https": https,
            "https_servers": https_servers,
        }
        if table.tcp and self.stream is None:
            raise RenderError("tcp routes: this renderer has no stream context")
        stream, stream_resolving = self.stream.render(table.tcp, snapshot) \
            if self.stream is not None else ("", frozenset[str]())
        # The generation is a digest of the configuration without it (and of the stream
        # context, which nginx reads in the same reload), then written into it.
        try:
            body = self._template.render(context, generation="0")
            generation = hashlib.sha256((body + stream).encode()).hexdigest()[:16]
            text = self._template.render(context, generation=generation)
        except jinja2.TemplateError as exc:
            raise RenderError(f"template: {exc}") from exc
        return Rendered(text, generation, frozenset(
            u.lookup for u in upstreams.values() if u.resolve) | stream_resolving, stream)


def render_main_conf(*, prefix: Path, routes_conf: Path, worker_processes: str,
                     access_log: bool = False, modules: Sequence[Path] = (),
                     stream_conf: Path | None = None, closing: bool = False,
                     open_files: int = 4096, worker_connections: int = 4096) -> str:
    """nginx.conf for a private nginx under `prefix` (--nginx-prefix). With `access_log` the
    routes file sets the http-level access log (lines for the agent), else this file turns it
    off. `modules`: dynamic modules' files (gateway/modules.py); `stream_conf`: the stream
    context's file (tcp routes); `closing`: draining, no kept-alive connections (drain.py);
    `open_files`, `worker_connections`: per worker (gateway/capacity.py)."""
    template = _environment(_TEMPLATES).get_template("nginx.conf.j2")
    return template.render(version=__version__, prefix=str(prefix), routes_conf=str(routes_conf),
                           worker_processes=worker_processes, access_log=access_log,
                           modules=[str(m) for m in modules], closing=closing,
                           open_files=open_files, worker_connections=worker_connections,
                           stream_conf=str(stream_conf) if stream_conf else None)
