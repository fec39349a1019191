"""What the gateway should serve: `desired(inputs) -> Rendered`, the one pipeline from routes,
endpoints, certificates and files to nginx configuration, used by `run` and `render` alike.
No I/O: inputs are values the drivers gathered (gateway/pipeline.py), the output is text.

Same input, byte-identical output: everything is sorted, nothing depends on time or dict order.
The template sees only values that passed the routes model, and every interpolation goes through
the `nginx` filter (plan/filters.py).
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import jinja2

from agent import __version__
from agent.core.fields import ERROR_PAGES_PATH
from agent.core.routes import RouteTable, Target
from agent.gateway.model import Endpoints, FilesPlan, Rendered, Snapshot, TlsPlan
from agent.gateway.plan.clientchecks import allow_var, rate_zone
from agent.gateway.plan.cors import cors_maps
from agent.gateway.plan.filters import TEMPLATES, RenderError, environment
from agent.gateway.plan.forwardauth import auth_upstreams
from agent.gateway.plan.http import GZIP_TYPES, KEEPALIVE_MIN_TIMEOUT, servers, with_tls
from agent.gateway.plan.match import UNMATCHED, match_context
from agent.gateway.plan.naming import UNROUTED_ROOT, digest, sticky_var
from agent.gateway.plan.observe import LogPlan
from agent.gateway.plan.observe import context as observe_context
from agent.gateway.plan.paths import paths_context
from agent.gateway.plan.scale import (
    GENERATION_PLACEHOLDER,
    HOST_ROOTS_MARK,
    scale_context,
    share_servers,
    share_zone,
)
from agent.gateway.plan.stream import StreamRenderer
from agent.gateway.plan.traffic import traffic_context
from agent.gateway.plan.upstreams import (
    KEEPALIVE,
    RESOLVER_VALID,
    Upstream,
    http_upstreams,
    server_address,
)


@dataclass(frozen=True)
class Inputs:
    """Everything the configuration is made of, as values."""

    table: RouteTable
    snapshot: Snapshot
    tls: TlsPlan | None = None  # certificates per host (drivers/tls.py)
    acme: tuple[Target, int] | None = None  # the controller, for ACME challenges
    files: FilesPlan | None = None  # the files routes name (drivers/routefiles.py)


def acme_target(routes_url: str | None, table: RouteTable) -> tuple[Target, int] | None:
    """The controller, where ACME challenges go, when a route has `tls: acme`."""
    if routes_url is None or not any(r.tls is not None and r.tls.acme for r in table.routes):
        return None
    url = urlsplit(routes_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    return Target("host", (url.hostname or "").strip("[]")), port


class Planner:
    """The one pipeline from inputs to configuration: `desired(inputs)`, for `run` (the
    reconciler) and `render` (cli.py) alike (both assembled by gateway/pipeline.py)."""


    def __init__(self, *, listen: str, status_listen: str, trusted_proxies: Sequence[str] = (),
                 template: Path | None = None, access_log: str | None = None,
                 https_listen: str | None = None, https_redirect_port: int = 443,
                 resolver: str | None = None, resolve: bool = False,
                 stream: StreamRenderer | None = None, own_resolver: bool = False,
                 backlog: int | None = None, http3: bool = False,
                 logs: LogPlan | None = None) -> None:
        self.http3 = http3  # QUIC on the HTTPS port's UDP side (plan/edgetls.py)
        self.logs = logs  # the JSON access log and the trace fields (plan/observe.py)
        self.backlog = backlog  # of the HTTP and HTTPS listeners (drivers/capacity.py)
        self.stream = stream  # tcp routes; without it a table with tcp routes is refused
        self.resolve = resolve  # upstreams name their targets; nginx resolves them (resolver)
        self.https_listen = https_listen  # None: no HTTPS listener, whatever the routes say
        self.https_redirect_port = https_redirect_port
        # nginx's own lookups: upstream targets (resolve) and OCSP responders (stapling);
        # own_resolver: `resolver` is the agent's (agent.gateway.drivers.dnsserver)
        self.resolver = resolver
        self.own_resolver = own_resolver
        self.listen = listen
        self.status_listen = status_listen
        self.trusted_proxies = tuple(trusted_proxies)
        self.access_log = access_log  # the access-log file the agent reads, or None
        directory, name = (template.parent, template.name) if template else (
            TEMPLATES, "gateway.conf.j2")
        self._template = environment(directory).get_template(name)
        # hosts routed alike share a server (plan/scale.py) where the template knows it: a
        # template of its own written before would write a shared location's empty root
        self.share_servers = template is None or HOST_ROOTS_MARK in template.read_text(
            encoding="utf-8")

    def render(self, table: RouteTable, snapshot: Snapshot, tls: TlsPlan | None = None,
               acme: tuple[Target, int] | None = None,
               files: FilesPlan | None = None) -> Rendered:
        """desired() of these inputs, given one by one."""
        return self.desired(Inputs(table, snapshot, tls, acme, files))

    def desired(self, inputs: Inputs) -> Rendered:
        """The configuration for these routes and endpoints (and certificates:
        drivers/tls.py; the files routes name: drivers/routefiles.py; without them a route
        with basic_auth answers 503).

        `acme` is the controller (its name and port): the hosts of `tls: acme` routes pass
        /.well-known/acme-challenge/ to it, over plain HTTP, before any redirect."""
        table, snapshot, tls, acme, files = (inputs.table, inputs.snapshot, inputs.tls,
                                             inputs.acme, inputs.files)
        routes = table.routes
        upstreams = http_upstreams(routes, snapshot, self.resolve, self.own_resolver)
        upstreams = dict(sorted({**upstreams, **auth_upstreams(
            routes, snapshot, self.resolve, self.own_resolver, upstreams)}.items(),
            key=lambda kv: kv[1].name))  # and the auth services' (plan/forwardauth.py)
        # the resolved ones in one shared zone (plan/scale.py)
        upstreams = share_zone(upstreams, {n: len(e.addresses) for n, e in snapshot.items()})
        if self.https_listen is None:
            tls = None
        http_servers, https_servers = with_tls(servers(routes, upstreams, files), tls)
        if self.share_servers:  # hosts routed alike in one server each (plan/scale.py)
            http_servers, https_servers = share_servers(http_servers), share_servers(
                https_servers)
        acme_upstream = None
        if acme is not None and any(s.acme for s in http_servers):
            addresses = snapshot.get(acme[0].lookup_name, Endpoints()).addresses
            with contextlib.suppress(ValueError):  # the controller's URL names an address
                addresses = (ipaddress.ip_address(acme[0].name).compressed,)
            if addresses:
                acme_upstream = Upstream(
                    "gateway_acme_controller", acme[0].kind, acme[0].name, acme[1],
                    "round_robin", tuple(server_address(acme[0].lookup_name, a, acme[1])
                                         for a in addresses))
        https = None if tls is None else {
            "listen": self.https_listen,
            "redirect_port": self.https_redirect_port,
            "http3": self.http3,
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
            **traffic_context(loc.traffic for s in http_servers + https_servers
                              for loc in s.locations),
            "cors_maps": cors_maps(routes),
            "unmatched": UNMATCHED,
            **match_context([d for s in http_servers + https_servers for d in s.dispatches],
                            [loc for s in http_servers + https_servers for loc in s.locations]),
            **observe_context(self.logs, routes),
            **scale_context(http_servers + https_servers, routes),
        }
        if table.tcp and self.stream is None:
            raise RenderError("tcp routes: this renderer has no stream context")
        stream, stream_resolving = self.stream.render(table.tcp, snapshot) \
            if self.stream is not None else ("", frozenset[str]())
        # The generation is a digest of the configuration without it (and of the stream
        # context, which nginx reads in the same reload), then written into it.
        try:
            body = self._template.render(context, generation=GENERATION_PLACEHOLDER)
        except jinja2.TemplateError as exc:
            raise RenderError(f"template: {exc}") from exc
        generation = digest(body + stream, 16)
        # Rendered once (at 10,000 routes a render takes seconds): the generation replaces the
        # placeholder, where it is written once; a template that writes it more than once, or a
        # value that holds the placeholder, is rendered again with the generation instead.
        if body.count(GENERATION_PLACEHOLDER) == 1:
            text = body.replace(GENERATION_PLACEHOLDER, generation)
        else:
            try:
                text = self._template.render(context, generation=generation)
            except jinja2.TemplateError as exc:
                raise RenderError(f"template: {exc}") from exc
        return Rendered(text, generation, frozenset(
            u.lookup for u in upstreams.values() if u.resolve) | stream_resolving, stream)


