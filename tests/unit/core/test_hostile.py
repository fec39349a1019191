"""Hostile input, generated: every value is refused with a message naming its place, or it renders
a configuration that `nginx -t` accepts and that holds exactly what the routes asked for.

"Exactly" is checked on the parsed configuration, not by grepping: the http context holds the
fixed blocks of an empty route table, one upstream per (target, port, balance) with tasks and
nothing else in it, one server per set of hosts with exactly the locations their routes asked for,
and each location holds only the directives of a proxy (or of a 503) with the route's own values.
A `;`, `{`, `}`, quote, comment or newline that slipped through would show as a directive, a block
or a server name no route asked for.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import ipaddress
import re
import shutil
import subprocess
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core.fields import is_address
from agent.core.options import OWN_REQUEST_HEADERS, OWN_RESPONSE_HEADERS
from agent.core.routes import Route, RoutesError, RouteTable, parse_routes, parse_routes_text
from agent.gateway.drivers.discovery import sort_addresses
from agent.gateway.model import Endpoints, FilesPlan, RouteFile
from agent.gateway.plan.desired import Planner
from agent.gateway.plan.filters import RenderError, nginx_token
from agent.gateway.plan.http import GZIP_TYPES, allow_var, rate_zone
from agent.gateway.plan.mainconf import render_main_conf
from agent.gateway.plan.naming import sticky_var
from agent.gateway.plan.naming import upstream_name as expected_upstream_name
from agent.gateway.plan.scale import PEER_BYTES, SHARED_ZONE
from agent.gateway.plan.upstreams import KEEPALIVE, upstream_key
from tests.support import require_programs
from tests.support.tlsca import TestCA

LISTEN = "0.0.0.0:8080"
STATUS = "127.0.0.1:9181"
TRUSTED = ("10.0.0.0/8", "fd00::/8")

# Examples per property: several thousand in all, new ones each run (no fixed seed). nginx -t
# costs tens of milliseconds, so every configuration the model accepts is also shown to the real
# nginx, and the whole files are the fewest (500: about 20 s on the 2-core CI machine).
# A loaded CI machine is slow: no deadline, and no health check about generation speed.
_QUIET = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]
FILES = settings(max_examples=500, deadline=None, suppress_health_check=_QUIET)
CHEAP = settings(max_examples=1500, deadline=None, suppress_health_check=_QUIET)

# -- a reader of nginx configuration, as nginx's own lexer splits it -----------------------------


@dataclass(frozen=True)
class Directive:
    name: str
    args: tuple[str, ...]
    block: tuple[Directive, ...] | None = None

    def children(self, name: str) -> list[Directive]:
        assert self.block is not None, f"{self.name} has no block"
        return [d for d in self.block if d.name == name]

    def one(self, name: str) -> Directive:
        found = self.children(name)
        assert len(found) == 1, f"{self.name} {self.args}: {len(found)} {name!r} directives"
        return found[0]


# nginx starts a quoted token or a comment only where a token starts; a word runs to whitespace,
# ';', '{' or '}'.
_TOKEN = re.compile(r"""(?P<space>\s+)|(?P<comment>\#[^\n]*)|"(?P<dq>(?:[^"\\]|\\.)*)"|"""
                    r"""'(?P<sq>(?:[^'\\]|\\.)*)'|(?P<punct>[{};])|(?P<word>[^\s{};]+)""", re.S)


def _tokens(text: str) -> Iterator[tuple[str, str]]:
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        assert m is not None, f"nginx could not read this at {pos}: {text[pos:pos + 60]!r}"
        pos = m.end()
        kind = m.lastgroup
        if kind in ("space", "comment"):
            continue
        assert kind is not None
        yield ("punct" if kind == "punct" else "word", m.group(kind))


def parse_conf(text: str) -> tuple[Directive, ...]:
    stack: list[list[Directive]] = [[]]
    heads: list[list[str]] = []
    words: list[str] = []
    for kind, value in _tokens(text):
        if kind == "word":
            words.append(value)
        elif value == ";":
            assert words, "an empty directive"
            stack[-1].append(Directive(words[0], tuple(words[1:])))
            words = []
        elif value == "{":
            assert words, "a block without a name"
            heads.append(words)
            stack.append([])
            words = []
        else:
            assert not words, "a '}' ends a directive without ';'"
            assert heads, "an unbalanced '}'"
            head, body = heads.pop(), stack.pop()
            stack[-1].append(Directive(head[0], tuple(head[1:]), tuple(body)))
    assert not words, "a directive without ';' at the end"
    assert not heads, "an unclosed block"
    return tuple(stack[0])


# -- what a route table asked for, against what was rendered --------------------------------------

# What each kind of location holds. A directive added to the template on purpose belongs here too:
# this list is the statement of what a route may cause to appear in nginx's configuration.
PROXY_DIRECTIVES = Counter({"proxy_pass": 1, "proxy_http_version": 1, "proxy_set_header": 13,
                            "proxy_hide_header": 1, "add_header": 1,  # X-Request-Id
                            "proxy_connect_timeout": 1, "proxy_read_timeout": 1,
                            "proxy_send_timeout": 1, "client_max_body_size": 1,
                            "proxy_next_upstream": 1, "proxy_next_upstream_tries": 1})
REFUSAL_DIRECTIVES = Counter({"default_type": 1, "add_header": 1, "return": 1})
NO_PATH_DIRECTIVES = Counter({"default_type": 1, "return": 1})


def auth_copy(name: str) -> Path:
    """Where the agent would have put the checked copy of a password file (routefiles)."""
    return Path("/run/gateway/htpasswd") / (hashlib.sha256(name.encode()).hexdigest()[:24] +
                                            ".htpasswd")


PAGES = Path("/run/gateway/route-files")


def page_copy(name: str) -> Path:
    """... and of an error page."""
    return PAGES / (hashlib.sha256(name.encode()).hexdigest()[:24] + ".html")


@functools.cache
def _ca_dir() -> Path:
    """nginx reads a CA file when it loads the configuration: `nginx -t` needs a real one."""
    directory = Path(tempfile.mkdtemp(prefix="gateway-hostile-ca-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


def ca_copy(name: str) -> Path:
    """... and of a CA file (upstream_tls.ca, tls.client_ca): a real CA certificate."""
    path = _ca_dir() / (hashlib.sha256(name.encode()).hexdigest()[:24] + ".pem")
    if not path.exists():
        path.write_bytes(TestCA().root_pem)
    return path


def auth_plan(table: RouteTable) -> FilesPlan:
    names = sorted({r.basic_auth.file for r in table.routes if r.basic_auth is not None})
    pages = sorted({r.error_page for r in table.routes if r.error_page is not None})
    cas = sorted({r.upstream_tls.ca for r in table.routes
                  if r.upstream_tls is not None and r.upstream_tls.ca is not None})
    return FilesPlan(tuple(RouteFile(n, auth_copy(n), None) for n in names) +
                     tuple(RouteFile(n, page_copy(n), None, "page") for n in pages) +
                     tuple(RouteFile(n, ca_copy(n), None, "ca") for n in cas))


RESOLVER = "127.0.0.11:53"


def _renderer(resolve: bool = False) -> Planner:
    return Planner(listen=LISTEN, status_listen=STATUS, trusted_proxies=TRUSTED,
                    resolver=RESOLVER, resolve=resolve)


RENDERER = _renderer()  # static: DNS answers are written into the configuration
RENDERERS = {False: RENDERER, True: _renderer(resolve=True)}  # by `resolve`


def _fixed_part(conf: tuple[Directive, ...]) -> list[Directive]:
    """Everything but the upstreams, their resolver, the routes' rate zones and servers:
    maps, geo, default and status."""
    return [d for d in conf if d.name not in ("upstream", "resolver", "resolver_timeout",
                                              "limit_req_zone") and
            not _is_route_server(d) and not _is_sticky_map(d) and not _is_path_map(d)
            and not _is_allow_geo(d)]


def _is_allow_geo(d: Directive) -> bool:
    return d.name == "geo" and d.args[0].startswith("$gateway_allow_")


def _is_sticky_map(d: Directive) -> bool:
    return d.name == "map" and d.args[1].startswith("$gateway_sticky_")


def _is_path_map(d: Directive) -> bool:
    return d.name == "map" and d.args[1].startswith(("$gateway_path_ambiguous",
                                                     "$gateway_path_case_"))


AMBIGUOUS = [("default", "0"), ("~^[^?]*[;\\x5c]", "1"),
             ("~*^[^?]*%(2e|2f|5c|3b|25|00|c0|c1|u)", "1"), ("~^[^?]*/[.][.]?([/?]|$)", "1")]


def _map_value(block: tuple[Directive, ...], value: str) -> str:
    """What nginx's map of these lines gives `value` (its regular expressions in order)."""
    for line in block:
        key, result = line.name, line.args[0]
        if key.startswith("~"):
            flags = re.IGNORECASE if key.startswith("~*") else 0
            pattern = key.lstrip("~*").replace("[:space:]", "\\s")
            if re.search(pattern, value, flags):
                return result
    return next(line.args[0] for line in block if line.name == "default")


def _checks(route: Route) -> tuple[object, ...]:
    return (route.allow, route.basic_auth, rate_zone(route))


def _check_strict_paths(conf: tuple[Directive, ...], servers: list[Directive],
                        routes_of: Mapping[str, list[Route]]) -> None:
    """A host whose routes check clients differently refuses every other reading of a checked
    path: `;`, `\\`, encoded forms, another case, dots or spaces ending a segment."""
    maps = {d.args[1]: d.block or () for d in conf if _is_path_map(d)}
    any_strict = False
    for server in servers:
        routes = routes_of[server.one("server_name").args[0]]
        guarded = [r for r in routes if any(_checks(r))]
        strict = bool(guarded) and len({_checks(r) for r in routes}) > 1
        ifs = server.children("if")
        if not strict:
            assert ifs == [], server.one("server_name").args
            continue
        any_strict = True
        assert ifs[0].args == ("($gateway_path_ambiguous)",)
        for form in ("/x/..;/a", "/a;b=1/c", "/x\\..\\a", "/x/%2e%2E/a", "/a%2fb", "/a%3Bb",
                     "/%252e", "/./a", "/a/..", "/a%00"):
            assert _map_value(maps["$gateway_path_ambiguous"], form + "?q=1") == "1", form
        for fine in ("/", "/a/b.c", "/a?x=;..\\%2e", "/a-b_c~d+e,f:g@h"):
            assert _map_value(maps["$gateway_path_ambiguous"], fine) == "0", fine
        readings = [(r.path, v) for r in guarded if r.path != "/" for v in (
            r.path.upper(), r.path.title(), r.path + ".", r.path + " /x", r.path + "./x")]
        case = ifs[1:]
        assert len(case) == (1 if readings else 0)
        for path, reading in readings:
            if reading == path or any(len(r.path) >= len(path) and (
                    reading == r.path or reading.startswith(r.path + "/")) for r in routes):
                continue  # a route's own path as written (or a path without letters)
            assert _map_value(maps[case[0].args[0].strip("()")], reading) == "1", reading
        for r in routes if case else ():
            if r.path != "/":
                assert _map_value(maps[case[0].args[0].strip("()")], r.path) == "0", r.path
    assert ("$gateway_path_ambiguous" in {k.split(" ")[0] for k in maps}) == any_strict
    if any_strict:
        assert [(d.name, *d.args) for d in maps["$gateway_path_ambiguous"]] == AMBIGUOUS


def _is_route_server(d: Directive) -> bool:
    if d.name != "server":
        return False
    listen = d.one("listen").args
    return listen == (LISTEN,)


def _reference_fixed_part() -> list[Directive]:
    rendered = RENDERER.render(RouteTable(()), {})
    return _fixed_part(parse_conf(rendered.text.replace(rendered.generation, "GENERATION")))


REFERENCE = _reference_fixed_part()


def _parse_server(arg: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    m = re.fullmatch(r"\[([0-9a-f:.]+)\]:(\d+)|([0-9.]+):(\d+)", arg)
    assert m is not None, f"upstream server {arg!r} is not an address:port"
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    return ipaddress.ip_address(host), int(port)


def _check_upstream(block: Directive, route: Route, endpoints: Endpoints,
                    resolve: bool) -> None:
    names = [d.name for d in block.block or ()]
    balance = [] if route.balance == "round_robin" else [route.balance]
    resolved = resolve and not endpoints.stale and not endpoints.refused \
        and not is_address(route.target.lookup_name)
    if route.sticky is not None and resolved:  # nginx's own sticky cookie, by task address
        balance = ["sticky"]
        assert block.one("sticky").args == ("cookie", route.sticky.cookie, "path=/",
                                            "httponly", "samesite=lax")
    elif route.sticky is not None:
        balance = ["hash"]
        assert block.one("hash").args == (f"${sticky_var(route.sticky.cookie)}", "consistent")
    addresses = endpoints.addresses
    if resolved:
        # nginx resolves the route's own name; the agent's answers decide only that it exists
        assert names == ["zone", *balance, "server", "keepalive", "keepalive_timeout"]
        # one zone shared by every resolved upstream, with room for twice their tasks
        zone, size = block.one("zone").args
        assert zone == SHARED_ZONE
        assert size.endswith("k")
        assert int(size[:-1]) * 1024 >= 2 * PEER_BYTES * len(addresses)
        assert block.one("server").args == (f"{route.target.lookup_name}:{route.port}",
                                            "resolve", "max_fails=1", "fail_timeout=5s")
        assert block.one("keepalive").args == (str(KEEPALIVE),)
        return
    assert names == [*balance, *["server"] * len(addresses), "keepalive", "keepalive_timeout"]
    for d in block.children("server"):
        assert d.args[1:] == ("max_fails=1", "fail_timeout=5s")
    servers = sorted((_parse_server(d.args[0]) for d in block.children("server")), key=str)
    assert servers == sorted(((ipaddress.ip_address(a), route.port) for a in addresses), key=str)
    assert block.one("keepalive").args == (str(KEEPALIVE),)


# said once at the http level (plan/scale.py); a location inherits each unless it says its own
# (proxy_set_header, proxy_hide_header: all of them, unless it says any)
HTTP_LEVEL = ("proxy_http_version", "proxy_set_header", "proxy_hide_header",
              "proxy_connect_timeout", "proxy_read_timeout", "proxy_send_timeout",
              "client_max_body_size", "proxy_next_upstream", "proxy_next_upstream_tries")
LISTS = ("proxy_set_header", "proxy_hide_header")  # a location that says one says all again


def _inherited(loc: Directive, conf: tuple[Directive, ...]) -> Directive:
    """A proxying location as nginx reads it: with what it inherits from the http level. Its
    own lines are only what differs from a plain route's."""
    body = loc.block or ()
    if not any(d.name == "proxy_pass" for d in body):
        return loc
    own = {d.name for d in body}
    http = [d for d in conf if d.name in HTTP_LEVEL and d.name not in own]
    for d in body:
        if d.name in HTTP_LEVEL and d.name not in LISTS:
            assert d not in conf, f"{d} is said at the http level already"
    return Directive(loc.name, loc.args, body + tuple(http))


def _check_location(loc: Directive, route: Route | None, upstream: str | None,
                    resolved: bool = False) -> None:
    body = loc.block or ()
    got = Counter(d.name for d in body)
    if route is None:  # a host with paths but no route for '/'
        assert got == NO_PATH_DIRECTIVES, got
        assert loc.one("return").args == ("404", "404 no route for this path\\n")
        return
    if route.redirect is not None:  # only redirects: one return, to the route's own URL
        assert got == Counter({"return": 1}), got
        target = route.redirect.to.rstrip("/") + "$request_uri" if route.redirect.keep_path \
            else route.redirect.to
        assert loc.one("return").args == (str(route.redirect.code), target)
        return
    page: Counter[str] = Counter()
    if route.error_page is not None:
        page = Counter({"error_page": 1})
        assert loc.one("error_page").args == (
            "502", "503", "504", f"/.gateway-error-pages/{page_copy(route.error_page).name}")
    if route.maintenance:
        assert got == Counter({"default_type": 1, "add_header": 1, "return": 1}) + page, got
        assert loc.one("return").args == (("503",) if page else
                                          ("503", "503 down for maintenance\\n"))
        return
    if upstream is None:
        assert got == REFUSAL_DIRECTIVES + page, got
        assert loc.one("return").args == (("503",) if page else (
            "503", f"503 no running task of {route.target.name}\\n"))
        return
    want = PROXY_DIRECTIVES + Counter({"proxy_set_header": 1 if route.websocket else 0}) + page
    assert loc.one("proxy_http_version").args == (("2",) if route.protocol == "h2c" else ("1.1",))
    allow = route.allow or ()
    want += Counter({"if": 1 if allow else 0})
    if route.basic_auth is not None:
        want += Counter({"auth_basic": 1, "auth_basic_user_file": 1})
    if route.headers is not None:
        want += Counter({"proxy_set_header": len(route.headers.request),
                         "proxy_hide_header": len(route.headers.response),
                         "add_header": sum(v is not None for _, v in route.headers.response)})
    if route.sticky is not None and not resolved:  # the cookie for a client that had none
        want += Counter({"add_header": 1})
        assert (f"${sticky_var(route.sticky.cookie)}_set",) in [
            d.args[1:] for d in loc.children("add_header") if d.args[0] == "Set-Cookie"]
    if route.upstream_tls is not None:  # HTTPS to the tasks, for the name and CA asked
        u = route.upstream_tls
        want += Counter({"proxy_ssl_server_name": 1, "proxy_ssl_name": 1})
        assert loc.one("proxy_ssl_name").args == (u.server_name or route.target.name,)
        if u.verify:
            assert u.ca is not None
            want += Counter({"proxy_ssl_verify": 1, "proxy_ssl_verify_depth": 1,
                             "proxy_ssl_trusted_certificate": 1})
            assert loc.one("proxy_ssl_trusted_certificate").args == (str(ca_copy(u.ca)),)
    if route.compress:
        want += Counter({"gzip": 1, "gzip_types": 1, "gzip_min_length": 1, "gzip_proxied": 1,
                         "gzip_vary": 1})
        assert loc.one("gzip_types").args == GZIP_TYPES
    if route.rate_limit is not None:
        want += Counter({"limit_req": 1, "limit_req_status": 1, "limit_req_log_level": 1})
        assert loc.one("limit_req_log_level").args == ("info",)  # a 429 writes no log line
        zone = rate_zone(route)
        assert zone is not None
        burst = route.rate_limit.burst
        assert loc.one("limit_req").args == (f"zone={zone.name}",
                                              *([f"burst={burst}"] if burst else []), "nodelay")
    if (allow or route.rate_limit is not None) and TRUSTED:
        want += Counter({"set_real_ip_from": len(TRUSTED), "real_ip_header": 1,
                         "real_ip_recursive": 1})
        assert [d.args for d in loc.children("set_real_ip_from")] == [(n,) for n in TRUSTED]
        assert loc.one("real_ip_header").args == ("X-Forwarded-For",)
    assert got == want, got
    if allow:  # refused by the geo of its networks, with no log line (`deny` writes one)
        refusal = loc.one("if")
        assert refusal.args == (f"(${allow_var(allow)}", "=", "0)")
        assert refusal.block == (Directive("return", ("403",)),)
    if route.basic_auth is not None:
        assert loc.one("auth_basic").args == (route.basic_auth.realm,)
        assert loc.one("auth_basic_user_file").args == (str(auth_copy(route.basic_auth.file)),)
    scheme = "https" if route.upstream_tls is not None else "http"
    assert loc.one("proxy_pass").args == (f"{scheme}://{upstream}/" if route.strip_prefix
                                          else f"{scheme}://{upstream}",)
    headers = {d.args[0]: d.args[1:] for d in loc.children("proxy_set_header")}
    assert len(headers) == want["proxy_set_header"], "a header set twice"
    # the route's own headers hold exactly the route's values (removed: empty) ...
    asked = dict(route.headers.request) if route.headers else {}
    for name, value in asked.items():
        assert headers.pop(name) == (value or "",)
    # ... the trace is made of the gateway's own maps (plan/observe.py) ...
    assert headers.pop("traceparent") == (
        "00-$gateway_trace_id-$gateway_span_id-$gateway_trace_flags",)
    # ... and every other header value is nginx's own variable or empty: nothing from a client
    assert all(len(v) == 1 and (v[0] == "" or v[0].startswith("$")) for v in headers.values())
    answered = route.headers.response if route.headers else ()
    assert [d.args for d in loc.children("proxy_hide_header")] == [("X-Request-Id",)] + [
        (n,) for n, _ in answered]
    assert [d.args for d in loc.children("add_header") if d.args[0] != "Set-Cookie"] == [
        ("X-Request-Id", "$gateway_request_id", "always")] + [
        (n, v, "always") for n, v in answered if v is not None]
    assert ("Upgrade" in headers) is route.websocket
    # the client's certificate, always as nginx verified it (a client's own never passes)
    assert headers["X-Client-Verify"] == ("$ssl_client_verify",)
    assert headers["X-Client-Subject"] == ("$ssl_client_s_dn",)
    assert headers["X-Forwarded-Prefix"] == (
        "$gateway_forwarded_prefix" + (route.path if route.strip_prefix else ""),)
    ms = max(1, round(route.connect_timeout * 1000))
    assert loc.one("proxy_connect_timeout").args == (f"{ms}ms",)
    ms = max(1, round(route.read_timeout * 1000))
    assert loc.one("proxy_read_timeout").args == (f"{ms}ms",)
    assert loc.one("proxy_send_timeout").args == (f"{ms}ms",)
    assert loc.one("client_max_body_size").args == (str(route.max_body_size),)


def check_rendered(text: str, generation: str, table: RouteTable,
                   snapshot: Mapping[str, Endpoints], resolve: bool = False) -> None:
    """The configuration holds what `table` asked for with these endpoints, and nothing else."""
    assert text.isascii()
    conf = parse_conf(text.replace(generation, "GENERATION"))
    assert _fixed_part(conf) == REFERENCE, "a fixed block changed"
    assert [d.name for d in conf if d.name not in (
        "map", "geo", "upstream", "server", "resolver", "resolver_timeout",
        "limit_req_zone")] == ["map_hash_max_size", "map_hash_bucket_size",
                               "keepalive_min_timeout", *HTTP_LEVEL[:1], *HTTP_LEVEL[1:2] * 13,
                               *HTTP_LEVEL[2:], "server_names_hash_max_size",
                               "server_names_hash_bucket_size"]
    # nginx's resolver, when upstreams name their targets: the agent's nameserver, never a TTL
    resolvers = [d.args for d in conf if d.name == "resolver"]
    assert len({d.one("zone").args for d in conf if d.name == "upstream" and d.children("zone")}
               ) <= 1, "a zone said with two sizes"
    wants_resolver = resolve and any(d.name == "upstream" and d.children("zone") for d in conf)
    assert resolvers == ([(RESOLVER, "valid=1s", "ipv6=off")] if wants_resolver else [])
    # two maps per sticky cookie: what the upstream hashes, and the cookie to set
    cookies = {r.sticky.cookie for r in table.routes if r.sticky is not None}
    assert sorted(d.args for d in conf if _is_sticky_map(d)) == sorted(
        a for c in cookies for a in ((f"$cookie_{c}", f"${sticky_var(c)}"),
                                     (f"$cookie_{c}", f"${sticky_var(c)}_set")))
    # a limit_req zone per route with rate_limit, with the route's rate, and nothing else
    zones = {z.name: z for r in table.routes if (z := rate_zone(r)) is not None}
    assert sorted(d.args for d in conf if d.name == "limit_req_zone") == sorted(
        ("$binary_remote_addr", f"zone={z.name}:1m", f"rate={z.rate}") for z in zones.values())

    # a geo per list of allowed networks: those networks 1, any other client 0, the client
    # taken from X-Forwarded-For behind the trusted proxies as realip takes it
    lists = {allow_var(r.allow): r.allow for r in table.routes if r.allow}
    geos = {d.args[0]: d for d in conf if _is_allow_geo(d)}
    assert sorted(geos) == sorted(f"${v}" for v in lists)
    for var, allow in lists.items():
        assert geos[f"${var}"].args == (f"${var}",)
        assert geos[f"${var}"].block == (
            Directive("default", ("0",)),
            *(Directive("proxy", (n,)) for n in TRUSTED),
            *([Directive("proxy_recursive", ())] if TRUSTED else []),
            *(Directive(str(ipaddress.ip_network(n)), ("1",)) for n in allow))

    # upstreams: one per (target, port, balance) that has tasks, with exactly those tasks
    upstreams = {d.args: d for d in conf if d.name == "upstream"}
    assert len(upstreams) == len([d for d in conf if d.name == "upstream"]), "duplicate upstream"
    wanted: dict[str, tuple[Route, Endpoints]] = {}
    for route in table.routes:
        if not route.proxies:
            continue
        assert route.port is not None
        endpoints = snapshot.get(route.target.lookup_name, Endpoints())
        if endpoints.addresses:
            name = expected_upstream_name(*upstream_key(route))
            wanted.setdefault(name, (route, endpoints))
    assert set(upstreams) == {(name,) for name in wanted}
    for name, (route, endpoints) in wanted.items():
        _check_upstream(upstreams[(name,)], route, endpoints, resolve)

    # servers: every host once, each with exactly the locations its routes asked for
    asked: dict[str, dict[tuple[str, ...], Route | None]] = defaultdict(dict)
    for route in table.routes:
        for host in route.hosts:
            if route.path == "/":
                asked[host][("/",)] = route
            else:
                asked[host][("=", route.path)] = route
                asked[host][("^~", route.path + "/")] = route
    for locations in asked.values():
        locations.setdefault(("/",), None)
        if any(r is not None and r.error_page is not None for r in locations.values()):
            locations[("^~", "/.gateway-error-pages/")] = None  # the pages, internal
    servers = [d for d in conf if _is_route_server(d)]
    routes_of: dict[str, list[Route]] = defaultdict(list)
    for route in table.routes:
        for host in route.hosts:
            routes_of[host].append(route)
    _check_strict_paths(conf, servers, routes_of)
    named = [n for s in servers for n in s.one("server_name").args]
    assert sorted(named) == sorted(asked), "server names differ from the routes' hosts"
    for server in servers:
        assert [d.name for d in server.block or ()][:2] == ["listen", "server_name"]
        assert Counter(d.name for d in server.block or ()) == Counter(
            {"listen": 1, "server_name": 1, "location": len(server.children("location")),
             "if": len(server.children("if"))})
        locations = {loc.args: loc for loc in server.children("location")}
        assert len(locations) == len(server.children("location")), "a location twice"
        for host in server.one("server_name").args:
            assert set(locations) == set(asked[host]), (host, sorted(locations))
            for args, loc in locations.items():
                if args == ("^~", "/.gateway-error-pages/"):
                    assert [(d.name, d.args) for d in loc.block or ()] == [
                        ("internal", ()), ("alias", (f"{PAGES}/",)),
                        ("default_type", ("text/html",)),
                        ("add_header", ("Retry-After", "5", "always"))]
                    continue
                route = asked[host][args]
                upstream, resolved = None, False
                if route is not None and route.proxies and \
                        route.target.lookup_name in snapshot and \
                        snapshot[route.target.lookup_name].addresses:
                    assert route.port is not None
                    upstream = expected_upstream_name(*upstream_key(route))
                    e = snapshot[route.target.lookup_name]
                    resolved = resolve and not e.stale and not e.refused \
                        and not is_address(route.target.lookup_name)
                if route is not None and not (route.websocket or route.strip_prefix or (
                        route.headers is not None and route.headers.request) or (
                        route.auth is not None and route.auth.response_headers)):
                    assert loc.children("proxy_set_header") == [], "a location's own headers"
                if route is not None and not (route.headers is not None and route.headers.response):
                    assert loc.children("proxy_hide_header") == [], "a location's own hidden"
                _check_location(_inherited(loc, conf), route, upstream, resolved)


# -- the real nginx --------------------------------------------------------------------------------


class NginxTest:
    """`nginx -t` of a routes file inside the main configuration the agent runs nginx with."""

    def __init__(self, prefix: Path) -> None:
        self.binary = require_programs("nginx")["nginx"]
        self.prefix = prefix
        for sub in ("conf.d", "logs", "temp/client_body", "temp/proxy", "temp/fastcgi",
                    "temp/uwsgi", "temp/scgi"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)
        self.routes_conf = prefix / "conf.d" / "gateway.conf"
        (prefix / "nginx.conf").write_text(render_main_conf(
            prefix=prefix, routes_conf=self.routes_conf, worker_processes="1"))
        self.runs = 0

    def check(self, text: str) -> None:
        self.routes_conf.write_text(text)
        result = subprocess.run([self.binary, "-e", "stderr", "-p", f"{self.prefix}/", "-c",
                                 str(self.prefix / "nginx.conf"), "-t", "-q"],
                                capture_output=True, text=True, timeout=30)
        self.runs += 1
        assert result.returncode == 0, f"nginx -t refused it: {result.stderr}\n{text}"


@pytest.fixture(scope="module")
def nginx_t(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxTest]:
    checker = NginxTest(tmp_path_factory.mktemp("nginx-t"))
    yield checker
    print(f"nginx -t runs: {checker.runs}")


# -- hostile values --------------------------------------------------------------------------------

NASTY = [";", "{", "}", "'", '"', "$", "#", "\\", "\n", "\r", "\t", "\x00", " ", "`", "|", "&",
         "<", ">", "%", "?", "^", "(", ")", "[", "]", "=", "!", "*", "~", "/", ":", ",",
         "\u00e9", "\u0130", "\u212a", "\u0665", "\u202e", "\ufeff", "\u00a0", "\U0001f600"]
PAYLOADS = ["; include /etc/passwd", "}\nserver { listen 1; }", "$host", "${host}", "\"; #",
            "' ;", "\nreturn 200 pwned;", "# comment", "~^(.*)$", "\\x3b", "a\x00b", "*",
            "1; proxy_pass http://evil", "http://evil/", "\u2028", "10.0.0.1 backup"]


def hostile_text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(st.sampled_from([*NASTY, "a", "b", "0", "9", ".", "-", "_"]), max_size=24),
        st.sampled_from(PAYLOADS),
        st.text(max_size=24),  # any code point
        st.text(st.characters(codec="ascii"), min_size=200, max_size=600),  # very long
    )


def poisoned(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A valid value with something nasty put somewhere into it."""
    @st.composite
    def build(draw: st.DrawFn) -> str:
        value = draw(valid)
        at = draw(st.integers(0, len(value)))
        bad = draw(st.one_of(st.text(st.sampled_from(NASTY), min_size=1, max_size=3),
                             st.sampled_from(PAYLOADS)))
        return value[:at] + bad + value[at:]
    return build()


def _word(alphabet: str, inner: str, longest: int) -> st.SearchStrategy[str]:
    """A first character from `alphabet`, the rest from `inner` (cheaper than from_regex)."""
    return st.builds(lambda first, rest: first + rest, st.sampled_from(alphabet),
                     st.text(st.sampled_from(inner), max_size=longest - 1))


_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_LABEL = _word(_ALNUM + "_", _ALNUM + "_-", 63).filter(lambda s: not s.endswith("-"))
_NAME = st.lists(_LABEL, min_size=1, max_size=4).map(".".join).filter(lambda s: len(s) <= 253)
_SEGMENT = st.text(st.sampled_from(_ALNUM + "ABZ._~+,:@-"), min_size=1, max_size=12).filter(
    lambda s: s not in (".", ".."))

# nginx refuses 255.255.255.255 (its "no address"); the model does too
_CLIENT = st.ip_addresses().filter(lambda ip: str(ip) != "255.255.255.255")

# lowercase only: two names that differ in case only are one header, refused as given twice
_HEADER_NAME = _word(_ALNUM, _ALNUM + "-", 64).map(
    lambda n: "X-" + n if len(n) <= 62 else n).filter(
    lambda n: n.lower() not in OWN_REQUEST_HEADERS | set(OWN_RESPONSE_HEADERS))
_HEADER_VALUE = st.text(st.sampled_from("".join(
    c for c in map(chr, range(0x20, 0x7f)) if c not in '"\\${}')), min_size=1,
    max_size=1024).filter(lambda v: v == v.strip())

_URL = st.builds(lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
                 st.sampled_from(["http", "https"]), _NAME,
                 st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}")),
                 st.one_of(st.just(""), st.just("/"),
                           st.lists(_SEGMENT, min_size=1, max_size=3).map(
                               lambda segments: "/" + "/".join(segments))))
REDIRECT = st.one_of(_URL, st.fixed_dictionaries({"to": _URL}, optional={
    "code": st.sampled_from([301, 302, 303, 307, 308]), "keep_path": st.booleans()}))

VALID: dict[str, st.SearchStrategy[Any]] = {
    "hosts": st.lists(st.one_of(_NAME, _NAME.map(str.upper),
                                _NAME.map(lambda n: "*." + n).filter(lambda s: len(s) <= 253)),
                      min_size=1, max_size=3, unique_by=str.lower),
    "path": st.one_of(st.just("/"), st.lists(_SEGMENT, min_size=1, max_size=4).map(
        lambda segments: "/" + "/".join(segments))),
    "service": _word(_ALNUM + "ABC", _ALNUM + "ABC_.-", 63),
    "host": st.one_of(_NAME, _NAME.map(lambda n: n + ".").filter(lambda s: len(s) <= 253)),
    "port": st.integers(1, 65535),
    "zone": _word(_ALNUM, _ALNUM + "_-", 63),
    "balance": st.sampled_from(["round_robin", "least_conn", "ip_hash"]),
    "connect_timeout": st.one_of(st.integers(1, 86400), st.floats(0.001, 86400),
                                 st.sampled_from(["500ms", "30s", "2m", "1h", "0.5s", " 3s"])),
    "read_timeout": st.one_of(st.integers(1, 86400), st.sampled_from(["1ms", "24h", "90"])),
    "max_body_size": st.one_of(st.integers(0, 64 << 30), st.sampled_from(["0", "512k", "10M",
                                                                          "64g", "1"])),
    "websocket": st.booleans(),
    "compress": st.booleans(),
    "error_page": st.sampled_from(["shop.html", "Oops-1.html"]),
    "maintenance": st.booleans(),
    "protocol": st.sampled_from(["http", "h2c"]),
    "upstream_tls": st.one_of(
        st.fixed_dictionaries({"ca": st.sampled_from(["tasks.pem", "Internal-CA_1.pem"])},
                              optional={"verify": st.just(True), "server_name": _NAME}),
        st.fixed_dictionaries({"verify": st.just(False)}, optional={"server_name": _NAME})),
    "sticky": st.one_of(_word(_ALNUM + "ABZ_", _ALNUM + "ABZ_", 64),
                        st.fixed_dictionaries({"cookie": st.sampled_from(["sid", "SID"])})),
    "basic_auth": st.one_of(
        _word(_ALNUM + "ABC", _ALNUM + "ABC_.-", 40).map(lambda s: s + ".htpasswd").filter(
            lambda s: ".." not in s),
        st.fixed_dictionaries({"file": st.just("users.htpasswd")}, optional={
            "realm": st.text(st.sampled_from(_ALNUM + "ABZ _.,:()/@+-"), min_size=1,
                             max_size=64).filter(lambda s: s == s.strip(" "))})),
    "headers": st.fixed_dictionaries({}, optional={
        direction: st.dictionaries(
            _HEADER_NAME, st.one_of(st.none(), st.just(""), st.integers(0, 10**6), _HEADER_VALUE),
            max_size=3)
        for direction in ("request", "response")}),
    "rate_limit": st.one_of(
        st.builds(lambda n, unit: f"{n}r/{unit}", st.integers(1, 999999), st.sampled_from("sm")),
        st.fixed_dictionaries({"rate": st.sampled_from(["1r/s", "600r/m"])},
                              optional={"burst": st.integers(0, 100_000)})),
    "allow": st.one_of(
        _CLIENT.map(str),
        st.lists(st.one_of(_CLIENT.map(str), st.ip_addresses(v=6).map(str),
                           st.builds(lambda ip, n: str(ipaddress.ip_network(f"{ip}/{n}",
                                                                            strict=False)),
                                     st.ip_addresses(v=4), st.integers(0, 32)).filter(
                                         lambda n: n != "255.255.255.255/32"),
                           st.builds(lambda ip, n: str(ipaddress.ip_network(f"{ip}/{n}",
                                                                            strict=False)),
                                     st.ip_addresses(v=6), st.integers(0, 128))),
                 min_size=1, max_size=4)),
}

_INVALID_SERVICE = st.one_of(poisoned(st.just("next")), st.integers(), st.none())
_INVALID_COOKIE = st.one_of(poisoned(st.just("side")), hostile_text().filter(
    lambda s: not re.fullmatch(r"[A-Za-z0-9_]{1,64}", s)))
_INVALID_HEADER = st.one_of(poisoned(st.just("X-Canary")),
                            st.sampled_from(["Host", "Content-Length", "X-Forwarded-For"]))

HOSTILE: dict[str, st.SearchStrategy[Any]] = {
    "hosts": st.one_of(st.lists(st.one_of(hostile_text(), poisoned(_NAME)),
                                max_size=3),
                       hostile_text(), st.none(), st.integers()),
    "path": st.one_of(hostile_text(), poisoned(st.sampled_from(["/", "/api", "/a/b"]))),
    "service": st.one_of(hostile_text(), poisoned(VALID["service"]), st.integers(),
                         st.lists(st.text(max_size=3), max_size=2)),
    "host": st.one_of(hostile_text(), poisoned(VALID["host"])),
    "port": st.one_of(st.integers(), st.text(max_size=6), st.booleans(), st.floats(),
                      st.none()),
    "zone": st.one_of(hostile_text(), poisoned(VALID["zone"])),
    "balance": st.one_of(hostile_text(), poisoned(st.sampled_from(["least_conn", "ip_hash"]))),
    "connect_timeout": st.one_of(hostile_text(), poisoned(st.sampled_from(["5s", "100ms"])),
                                 st.floats(allow_nan=True, allow_infinity=True),
                                 st.integers(), st.booleans()),
    "read_timeout": st.one_of(hostile_text(), poisoned(st.just("60s")), st.floats()),
    "max_body_size": st.one_of(hostile_text(), poisoned(st.sampled_from(["1m", "512k"])),
                               st.integers(), st.floats(), st.booleans()),
    "websocket": st.one_of(hostile_text(), st.integers(), st.none()),
    "basic_auth": st.one_of(
        hostile_text(), poisoned(st.just("users.htpasswd")), st.integers(), st.none(),
        st.fixed_dictionaries({"file": st.one_of(hostile_text(), st.just("u.htpasswd"))},
                              optional={"realm": st.one_of(hostile_text(),
                                                           poisoned(st.just("Shop admin")))}),
        st.fixed_dictionaries({"realm": st.just("x")}, optional={"other": hostile_text()})),
    "rate_limit": st.one_of(
        hostile_text(), poisoned(st.sampled_from(["10r/s", "1r/m"])), st.integers(),
        st.fixed_dictionaries({"rate": st.one_of(hostile_text(), poisoned(st.just("5r/s")))},
                              optional={"burst": st.one_of(st.integers(), hostile_text(),
                                                           st.floats())}),
        st.fixed_dictionaries({"rate": st.just("5r/s")}, optional={"zone": hostile_text()})),
    "compress": st.one_of(hostile_text(), st.integers(), st.none()),
    "error_page": st.one_of(hostile_text(), poisoned(st.just("shop.html")), st.integers()),
    "maintenance": st.one_of(hostile_text(), st.integers(), st.none()),
    "protocol": st.one_of(hostile_text(), st.just("grpc"),  # grpc: refused without tls
                          poisoned(st.sampled_from(["http", "grpc", "h2c"]))),
    # (never valid: the whole-file check below knows no canary or mirror; a valid one is
    # rendered by test_canary_and_mirror_with_any_valid_names_pass_nginx_t)
    "canary": st.one_of(
        hostile_text(), st.integers(),
        st.fixed_dictionaries({"service": _INVALID_SERVICE, "weight": st.integers(1, 99)}),
        st.fixed_dictionaries({"service": st.just("next"), "weight": st.one_of(
            st.integers(max_value=0), st.integers(min_value=100), hostile_text())}),
        st.fixed_dictionaries({"service": st.just("next"), "weight": st.just(10),
                               "cookie": _INVALID_COOKIE}),
        st.fixed_dictionaries({"service": st.just("next"), "weight": st.just(10),
                               "header": _INVALID_HEADER})),
    "mirror": st.one_of(
        poisoned(st.just("shadow")), st.integers(), st.lists(st.just("shadow"), max_size=2),
        st.fixed_dictionaries({"service": _INVALID_SERVICE},
                              optional={"share": st.integers(1, 100)}),
        st.fixed_dictionaries({"service": st.just("shadow"), "share": st.one_of(
            st.integers(max_value=0), st.integers(min_value=101), hostile_text())}),
        st.fixed_dictionaries({"service": st.just("shadow"), "timeout": st.sampled_from(
            ["61s", "1d", -1, "1 s;", "${x}"])})),
    "sticky": st.one_of(hostile_text(), poisoned(st.just("sid")), st.integers(),
                        st.fixed_dictionaries({"cookie": st.one_of(hostile_text(),
                                                                   poisoned(st.just("s")))},
                                              optional={"other": hostile_text()})),
    "strip_prefix": st.one_of(hostile_text(), st.integers(), st.none(), st.just(True)),
    "upstream_tls": st.one_of(
        hostile_text(), st.integers(), st.just(True),  # true: verified, without a CA
        st.fixed_dictionaries({"ca": st.one_of(hostile_text(), poisoned(st.just("ca.pem")),
                                               st.sampled_from(["../ca.pem", "ca.htpasswd",
                                                                "/etc/ca.pem", ".ca.pem"]))},
                              optional={"verify": st.one_of(hostile_text(), st.integers()),
                                        "server_name": st.one_of(
                                            hostile_text(), poisoned(st.just("api.internal"))),
                                        "other": hostile_text()})),
    "redirect": st.one_of(
        hostile_text(), poisoned(st.just("https://example.com/a")), st.integers(),
        st.fixed_dictionaries({"to": st.one_of(hostile_text(), poisoned(_URL))}, optional={
            "code": st.one_of(st.integers(), hostile_text()),
            "keep_path": st.one_of(hostile_text(), st.integers())}),
        REDIRECT),  # valid, where a route also names a service: refused as a whole
    "headers": st.one_of(
        hostile_text(), st.integers(),
        st.fixed_dictionaries({}, optional={
            direction: st.one_of(hostile_text(), st.dictionaries(
                st.one_of(hostile_text(), poisoned(st.just("X-Api")),
                          st.sampled_from(["Host", "X-Forwarded-For", "Server", "x-real-ip",
                                           "Strict-Transport-Security"])),
                st.one_of(hostile_text(), poisoned(st.just("a value")), st.booleans(),
                          st.lists(st.text(max_size=3), max_size=2)),
                min_size=1, max_size=3))
            for direction in ("request", "response")}),
        st.fixed_dictionaries({"both": st.just({})})),
    # (never valid: the whole-file check below knows no match; valid ones are rendered by
    # tests/unit/core/test_match_fields.py)
    "match": st.one_of(
        hostile_text(), st.integers(), st.lists(st.just("GET"), max_size=2),
        st.fixed_dictionaries({"headers": st.dictionaries(
            poisoned(st.just("X-Env")), st.one_of(hostile_text(), st.just("beta")),
            min_size=1, max_size=2)}),
        st.fixed_dictionaries({"methods": st.lists(poisoned(st.just("GET")), min_size=1,
                                                   max_size=2)},
                              optional={"headers": st.just({"X-Env": "beta"})})),
    "allow": st.one_of(hostile_text(), poisoned(st.sampled_from(["10.0.0.0/8", "::1"])),
                       st.lists(st.one_of(hostile_text(), poisoned(st.just("192.0.2.0/24")),
                                          st.sampled_from(["10.0.0.1/8", "fe80::1%eth0",
                                                           "10.0.0.0/33", "all", "unix:"]),
                                          st.integers()), max_size=3),
                       st.integers(), st.just([])),
}
FIELDS = sorted(HOSTILE)
OPTIONAL = ["path", "zone", "balance", "connect_timeout", "read_timeout", "max_body_size",
            "websocket", "allow", "basic_auth", "rate_limit", "headers", "compress", "sticky",
            "error_page", "maintenance", "protocol", "upstream_tls"]


@dataclass
class GeneratedRoute:
    data: dict[str, Any]
    hostile: frozenset[str]  # the fields given a hostile value (which may still be valid)


@st.composite
def generated_route(draw: st.DrawFn) -> GeneratedRoute:
    if draw(st.integers(0, 5)) == 5:  # a route that only redirects
        data: dict[str, Any] = {"hosts": draw(VALID["hosts"]), "redirect": draw(REDIRECT)}
        if draw(st.booleans()):
            data["path"] = draw(VALID["path"])
        if draw(st.integers(0, 3)) == 3:
            data["redirect"] = draw(HOSTILE["redirect"])
            return GeneratedRoute(data, frozenset({"redirect"}))
        return GeneratedRoute(data, frozenset())
    data = {"hosts": draw(VALID["hosts"]), "port": draw(VALID["port"])}
    target = draw(st.sampled_from(["service", "host"]))
    data[target] = draw(VALID[target])
    for name in OPTIONAL:
        if draw(st.booleans()):
            data[name] = draw(VALID[name])
    if "sticky" in data:  # sticky chooses the task itself
        data.pop("balance", None)
    if data.get("protocol") == "h2c":  # nginx passes no upgrade over HTTP/2
        data.pop("websocket", None)
    if data.get("path", "/") != "/" and draw(st.booleans()):  # only a path has a prefix
        data["strip_prefix"] = draw(st.booleans())
    hostile: set[str] = set()
    if draw(st.integers(0, 2)) == 2:  # one route in three has one or two hostile fields
        fields = [f for f in FIELDS if f != "host" or target == "host"]
        hostile = set(draw(st.permutations(fields))[:draw(st.integers(1, 2))])
    for name in hostile:
        data[name] = draw(HOSTILE[name])
    extra: frozenset[str] = frozenset()
    if draw(st.integers(0, 20)) == 20:  # a field the model does not know
        key = draw(st.one_of(hostile_text(), st.sampled_from(["proxy_pass", "include"])))
        if key not in data:
            data[key] = draw(hostile_text())
            extra = frozenset([key])
    return GeneratedRoute(data, frozenset(hostile) | extra)


@st.composite
def snapshot_for(draw: st.DrawFn, table: RouteTable) -> dict[str, Endpoints]:
    """Endpoints as discovery produces them: canonical, usable addresses; some names empty."""
    usable = st.ip_addresses().filter(lambda ip: not (ip.is_unspecified or ip.is_multicast))
    snapshot: dict[str, Endpoints] = {}
    for target in table.targets:
        kind = draw(st.sampled_from(["ok", "ok", "none", "unknown"]))
        if kind == "ok":
            addresses = sort_addresses(str(ip) for ip in draw(st.lists(usable, min_size=1,
                                                                       max_size=5)))
            snapshot[target.lookup_name] = Endpoints(addresses, "ok",
                                                     stale=draw(st.booleans()))
        elif kind == "none":
            snapshot[target.lookup_name] = Endpoints((), "none")
    return snapshot


# routes[2].hosts[0], routes[2].basic_auth.realm, routes[2]['a key as written'], routes,
# (top level), line 3 column 7, and
# a field name at the top level (`websocket: unknown field` when a line break moved it there)
PLACE = re.compile(r"(?:\(top level\)|line \d+ column \d+|\[['\"].*?\]|routes(?:\[(?P<index>\d+)\]"
                   r"(?:\.(?P<field>[A-Za-z_]\w*)(?:\[\d+\]|\.[A-Za-z_]\w*)*"
                   r"|\[(?P<key>['\"].*?)\])?)?"
                   r"|(?!None:)[A-Za-z_]\w*): \S")


def parsed(document: object, text: str | None = None) -> RouteTable | RoutesError:
    """The route table, or the refusal with every error."""
    try:
        return parse_routes_text(text) if text is not None else parse_routes(document)
    except RoutesError as exc:
        return exc


def assert_refusal_names_places(exc: RoutesError, routes: list[GeneratedRoute]) -> None:
    assert exc.errors
    for error in exc.errors:
        assert not {"\n", "\r"} & set(error), f"not one line: {error!r}"
        m = PLACE.match(error)
        assert m is not None, f"no place in {error!r}"
        if m.group("index") is None:
            continue
        route = routes[int(m.group("index"))]
        field = m.group("field")
        if m.group("key") is not None:  # a key the model does not know, quoted
            assert set(route.data) - set(VALID), error
        elif field is None:  # the route as a whole: 'give exactly one of service or host'
            assert {"service", "host"} & route.hostile or \
                any(f not in route.data for f in ("hosts", "port")), error
        elif "is already routed by" in error:  # two routes may draw the same valid host
            assert field == "hosts"
        elif field == "sticky" and field not in route.hostile:
            assert "balance" in route.hostile, error  # a hostile balance that was valid
            assert "leave out balance" in error
        elif field == "protocol" and field not in route.hostile:
            assert "websocket" in route.hostile, error  # h2c with a websocket that was valid
        elif field == "strip_prefix" and field not in route.hostile:
            assert "path" in route.hostile, error  # a hostile path that happened to be "/"
            assert "no prefix to strip" in error
        else:
            assert field in route.hostile, f"{error!r} names a field that was valid"


@FILES
@given(st.lists(generated_route(), min_size=1, max_size=4), st.data())
def test_a_route_file_is_refused_naming_the_place_or_renders_only_what_it_asked(
        nginx_t: NginxTest, routes: list[GeneratedRoute], data: st.DataObject) -> None:
    document = {"routes": [r.data for r in routes]}
    table = parsed(document)
    if isinstance(table, RoutesError):
        assert_refusal_names_places(table, routes)
        return
    snapshot = data.draw(snapshot_for(table))
    resolve = data.draw(st.booleans(), label="resolve")
    rendered = RENDERERS[resolve].render(table, snapshot, files=auth_plan(table))
    check_rendered(rendered.text, rendered.generation, table, snapshot, resolve)
    nginx_t.check(rendered.text)


@CHEAP
@given(st.sampled_from(FIELDS).flatmap(lambda f: st.tuples(st.just(f), HOSTILE[f])))
def test_one_hostile_value_is_refused_at_its_field_or_kept_to_its_place(
        field_value: tuple[str, Any]) -> None:
    field, value = field_value
    route: dict[str, Any] = {"hosts": ["a.example.com"], "service": "svc", "port": 80}
    if field == "host":
        del route["service"]
    route[field] = value
    table = parsed({"routes": [route]})
    if isinstance(table, RoutesError):
        assert any(e.startswith(f"routes[0].{field}") for e in table.errors), table.errors
        assert all("\n" not in e for e in table.errors)
        return
    snapshot = {t.lookup_name: Endpoints(("10.0.0.1",), "ok") for t in table.targets}
    rendered = RENDERER.render(table, snapshot, files=auth_plan(table))
    check_rendered(rendered.text, rendered.generation, table, snapshot)


VALID_FILE = """\
routes:
  - hosts: [managerhttp, "*.dmz.example.com"]
    service: managerhttp
    port: 8888
    path: /api
    read_timeout: 2m
  - hosts: [dmzhttp]
    host: api.internal
    port: 80
    websocket: true
"""


@CHEAP
@given(st.integers(0, len(VALID_FILE)), st.one_of(st.text(st.sampled_from(NASTY), min_size=1,
                                                          max_size=3),
                                                  st.sampled_from(PAYLOADS)))
def test_a_routes_file_with_something_inserted_anywhere(at: int, inserted: str) -> None:
    text = VALID_FILE[:at] + inserted + VALID_FILE[at:]
    table = parsed(None, text)
    if isinstance(table, RoutesError):
        for error in table.errors:
            assert "\n" not in error, f"not one line: {error!r}"
            assert PLACE.match(error), f"no place in {error!r}"
        return
    snapshot = {t.lookup_name: Endpoints(("10.0.0.1", "fd00::1"), "ok") for t in table.targets}
    rendered = RENDERER.render(table, snapshot, files=auth_plan(table))
    check_rendered(rendered.text, rendered.generation, table, snapshot)


# -- DNS answers ----------------------------------------------------------------------------------

ROUTES = parse_routes({"routes": [
    {"hosts": ["web.example.com"], "service": "web", "port": 8080},
    {"hosts": ["api.example.com"], "host": "api.internal", "port": 80, "balance": "least_conn"},
]})


def answer_like() -> st.SearchStrategy[str]:
    return st.one_of(
        st.ip_addresses().map(str),
        st.ip_addresses(v=6).map(lambda ip: ip.exploded.upper()),  # valid, not canonical
        poisoned(st.ip_addresses().map(str)),
        st.ip_addresses().map(lambda ip: f"{ip}%eth0"),  # a scope id
        hostile_text(),
        st.sampled_from(["10.0.0.1:80", "10.0.0.1 backup", "localhost", "tasks.web", "0x0a000001",
                         "10.1", "010.0.0.1", "::ffff:10.0.0.1", "[::1]", "1.2.3.4.5"]),
    )


@CHEAP
@given(st.lists(answer_like(), min_size=1, max_size=4), st.lists(answer_like(), max_size=3))
def test_an_answer_that_is_not_an_ip_address_never_reaches_nginx(
        web: list[str], api: list[str]) -> None:
    snapshot = {"tasks.web": Endpoints(tuple(web), "ok"),
                "api.internal": Endpoints(tuple(api), "ok" if api else "none")}

    def is_ip(text: str) -> bool:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            return False
        return not (isinstance(ip, ipaddress.IPv6Address) and ip.scope_id)

    if all(is_ip(a) for a in web + api):
        rendered = RENDERER.render(ROUTES, snapshot)
        check_rendered(rendered.text, rendered.generation, ROUTES, snapshot)
        return
    with pytest.raises(RenderError) as info:
        RENDERER.render(ROUTES, snapshot)
    bad = next(name for name, addresses in (("tasks.web", web), ("api.internal", api))
               if not all(is_ip(a) for a in addresses))
    assert bad in str(info.value), "the refusal names the lookup the answer came from"


@CHEAP
@given(st.text())
def test_the_nginx_filter_passes_only_plain_tokens(text: str) -> None:
    try:
        out = nginx_token(text)
    except RenderError:
        return
    assert out == text
    assert text
    assert text.isascii()
    assert not set(text) & set(";{}'\"$#\\ \t\r\n\x00")


def test_the_lexer_sees_what_nginx_would() -> None:
    """The checks above are only as good as this reader: it must split like nginx does."""
    conf = parse_conf('a "b c" \'d;\' e#f {\n # g;\n h; }\ni "j\\"}";')
    assert conf == (Directive("a", ("b c", "d;", "e#f"), (Directive("h", ()),)),
                    Directive("i", ('j\\"}',)))
    with pytest.raises(AssertionError):
        parse_conf("a { b;")
    with pytest.raises(AssertionError):
        parse_conf("a; }")


def test_an_injection_that_slipped_through_would_be_seen() -> None:
    """The structural check fails on a configuration with one directive more than asked."""
    table = parse_routes({"routes": [{"hosts": ["a.example.com"], "service": "s", "port": 80}]})
    snapshot = {"tasks.s": Endpoints(("10.0.0.1",), "ok")}
    rendered = RENDERER.render(table, snapshot, files=auth_plan(table))
    check_rendered(rendered.text, rendered.generation, table, snapshot)
    for forged in (
        rendered.text.replace("server_name a.example.com;", "server_name a.example.com evil;"),
        rendered.text.replace("proxy_http_version 1.1;", "proxy_http_version 1.1; root /;"),
        rendered.text.replace("server 10.0.0.1:80 ", "server 10.6.6.6:80 "),
        rendered.text.replace("client_max_body_size 1048576;", "client_max_body_size 0;"),
        rendered.text.replace("keepalive 512;", "keepalive 512; } server { listen 1;"),
    ):
        assert forged != rendered.text
        with pytest.raises(AssertionError):
            check_rendered(forged, rendered.generation, table, snapshot)


@pytest.mark.parametrize(("text", "expected"), [
    # each found by the generators above, kept here so that it is checked on every run
    ('routes:\n  - {hosts: [a], service: s, port: 80, "\\r\\nx": 1}\n',
     "routes[0]['\\r\\nx']: unknown field"),
    ("routes:\n  - hosts: [a]\n    service: s\n    port: 80\n    read_timeout: \"\u0665s\"\n",
     "routes[0].read_timeout: '\u0665s' is not a duration"),
    ("routes: []\n? [a, b]\n: 1\n", "line 2 column 3: invalid YAML: a key cannot be a list"),
    ("routes: []\n? {a: b}\n: 1\n", "line 2 column 3: invalid YAML: a key cannot be a dict"),
    ("routes:\n  - hosts: [a\x00]\n", "line 2 column 14: invalid YAML: unacceptable character"),
    ("routes: []\n?\n", "(top level): the key None is not a field name"),
])
def test_refusals_found_by_generation(text: str, expected: str) -> None:
    refused = parsed(None, text)
    assert isinstance(refused, RoutesError)
    assert refused.errors[0].startswith(expected), refused.errors
    assert "\n" not in refused.errors[0]


@pytest.mark.parametrize("answer", ["fe80::1%eth0", "fe80::1%;x{", "10.0.0.1 backup", ""])
def test_an_answer_refused_names_its_lookup(answer: str) -> None:
    with pytest.raises(RenderError, match=r"endpoints of tasks\.web: "):
        RENDERER.render(ROUTES, {"tasks.web": Endpoints(("10.0.0.2", answer), "ok")})


# -- canary and mirror (core/traffic.py) -----------------------------------------------------------

_COOKIE = _word(_ALNUM + "ABZ_", _ALNUM + "ABZ_", 64)
_HEADER = _word(_ALNUM + "XYZ", _ALNUM + "XYZ-", 64).filter(
    lambda h: h.lower() not in OWN_REQUEST_HEADERS)


@settings(max_examples=150, deadline=None, suppress_health_check=_QUIET)
@given(VALID["service"], VALID["service"], st.integers(1, 99), st.integers(1, 100),
       st.one_of(st.none(), _COOKIE), st.one_of(st.none(), _HEADER), st.booleans())
def test_canary_and_mirror_with_any_valid_names_pass_nginx_t(
        nginx_t: NginxTest, canary: str, mirror: str, weight: int, share: int,
        cookie: str | None, header: str | None, resolve: bool) -> None:
    """Whatever names a valid canary and mirror have, nginx accepts the configuration, and the
    names reach it only where they belong: upstream names, variables, one cookie, one header."""
    route: dict[str, Any] = {"hosts": ["a.example.com"], "service": "stable", "port": 80,
                             "canary": {"service": canary, "weight": weight},
                             "mirror": {"service": mirror, "share": share}}
    if cookie is not None:
        route["canary"]["cookie"] = cookie
    if header is not None:
        route["canary"]["header"] = header
    table = parsed({"routes": [route]})
    if isinstance(table, RoutesError):  # the same service as the route's: refused, by name
        assert "stable" in (canary, mirror), table.errors
        assert all(e.startswith(("routes[0].canary:", "routes[0].mirror:"))
                   for e in table.errors), table.errors
        return
    snapshot = {t.lookup_name: Endpoints(("10.0.0.1",), "ok") for t in table.targets}
    rendered = RENDERERS[resolve].render(table, snapshot)
    conf = parse_conf(rendered.text)
    assert [d.args[1:] for d in conf if d.name == "split_clients"] == [
        (f"${v}_split",) for v in _vars(rendered.text, "canary")] + [
        (f"${v}",) for v in _vars(rendered.text, "mirror")]
    location = next(loc for s in conf if s.name == "server"
                    for loc in s.children("location") if loc.args == ("/",))
    assert location.one("proxy_pass").args == (f"http://${_vars(rendered.text, 'canary')[0]}"
                                               "_upstream",)
    assert location.one("mirror").args[0].startswith("/.gateway-mirror/")
    nginx_t.check(rendered.text)


def _vars(text: str, kind: str) -> list[str]:
    return sorted(set(re.findall(rf"\$(gateway_{kind}_[0-9a-f]{{12}})(?![0-9a-f])", text)))
