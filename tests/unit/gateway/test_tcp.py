"""tcp routes: the model (core/tcp.py), the stream context (gateway/stream.py), nginx's modules
(gateway/modules.py), and hostile values, refused at their field or kept to their place, the
configuration shown to the real nginx (with its stream module) as in test_hostile.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.routes import RoutesError, RouteTable, Target, parse_routes
from agent.core.settings import HostPort
from agent.core.tcp import TcpRoute
from agent.gateway.drivers import modules
from agent.gateway.drivers.discovery import sort_addresses
from agent.gateway.drivers.ports import port_conflicts, reserved_ports, unbindable, without_ports
from agent.gateway.model import Endpoints
from agent.gateway.plan.desired import Planner
from agent.gateway.plan.filters import RenderError
from agent.gateway.plan.mainconf import render_main_conf
from agent.gateway.plan.naming import upstream_name
from agent.gateway.plan.stream import REFUSED, StreamRenderer
from agent.gateway.plan.upstreams import zone_size
from agent.gateway.settings import GatewaySettings as Settings
from tests.support import require_programs
from tests.unit.core.test_hostile import (
    _CLIENT,
    _NAME,
    CHEAP,
    VALID,
    hostile_text,
    parse_conf,
    poisoned,
)

RESOLVER = "127.0.0.11:53"
STREAM = StreamRenderer(address="0.0.0.0", resolver=RESOLVER, resolve=False)
STREAMS = {False: STREAM,
           True: StreamRenderer(address="0.0.0.0", resolver=RESOLVER, resolve=True)}


def parsed(tcp: object, **other: object) -> RouteTable | RoutesError:
    try:
        return parse_routes({"tcp": tcp, **other})
    except RoutesError as exc:
        return exc


def errors(tcp: object) -> list[str]:
    result = parsed(tcp)
    assert isinstance(result, RoutesError), result
    return result.errors


DB = {"listen": 5432, "service": "db", "port": 5432}

# -- the model -------------------------------------------------------------------------------------


def test_a_routes_file_with_tcp_routes() -> None:
    table = parsed([DB, {"listen": 9443, "sni": "DB.example.com", "host": "db.internal",
                         "port": 8443, "allow": "10.0.0.0/8", "idle_timeout": "1h",
                         "connect_timeout": "500ms", "proxy_protocol": True,
                         "balance": "least_conn", "zone": "dmz"}])
    assert isinstance(table, RouteTable)
    assert table.routes == ()  # `routes:` may be left out beside `tcp:`
    plain, tls = table.tcp
    assert (plain.listen, plain.sni, plain.target, plain.idle_timeout) == (
        5432, None, Target("service", "db"), 600.0)
    assert (tls.sni, tls.allow, tls.idle_timeout, tls.connect_timeout, tls.target) == (
        ("db.example.com",), ("10.0.0.0/8",), 3600.0, 0.5, Target("host", "db.internal"))
    # discovery looks the tcp routes' targets up with the http routes'
    assert table.targets == (Target("host", "db.internal"), Target("service", "db"))
    assert table.for_zone("dmz").tcp == (tls,)
    assert table.for_zone("other").tcp == ()


@pytest.mark.parametrize(("route", "expected"), [
    ({**DB, "listen": 0}, "tcp[0].listen: 0: Input should be greater than or equal to 1"),
    ({**DB, "listen": "5432"}, "tcp[0].listen: '5432': Input should be a valid integer"),
    ({**DB, "listen": True}, "tcp[0].listen: True: Input should be a valid integer"),
    ({**DB, "port": 65536}, "tcp[0].port: 65536: Input should be less than or equal to 65535"),
    ({"listen": 1, "port": 1}, "tcp[0]: give exactly one of 'service'"),
    ({**DB, "host": "db.internal"}, "tcp[0]: give exactly one of 'service'"),
    ({**DB, "sni": []}, "tcp[0].sni: an empty list would refuse every connection"),
    ({**DB, "sni": ["10.0.0.1"]}, "tcp[0].sni[0]: '10.0.0.1': a client names no IP address"),
    ({**DB, "sni": ["a.example.com", "default"]}, "tcp[0].sni[1]: 'default': a name of one "
     "label that nginx's map"),
    ({**DB, "sni": ["include"]}, "tcp[0].sni[0]: 'include': a name of one label"),
    ({**DB, "sni": ["a b"]}, "tcp[0].sni[0]: 'a b' is not a valid host name"),
    ({**DB, "sni": ["a.example.com", "A.example.com"]},
     "tcp[0].sni[1]: 'a.example.com' is given twice"),
    ({**DB, "sni": {"a": 1}}, "tcp[0].sni: {'a': 1}: Input should be a valid tuple"),
    ({**DB, "service": "a;b"}, "tcp[0].service: 'a;b' is not a valid swarm service name"),
    ({**DB, "balance": "ip_hash"}, "tcp[0].balance: 'ip_hash': Input should be 'round_robin' "
     "or 'least_conn'"),
    ({**DB, "allow": []}, "tcp[0].allow: an empty list would refuse every client"),
    ({**DB, "allow": ["10.0.0.1/8"]}, "tcp[0].allow[0]: '10.0.0.1/8' has bits set"),
    ({**DB, "idle_timeout": "forever"}, "tcp[0].idle_timeout: 'forever' is not a duration"),
    ({**DB, "proxy_protocol": "yes"}, "tcp[0].proxy_protocol: 'yes': Input should be a valid "
     "boolean"),
    ({**DB, "zone": "A;"}, "tcp[0].zone: 'A;' is not a valid zone"),
    ({**DB, "proxy_pass": "x"}, "tcp[0].proxy_pass: unknown field"),
])
def test_a_tcp_route_is_refused_naming_the_place(route: dict[str, Any], expected: str) -> None:
    found = errors([route])
    assert any(e.startswith(expected) for e in found), found


def test_tcp_must_be_a_list_and_every_error_comes_at_once() -> None:
    assert errors("x")[0].startswith("tcp: 'x': Input should be a valid tuple")
    found = errors([{**DB, "listen": 0}, {**DB, "sni": "10.0.0.1"}])
    assert [e.split(":")[0] for e in found] == ["tcp[0].listen", "tcp[1].sni[0]"]
    # with errors in the http routes too
    result = parsed([{**DB, "port": 0}], routes=[{"hosts": ["a"], "service": "s"}])
    assert isinstance(result, RoutesError)
    assert [e.split(":")[0] for e in result.errors] == ["routes[0].port", "tcp[0].port"]


def test_routes_that_cannot_share_a_port_are_refused() -> None:
    sni = {**DB, "sni": ["a.example.com"]}
    assert errors([DB, DB]) == [
        "tcp[1].listen: port 5432 is also tcp[0]'s; tcp[0] has no 'sni' and takes every "
        "connection to it: a port is one plain route, or shared by routes that each give their "
        "'sni'"]
    assert errors([sni, DB])[0].startswith("tcp[1].listen: port 5432 is also tcp[0]'s; this "
                                           "route has no 'sni'")
    assert errors([sni, {**sni, "service": "other"}]) == [
        "tcp[1].sni[0]: 'a.example.com' on port 5432 is already tcp[0]'s"]
    assert errors([sni, {**sni, "sni": ["b.example.com"], "idle_timeout": "1m",
                         "proxy_protocol": True}]) == [
        "tcp[1].idle_timeout: routes on port 5432 share one nginx server, and tcp[0] gives "
        "600s: give the same, or another port",
        "tcp[1].proxy_protocol: routes on port 5432 share one nginx server, and tcp[0] gives "
        "False: give the same, or another port"]
    # distinct names on one port, a wildcard beside a name under it, one name on two ports
    table = parsed([sni, {**sni, "sni": ["*.example.com"]}, {**sni, "listen": 5433}, DB | {
        "listen": 5434}])
    assert isinstance(table, RouteTable)


def test_the_gateways_own_ports_are_refused_to_tcp_routes() -> None:
    settings_ = Settings(listen=HostPort("0.0.0.0", 80), https_listen=HostPort("0.0.0.0", 443),
                         admin_listen=HostPort("0.0.0.0", 9180),
                         status_listen=HostPort("127.0.0.1", 9181))
    table = parsed([{**DB, "listen": port} for port in (80, 443, 9180, 9181, 5432)])
    assert isinstance(table, RouteTable)
    assert port_conflicts(table, reserved_ports(settings_)) == [
        "tcp[0].listen: port 80 is the gateway's HTTP port (--listen)",
        "tcp[1].listen: port 443 is the gateway's HTTPS port (--https-listen); TLS passthrough "
        "on the port where the gateway terminates TLS is not supported: give the tcp routes a "
        "port of their own (docs/configuration.md, TCP routes)",
        "tcp[2].listen: port 9180 is the agent's admin port (--admin-listen)",
        "tcp[3].listen: port 9181 is nginx's status port for the agent (--status-listen)"]
    # a gateway of a zone serves only that zone's routes; their places stay the file's
    zoned = parsed([{**DB, "listen": 80}, {**DB, "listen": 443, "zone": "dmz"}])
    assert isinstance(zoned, RouteTable)
    assert port_conflicts(zoned, reserved_ports(settings_), "dmz") == [
        port_conflicts(zoned, reserved_ports(settings_))[1]]


def test_a_port_another_program_holds_is_refused_in_nginxs_words_and_alone() -> None:
    """A trial bind as nginx's (SO_REUSEADDR): a listening socket of another program refuses
    it, a port nginx holds itself is not tried, and the other routes stay."""
    with socket.create_server(("127.0.0.1", 0)) as taken, \
            socket.create_server(("127.0.0.1", 0)) as nginx_own:
        busy, own = taken.getsockname()[1], nginx_own.getsockname()[1]
        with socket.socket() as probe:  # a free port: bound and closed again
            probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]
        table = parsed([{**DB, "listen": busy}, {**DB, "listen": own}, {**DB, "listen": free}])
        assert isinstance(table, RouteTable)
        refused = unbindable(table, "127.0.0.1", held={own})
        assert refused == {busy: f"bind() to 127.0.0.1:{busy} failed (98: Address already in use)"}
        assert [r.listen for r in without_ports(table, refused).tcp] == [own, free]
        assert set(unbindable(table, "127.0.0.1", held=())) == {busy, own}
    assert without_ports(table, {}) is table


# -- the stream context ----------------------------------------------------------------------------


def test_without_tcp_routes_there_is_no_stream_context() -> None:
    assert STREAM.render((), {}) == ("", frozenset())
    rendered = Planner(listen="0.0.0.0:8080", status_listen="127.0.0.1:9181",
                        stream=STREAM).render(RouteTable(()), {})
    assert rendered.stream == ""


def test_a_table_with_tcp_routes_needs_a_stream_renderer_and_the_generation_covers_it() -> None:
    table = parsed([DB])
    assert isinstance(table, RouteTable)
    with pytest.raises(RenderError, match="no stream context"):
        Planner(listen="0.0.0.0:8080", status_listen="127.0.0.1:9181").render(table, {})
    renderer = Planner(listen="0.0.0.0:8080", status_listen="127.0.0.1:9181", stream=STREAM)
    one = renderer.render(table, {"tasks.db": Endpoints(("10.0.0.1",), "ok")})
    two = renderer.render(table, {"tasks.db": Endpoints(("10.0.0.2",), "ok")})
    assert one.stream != two.stream
    assert one.generation != two.generation, "a change of the stream context is a reload"
    assert one.text.replace(one.generation, "") == two.text.replace(two.generation, "")


def test_the_stream_context_of_a_plain_and_an_sni_port() -> None:
    table = parsed([
        {**DB, "allow": ["10.0.0.0/8"], "proxy_protocol": True, "idle_timeout": "1h"},
        {"listen": 9443, "sni": ["a.example.com", "*.a.example.com"], "service": "alpha",
         "port": 8443, "allow": ["192.0.2.0/24", "2001:db8::/32"]},
        {"listen": 9443, "sni": ["b.example.com"], "service": "beta", "port": 8443},
        {"listen": 9443, "sni": ["c.example.com"], "service": "gone", "port": 8443},
    ])
    assert isinstance(table, RouteTable)
    snapshot = {"tasks.db": Endpoints(("10.0.0.1",), "ok"),
                "tasks.alpha": Endpoints(("10.0.1.1", "10.0.1.2"), "ok"),
                "tasks.beta": Endpoints(("10.0.2.1",), "ok", stale=True)}
    text, resolving = STREAMS[True].render(table.tcp, snapshot)
    # db and alpha; beta's lookups failed, its addresses are written
    assert resolving == {"tasks.db", "tasks.alpha"}
    conf = {(d.name, d.args): d for d in parse_conf(text)}
    assert conf["resolver", (RESOLVER, "valid=1s", "ipv6=off")]
    assert [(d.name, d.args) for d in conf["upstream", ("tcp_service_beta_8443",)].block or ()] \
        == [("server", ("10.0.2.1:8443", "max_fails=1", "fail_timeout=5s"))]
    assert [(d.name, d.args) for d in conf["upstream", (REFUSED,)].block or ()] == [
        ("server", ("127.0.0.1:1", "down"))]
    db, sni = [d for d in parse_conf(text) if d.name == "server"]
    assert [(d.name, d.args) for d in db.block or ()] == [
        ("listen", ("0.0.0.0:5432",)), ("allow", ("10.0.0.0/8",)), ("deny", ("all",)),
        ("proxy_pass", ("tcp_service_db_5432",)), ("proxy_connect_timeout", ("5000ms",)),
        ("proxy_timeout", ("3600000ms",)), ("proxy_next_upstream_tries", ("3",)),
        ("proxy_protocol", ("on",))]
    assert [(d.name, d.args) for d in sni.block or ()] == [
        ("listen", ("0.0.0.0:9443",)), ("ssl_preread", ("on",)), ("preread_timeout", ("5s",)),
        ("proxy_pass", ("$gateway_tcp_9443",)), ("proxy_connect_timeout", ("5000ms",)),
        ("proxy_timeout", ("600000ms",)), ("proxy_next_upstream_tries", ("3",))]
    names = conf["map", ("$ssl_preread_server_name", "$gateway_tcp_9443")]
    assert [(d.name, d.args) for d in names.block or ()] == [
        ("hostnames", ()),
        ("*.a.example.com", ("$gateway_tcp_9443_0",)),
        ("a.example.com", ("$gateway_tcp_9443_0",)),
        ("b.example.com", ("tcp_service_beta_8443",)),
        ("c.example.com", (REFUSED,)),  # no task: refused
        ("default", (REFUSED,))]
    allowed = conf["geo", ("$gateway_tcp_9443_0",)]
    assert [(d.name, d.args) for d in allowed.block or ()] == [
        ("default", (REFUSED,)), ("192.0.2.0/24", ("tcp_service_alpha_8443",)),
        ("2001:db8::/32", ("tcp_service_alpha_8443",))]


def test_tcp_routes_listen_on_the_gateways_address() -> None:
    table = parsed([DB])
    assert isinstance(table, RouteTable)
    text, _ = StreamRenderer(address="::").render(table.tcp, {})
    assert "    listen [::]:5432;\n" in text
    assert "    proxy_pass gateway_tcp_refused;\n" in text  # no task known


# -- hostile values --------------------------------------------------------------------------------

_PORT = st.integers(1, 65535)
_SNI = st.lists(st.one_of(_NAME, _NAME.map(lambda n: "*." + n).filter(lambda s: len(s) <= 253))
                .filter(lambda n: n not in ("default", "hostnames", "include", "volatile")),
                min_size=1, max_size=3, unique=True)
TCP_VALID: dict[str, st.SearchStrategy[Any]] = {
    "sni": _SNI,
    "service": VALID["service"],
    "host": VALID["host"],
    "port": _PORT,
    "zone": VALID["zone"],
    "balance": st.sampled_from(["round_robin", "least_conn"]),
    "allow": VALID["allow"],
    "connect_timeout": VALID["connect_timeout"],
    "idle_timeout": VALID["read_timeout"],
    "proxy_protocol": st.booleans(),
}
TCP_HOSTILE: dict[str, st.SearchStrategy[Any]] = {
    "listen": st.one_of(st.integers(), st.text(max_size=6), st.booleans(), st.floats(),
                        st.none()),
    "sni": st.one_of(hostile_text(), st.lists(st.one_of(hostile_text(), poisoned(_NAME),
                                                        st.sampled_from(["default", "include",
                                                                         "10.0.0.1", "*"])),
                                              max_size=3)),
    "service": st.one_of(hostile_text(), poisoned(VALID["service"]), st.integers()),
    "host": st.one_of(hostile_text(), poisoned(VALID["host"])),
    "port": st.one_of(st.integers(), st.text(max_size=6), st.booleans()),
    "zone": st.one_of(hostile_text(), poisoned(VALID["zone"])),
    "balance": st.one_of(hostile_text(), st.just("ip_hash")),
    "allow": st.one_of(hostile_text(), st.lists(st.one_of(hostile_text(),
                                                          poisoned(st.just("10.0.0.0/8"))),
                                                max_size=2)),
    "connect_timeout": st.one_of(hostile_text(), st.floats(allow_nan=True)),
    "idle_timeout": st.one_of(hostile_text(), poisoned(st.just("60s"))),
    "proxy_protocol": st.one_of(hostile_text(), st.integers(), st.none()),
}


@dataclass
class Generated:
    data: dict[str, Any]
    hostile: frozenset[str]


@st.composite
def generated_tcp(draw: st.DrawFn, listen: int) -> Generated:
    data: dict[str, Any] = {"listen": listen, "port": draw(_PORT)}
    target = draw(st.sampled_from(["service", "host"]))
    data[target] = draw(TCP_VALID[target])
    for name in ("sni", "zone", "balance", "allow", "connect_timeout", "idle_timeout",
                 "proxy_protocol"):
        if draw(st.booleans()):
            data[name] = draw(TCP_VALID[name])
    hostile: set[str] = set()
    if draw(st.integers(0, 2)) == 2:
        fields = [f for f in TCP_HOSTILE if f != "host" or target == "host"]
        hostile = {draw(st.sampled_from(fields))}
        for name in hostile:
            data[name] = draw(TCP_HOSTILE[name])
    return Generated(data, frozenset(hostile))


def _own(name: str, n: int) -> str:
    """`name` made the n-th route's own: r1.a.example, *.r1.a.example."""
    return f"*.r{n}.{name[2:]}" if name.startswith("*.") else f"r{n}.{name}"


@st.composite
def tcp_file(draw: st.DrawFn) -> list[Generated]:
    """Routes on a few ports; routes of one port by SNI get names of their own and share the
    per-port settings, as a valid file would (what a hostile field breaks is then its own)."""
    routes = []
    for listen in draw(st.lists(st.integers(1, 65535), min_size=1, max_size=3, unique=True)):
        count = draw(st.integers(1, 3))
        shared: dict[str, Any] = {}
        for n in range(count):
            route = draw(generated_tcp(listen))
            if count > 1:
                if "sni" not in route.hostile:
                    route.data["sni"] = [_own(name, n) for name in draw(_SNI)
                                         if len(name) < 240] or [f"r{n}.example"]
                for field in ("connect_timeout", "idle_timeout", "proxy_protocol"):
                    if field not in route.hostile:
                        route.data.pop(field, None)
                        if field in shared:
                            route.data[field] = shared[field]
                        elif n == 0 and draw(st.booleans()):
                            shared[field] = route.data[field] = draw(TCP_VALID[field])
            routes.append(route)
    return routes


def check_stream(text: str, table: RouteTable, snapshot: dict[str, Endpoints],
                 resolve: bool) -> None:
    """The stream context holds exactly what the tcp routes asked for, and nothing else."""
    assert text.isascii()
    conf = parse_conf(text)
    assert set(Counter(d.name for d in conf)) <= {"resolver", "resolver_timeout", "upstream",
                                                  "geo", "map", "server", "map_hash_bucket_size",
                                                  "map_hash_max_size"}
    sized = [(d.name, d.args) for d in conf if d.name.startswith("map_hash")]
    any_sni = any(r.sni for r in table.tcp)
    assert sized == ([("map_hash_bucket_size", ("512",)), ("map_hash_max_size", ("65536",))]
                     if any_sni else [])
    upstreams = {d.args[0]: d for d in conf if d.name == "upstream"}
    wanted: dict[str, TcpRoute] = {}
    for route in table.tcp:
        endpoints = snapshot.get(route.target.lookup_name, Endpoints())
        if endpoints.addresses:
            wanted.setdefault("tcp_" + upstream_name(route.target, route.port, route.balance),
                              route)
    assert set(upstreams) - {REFUSED} == set(wanted)
    for name, route in wanted.items():
        endpoints = snapshot[route.target.lookup_name]
        body = [(d.name, d.args) for d in upstreams[name].block or ()]
        balance = [("least_conn", ())] if route.balance == "least_conn" else []
        if resolve and not endpoints.stale and not endpoints.refused:
            assert body == [("zone", (name, zone_size(len(endpoints.addresses)))), *balance,
                            ("server", (f"{route.target.lookup_name}:{route.port}", "resolve",
                                        "max_fails=1", "fail_timeout=5s"))]
        else:
            assert body[:len(balance)] == balance
            servers = [args for n, args in body[len(balance):]]
            assert all(n == "server" for n, _ in body[len(balance):])
            assert sorted((ipaddress.ip_address(a[0].rsplit(":", 1)[0].strip("[]")) for a in
                           servers), key=str) == sorted(
                (ipaddress.ip_address(a) for a in endpoints.addresses), key=str)
            assert {a[0].rsplit(":", 1)[1] for a in servers} == {str(route.port)}
    servers = [d for d in conf if d.name == "server"]
    ports = sorted({r.listen for r in table.tcp})
    assert [s.one("listen").args for s in servers] == [(f"0.0.0.0:{p}",) for p in ports]
    maps = {d.args[1]: d for d in conf if d.name == "map"}
    geos = {d.args[0]: d for d in conf if d.name == "geo"}
    for server, port in zip(servers, ports, strict=True):
        on_port = [r for r in table.tcp if r.listen == port]
        first = on_port[0]
        names = [d.name for d in server.block or ()]
        assert server.one("proxy_connect_timeout").args == (
            f"{max(1, round(first.connect_timeout * 1000))}ms",)
        assert server.one("proxy_timeout").args == (
            f"{max(1, round(first.idle_timeout * 1000))}ms",)
        assert ("proxy_protocol" in names) is first.proxy_protocol
        if first.sni is None:
            allow = first.allow or ()
            assert [d.args for d in server.children("allow")] == [(n,) for n in allow]
            assert names == ["listen", *["allow"] * len(allow), *(["deny"] if allow else []),
                             "proxy_pass", "proxy_connect_timeout", "proxy_timeout",
                             "proxy_next_upstream_tries",
                             *(["proxy_protocol"] if first.proxy_protocol else [])]
            continue
        assert server.one("proxy_pass").args == (f"$gateway_tcp_{port}",)
        assert server.one("ssl_preread").args == ("on",)
        entries = {d.name: d.args for d in (maps[f"$gateway_tcp_{port}"].block or ())
                   if d.name != "hostnames"}
        expected: dict[str, tuple[str, ...]] = {"default": (REFUSED,)}
        for k, route in enumerate(on_port):
            up = "tcp_" + upstream_name(route.target, route.port, route.balance)
            value = (up,) if up in wanted else (REFUSED,)
            if route.allow and up in wanted:
                value = (f"$gateway_tcp_{port}_{k}",)
                geo = geos[value[0]]
                assert [(d.name, d.args) for d in geo.block or ()] == [
                    ("default", (REFUSED,)), *((n, (up,)) for n in route.allow)]
            for name in route.sni or ():
                expected[name] = value
        assert entries == expected


class NginxStreamTest:
    """`nginx -t` of a stream context inside the main configuration the agent writes, with the
    stream module loaded as the agent loads it."""

    def __init__(self, prefix: Path) -> None:
        binary = require_programs("nginx")["nginx"]
        found = modules.find(binary)
        if not found.has("stream"):
            pytest.fail(f"the test nginx has no stream module: {found.detail}")
        self.binary = binary
        self.prefix = prefix
        for sub in ("conf.d", "logs", "temp/client_body", "temp/proxy", "temp/fastcgi",
                    "temp/uwsgi", "temp/scgi"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)
        (prefix / "conf.d" / "gateway.conf").write_text("")
        self.stream_conf = prefix / "conf.d" / "stream.conf"
        (prefix / "nginx.conf").write_text(render_main_conf(
            prefix=prefix, routes_conf=prefix / "conf.d" / "gateway.conf",
            worker_processes="1", modules=found.files, stream_conf=self.stream_conf))

    def check(self, text: str) -> None:
        self.stream_conf.write_text(text)
        result = subprocess.run([self.binary, "-e", "stderr", "-p", f"{self.prefix}/", "-c",
                                 str(self.prefix / "nginx.conf"), "-t", "-q"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"nginx -t refused it: {result.stderr}\n{text}"


@pytest.fixture(scope="module")
def nginx_stream(tmp_path_factory: pytest.TempPathFactory) -> NginxStreamTest:
    return NginxStreamTest(tmp_path_factory.mktemp("nginx-stream"))


@st.composite
def snapshot_of(draw: st.DrawFn, table: RouteTable) -> dict[str, Endpoints]:
    snapshot = {}
    for target in table.targets:
        if draw(st.integers(0, 3)):
            addresses = sort_addresses(str(ip) for ip in draw(st.lists(
                _CLIENT.filter(lambda ip: not (ip.is_unspecified or ip.is_multicast)),
                min_size=1, max_size=3)))
            snapshot[target.lookup_name] = Endpoints(addresses, "ok", stale=draw(st.booleans()))
    return snapshot


@settings(CHEAP, max_examples=250)
@given(tcp_file(), st.data())
def test_a_tcp_list_is_refused_naming_the_place_or_renders_only_what_it_asked(
        nginx_stream: NginxStreamTest, routes: list[Generated], data: st.DataObject) -> None:
    table = parsed([r.data for r in routes])
    if isinstance(table, RoutesError):
        for error in table.errors:
            assert "\n" not in error
            place, _, _ = error.partition(": ")
            assert place.startswith("tcp["), error
            index = int(place[4:place.index("]")])
            field = place[place.index("]") + 2:].split("[")[0].split(".")[0]
            route = routes[index]
            if field == "":  # the route as a whole: its target
                assert {"service", "host"} & route.hostile, error
            elif field == "listen" and "is also" in error:  # a plain route where others are
                # (a hostile sni made one plain, or a hostile listen moved one onto the port)
                other = routes[int(error.split("also tcp[")[1].split("]")[0])]
                assert {"sni", "listen"} & (route.hostile | other.hostile), error
            else:
                # a route a hostile listen moved onto another's port meets that port's rules,
                # and a route sharing a port disagrees with another's hostile value of a field
                others = [routes[int(x.split("]")[0])] for x in error.split("tcp[")[2:]]
                moved = any("listen" in r.hostile for r in [route, *others])
                theirs = any(field in r.hostile for r in others)
                assert field in route.hostile or moved or theirs, (error, route, others)
        return
    snapshot = data.draw(snapshot_of(table))
    resolve = data.draw(st.booleans())
    text, _ = STREAMS[resolve].render(table.tcp, snapshot)
    check_stream(text, table, snapshot, resolve)
    nginx_stream.check(text)


@pytest.mark.parametrize(("field", "value"), [
    ("sni", ("a.example.com;", )), ("sni", ("a b",)), ("sni", ("default x",)),
    ("sni", ("a.example.com$host",)), ("allow", ("10.0.0.0/8; include /etc/passwd",)),
    ("service", "db}"), ("host", "x{"), ("listen", "80; include x"),
])
def test_the_nginx_filter_refuses_a_value_past_the_model(field: str, value: object) -> None:
    """A value that reached the stream renderer without the model (a bug elsewhere) is refused
    by the same filter as the http side's, never written."""
    base: dict[str, Any] = {"listen": 9443, "sni": ("a.example.com",), "service": "db",
                            "host": None, "port": 8443, "zone": None, "balance": "round_robin",
                            "allow": ("10.0.0.0/8",), "connect_timeout": 5.0,
                            "idle_timeout": 600.0, "proxy_protocol": False}
    base[field] = value
    if field == "host":
        base["service"] = None
    route = TcpRoute.model_construct(**base)
    snapshot = {route.target.lookup_name: Endpoints(("10.0.0.1",), "ok")}
    with pytest.raises(RenderError, match="refusing to write"):
        STREAM.render((route,), snapshot)


def test_generated_refusals_are_kept(nginx_stream: NginxStreamTest) -> None:
    """Values a generator once found, checked on every run."""
    table = parsed([{"listen": 1, "sni": ["_.a", "*._"], "service": "A", "port": 1,
                     "allow": ["::/0", "0.0.0.0/0"]}])
    assert isinstance(table, RouteTable)
    text, _ = STREAM.render(table.tcp, {"tasks.A": Endpoints(("::1", "10.0.0.1"), "ok")})
    nginx_stream.check(text)


def test_a_gateway_with_a_controller_keeps_the_files_tcp_routes() -> None:
    """Routes from labels are merged with the file's http routes; tcp routes are the file's."""
    from prometheus_client import CollectorRegistry

    from agent.gateway.drivers.source import ControllerRoutes, SourceMetrics

    table = parsed([DB], routes=[{"hosts": ["a.example.com"], "service": "a", "port": 80}])
    assert isinstance(table, RouteTable)
    merged = ControllerRoutes("http://controller:9280/routes",
                              SourceMetrics(CollectorRegistry())).merge(table)
    assert (merged.routes, merged.tcp) == (table.routes, table.tcp)


def test_tcp_routes_are_no_labels() -> None:
    """docs/labels.md: tcp routes come from the routes file only."""
    from agent.controller.labels import LabelError, route_from_labels

    with pytest.raises(LabelError) as info:
        route_from_labels("svc", {"gateway.hosts": "a.example.com", "gateway.port": "80",
                                  "gateway.tcp.listen": "5432"})
    assert info.value.errors == ["service svc: label gateway.tcp.listen: not a gateway option "
                                 "(docs/labels.md lists them)"]
