"""Merging the routes file with the controller's routes, and checking what the controller sends."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from agent.core.merge import merge
from agent.core.routes import Route, parse_routes
from agent.core.tcp import TcpRoute
from agent.core.wire import MAX_DOCUMENT, parse_document, route_item, tcp_item
from agent.gateway.drivers.source import FILE_SOURCE, ControllerRoutes, SourceMetrics
from tests.support.tlsca import TestCA


def route(hosts: list[str], service: str = "svc", **extra: Any) -> Route:
    (r,) = parse_routes({"routes": [{"hosts": hosts, "service": service, "port": 80,
                                     **extra}]}).routes
    return r


def test_a_host_and_path_claimed_twice_refuses_the_later_route_only() -> None:
    merged = merge([
        (FILE_SOURCE, route(["shop.example.com", "www.example.com"], "shop")),
        ("service a_api", route(["api.example.com"], "a_api")),
        ("service b_thief", route(["other.example.com", "www.example.com"], "b_thief")),
        ("service c_api2", route(["api.example.com"], "c_api2", path="/v2")),  # another path
    ])
    assert merged.sources == (FILE_SOURCE, "service a_api", "service c_api2")
    assert [r.service for r in merged.table.routes] == ["shop", "a_api", "c_api2"]
    # refused whole: its other host is not served either, so it cannot half-work unnoticed
    assert merged.errors == ("service b_thief: not routed: 'www.example.com' belongs to the "
                             "routes file, every path under it included",)
    assert [r.service for r in merged.refused] == ["b_thief"]


def test_the_routes_file_s_names_belong_to_the_file_with_every_path_under_them() -> None:
    merged = merge([
        (FILE_SOURCE, route(["bank.example.com", "*.corp.example.com"], "bank")),
        ("service login", route(["bank.example.com"], "thief", path="/login")),
        ("service corp", route(["x.corp.example.com"], "thief")),
        ("service deep", route(["*.a.corp.example.com"], "thief", path="/a")),
        ("service wide", route(["*.example.com"], "wide")),  # nginx prefers the file's names
        ("service other", route(["corp.example.com"], "other")),  # not under *.corp...
    ])
    assert [r.service for r in merged.table.routes] == ["bank", "wide", "other"]
    assert merged.errors == (
        "service login: not routed: 'bank.example.com' belongs to the routes file, every path "
        "under it included",
        "service corp: not routed: 'x.corp.example.com' is under '*.corp.example.com', which "
        "belongs to the routes file",
        "service deep: not routed: '*.a.corp.example.com' is under '*.corp.example.com', "
        "which belongs to the routes file")
    # routes of the file itself are held to the file's own rules (agent.core.routes), not these
    merged = merge([(FILE_SOURCE, route(["bank.example.com"], "bank")),
                    (FILE_SOURCE, route(["bank.example.com"], "bank_login", path="/login"))])
    assert [r.service for r in merged.table.routes] == ["bank", "bank_login"]


def test_every_conflict_of_a_route_is_named() -> None:
    merged = merge([
        ("service one", route(["a.example.com"], "one")),
        ("service two", route(["b.example.com"], "two", tls=True)),
        ("service three", route(["a.example.com", "b.example.com"], "three", path="/x")),
    ])
    assert merged.errors == ("service three: not routed: 'b.example.com' is also routed by "
                             "service two with a different 'tls'",)
    merged = merge([
        ("service one", route(["a.example.com"], "one")),
        ("service two", route(["b.example.com"], "two")),
        ("service three", route(["b.example.com", "a.example.com"], "three")),
    ])
    assert merged.errors == ("service three: not routed: 'b.example.com' with path '/' is "
                             "already routed by service two; 'a.example.com' with path '/' is "
                             "already routed by service one",)


def test_nothing_to_merge() -> None:
    merged = merge([])
    assert (merged.table.routes, merged.errors) == ((), ())


def doc(*items: dict[str, Any], errors: list[Any] | None = None) -> dict[str, Any]:
    return {"version": "v1", "routes": list(items), "errors": errors or []}


def test_routes_from_the_controller_are_validated_again_one_by_one() -> None:
    good = route(["a.example.com"], "good")
    received = parse_document(doc(
        route_item("service good", good),
        {"source": "service evil", "route": {"hosts": ["a;b"], "service": "evil", "port": 80}},
        {"source": "service nested", "route": {"hosts": ["b.example.com"], "service": "x",
                                               "port": 80, "extra": "field"}},
        {"source": "service \n injected", "route": None},
        errors=["service broken: label gateway.port: 'x'", 42, "new\nline"]))
    assert received.version == "v1"
    assert received.routes == (("service good", good),)
    assert received.errors == (
        "service broken: label gateway.port: 'x'",
        "new\\nline",
        "service evil: refused by the gateway: route.hosts[0]: 'a;b' is not a valid host name "
        "(letters, digits, '-', '_', dots; a wildcard only as a leading '*.'); route.hosts: "
        "['a;b']: Tuple should have at least 1 item after validation, not 0",
        "service nested: refused by the gateway: route.extra: unknown field",
        "controller routes[3]: refused by the gateway: route: Input should be a valid dictionary "
        "or instance of Route",
    )


def test_a_route_survives_the_trip_through_json_unchanged() -> None:
    r = route(["a.example.com", "*.b.example.com"], "svc", path="/api", zone="dmz",
              balance="ip_hash", connect_timeout="250ms", read_timeout="1h",
              max_body_size="0", websocket=True, tls={"certificate": "a.crt", "hsts": True})
    assert parse_document(doc(route_item("service svc", r))).routes == (("service svc", r),)


@pytest.mark.parametrize("bad", [
    [], "text", {"routes": []}, {"version": 3, "routes": []}, {"version": "x\ny", "routes": []},
    {"version": "v", "routes": {}}, {"version": "v", "routes": [], "errors": "none"}])
def test_a_document_that_is_not_one_is_refused_whole(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"'version'|'routes'|JSON object"):
        parse_document(bad)


# -- ACME certificates in the controller's document ------------------------------------------


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


def cert_item(ca: TestCA, host: str) -> dict[str, str]:
    issued = ca.issue(host)
    return {"host": host, "chain": issued.chain_pem.decode(), "key": issued.key_pem.decode()}


def test_certificates_from_the_controller_are_kept_sorted_by_host(ca: TestCA) -> None:
    a, b = cert_item(ca, "a.example.com"), cert_item(ca, "b.example.com")
    received = parse_document({**doc(), "certificates": [b, a]})
    assert [c.host for c in received.certificates] == ["a.example.com", "b.example.com"]
    assert (received.certificates[0].chain, received.certificates[0].key) == (a["chain"],
                                                                              a["key"])
    assert a["key"] not in repr(received)  # a Received that is logged shows no private key
    # a controller without ACME sends no certificates at all
    assert parse_document(doc()).certificates == ()


PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_a_wildcard_host_s_certificate_is_taken(ca: TestCA) -> None:
    """DNS-01 gives wildcard certificates (*.shop.example.com.crt: a file name, no path)."""
    item = cert_item(ca, "*.shop.example.com")
    received = parse_document({**doc(), "certificates": [item]})
    assert [c.host for c in received.certificates] == ["*.shop.example.com"]
    assert received.errors == ()


@pytest.mark.parametrize("bad", [
    {"host": "a.*.example.com"},
    {"host": "*"},
    {"host": "*/x.example.com"},
    {"host": "a/b.example.com"},
    {"host": "../etc/passwd"},
    {"host": "a..b.example.com"},
    {"host": ".."},
    {"host": ""},
    {"host": 42},
    {"host": "x" * 64 + ".example.com"},
    {"chain": "not a certificate"},
    {"key": "not a key"},
    {"key": None},
    {"chain": PEM + "A" * (64 * 1024)},
    {"chain": PEM.replace("MIIB", "MIIB\u00e9")},
    "bad.example.com",
])
def test_a_bad_certificate_is_refused_alone(ca: TestCA, bad: dict[str, object] | str) -> None:
    good = cert_item(ca, "good.example.com")
    item = {**cert_item(ca, "bad.example.com"), **bad} if isinstance(bad, dict) else bad
    kept = route(["good.example.com"], "good", tls="acme")
    received = parse_document({**doc(route_item("service good", kept)),
                               "certificates": [good, item]})
    assert received.routes == (("service good", kept),)
    assert [c.host for c in received.certificates] == ["good.example.com"]


def test_a_host_sent_twice_keeps_its_first_certificate(ca: TestCA) -> None:
    first, second = cert_item(ca, "a.example.com"), cert_item(ca, "a.example.com")
    received = parse_document({**doc(), "certificates": [first, second]})
    assert [c.chain for c in received.certificates] == [first["chain"]]


def test_a_refused_certificate_is_reported(ca: TestCA) -> None:
    received = parse_document({**doc(), "certificates": [
        cert_item(ca, "good.example.com"), {**cert_item(ca, "a.example.com"), "host": "a.*.x"},
        {**cert_item(ca, "b.example.com"), "key": "nonsense"}]})
    assert received.errors == (
        "controller certificates[1]: refused by the gateway: the host is not a host name, or "
        "comes twice",
        "controller certificates[2] (b.example.com): refused by the gateway: 'chain' and 'key' "
        "must be PEM text")


@pytest.mark.parametrize("bad", [{}, "a.example.com", None, 3])
def test_certificates_that_are_not_a_list_refuse_the_document(bad: object) -> None:
    with pytest.raises(ValueError, match="'certificates' must be a list"):
        parse_document({**doc(), "certificates": bad})


TOKEN = "0123456789abcdef0123456789abcdef"


class FakeController:
    """Serves `document` at /routes to those who show the token, as agent.controller.app does."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = doc()
        self.server = TestServer(self.app())

    def app(self) -> web.Application:
        async def routes(request: web.Request) -> web.Response:
            if request.headers.get("Authorization") != f"Bearer {TOKEN}":
                return web.Response(status=401, text="a token is needed\n")
            return web.json_response(self.document)

        app = web.Application()
        app.router.add_get("/routes", routes)
        return app

    @property
    def url(self) -> str:
        return str(self.server.make_url("/routes"))


@pytest.fixture
async def controller() -> AsyncIterator[FakeController]:
    c = FakeController()
    await c.server.start_server()
    yield c
    await c.server.close()


def gateway(url: str, tmp_path: Path, acme_dir: str = "acme",
            token: str = TOKEN) -> ControllerRoutes:
    return ControllerRoutes(url, SourceMetrics(CollectorRegistry()), state_dir=tmp_path / "state",
                            token=token, acme_dir=tmp_path / acme_dir)


async def fetch(source: ControllerRoutes) -> bool:
    async with aiohttp.ClientSession() as session:
        return await source.fetch(session, wait=0)


async def test_certificates_received_are_written_where_tls_reads_them(
        controller: FakeController, tmp_path: Path, ca: TestCA) -> None:
    a, b = cert_item(ca, "a.example.com"), cert_item(ca, "b.example.com")
    controller.document = {**doc(), "certificates": [a, b]}
    source = gateway(controller.url, tmp_path)
    assert await fetch(source)
    acme = tmp_path / "acme"
    assert sorted(p.name for p in acme.iterdir()) == [
        "a.example.com.crt", "a.example.com.key", "b.example.com.crt", "b.example.com.key"]
    assert (acme / "a.example.com.crt").read_text() == a["chain"]
    assert (acme / "a.example.com.key").read_text() == a["key"]
    assert (acme / "b.example.com.key").stat().st_mode & 0o777 == 0o600
    assert acme.stat().st_mode & 0o077 == 0
    kept = (acme / "a.example.com.crt").stat(), (acme / "a.example.com.key").stat()
    # c new, a unchanged: a's files are left alone; b no longer sent (a controller with ACME
    # off, or that lost its volume): kept while it is valid, HTTPS must not go with it
    c = cert_item(ca, "c.example.com")
    controller.document = {**doc(), "version": "v2", "certificates": [a, c]}
    assert await fetch(source)
    assert sorted(p.name for p in acme.iterdir()) == [
        "a.example.com.crt", "a.example.com.key", "b.example.com.crt", "b.example.com.key",
        "c.example.com.crt", "c.example.com.key"]
    for before, path in zip(kept, ("a.example.com.crt", "a.example.com.key"), strict=True):
        after = (acme / path).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert source.status()["certificates"] == ["a.example.com", "b.example.com",
                                               "c.example.com"]
    # the document without certificates at all (ACME off): every one kept
    controller.document = {**doc(), "version": "v3"}
    assert await fetch(source)
    assert len(list(acme.iterdir())) == 6
    # once expired, a certificate no longer sent goes
    source.clock = lambda: time.time() + 400 * 86400
    controller.document = {**doc(), "version": "v4", "certificates": [a]}
    assert await fetch(source)
    assert sorted(p.name for p in acme.iterdir()) == ["a.example.com.crt", "a.example.com.key"]


async def test_a_document_past_the_bound_is_refused_however_it_is_sent(tmp_path: Path) -> None:
    """A peer may send a valid document behind any amount of whitespace, with or without a
    Content-Length: the gateway reads MAX_DOCUMENT bytes and refuses it, keeping its routes."""
    item = route_item("service a", route(["a.example.com"], "a"))
    body = json.dumps(doc(item)).encode()

    async def padded(request: web.Request) -> web.StreamResponse:
        pad = b" " * (MAX_DOCUMENT + 1 - len(body) + int(request.query.get("short", "0")))
        if "chunked" not in request.query:
            return web.Response(body=pad + body, content_type="application/json")
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(pad), 1024 * 1024):
            await response.write(pad[start:start + 1024 * 1024])
        await response.write(body)
        return response

    app = web.Application()
    app.router.add_get("/routes", padded)
    async with TestServer(app) as server:
        for query in ("", "?chunked=1"):
            source = gateway(str(server.make_url("/routes" + query)), tmp_path, token=TOKEN)
            assert not await fetch(source), query
            assert source.status()["last_error"] == (
                "TooLarge: the routes document is larger than 32 MiB"), query
        # one byte less: the same document is taken
        source = gateway(str(server.make_url("/routes?short=-1")), tmp_path)
        assert await fetch(source)
        assert [r.service for r in source.merge(parse_routes({"routes": []})).routes] == ["a"]


async def test_without_the_token_nothing_is_received(controller: FakeController,
                                                     tmp_path: Path, ca: TestCA) -> None:
    controller.document = {**doc(), "certificates": [cert_item(ca, "a.example.com")]}
    source = gateway(controller.url, tmp_path, token="wrong-token-0123456789")
    assert not await fetch(source)
    assert source.status()["last_error"] == "ValueError: HTTP 401: a token is needed"
    assert not (tmp_path / "acme").exists()


async def test_the_saved_state_keeps_the_certificates_private(
        controller: FakeController, tmp_path: Path, ca: TestCA) -> None:
    a = cert_item(ca, "a.example.com")
    kept = route(["a.example.com"], "a", tls="acme")
    controller.document = {**doc(route_item("service a", kept)), "certificates": [a]}
    assert await fetch(gateway(controller.url, tmp_path))
    saved = tmp_path / "state" / "controller-routes.json"
    assert saved.stat().st_mode & 0o777 == 0o600
    assert json.loads(saved.read_text())["document"]["certificates"] == [a]
    # a gateway restarted while the controller is away serves what it had
    restarted = gateway(controller.url, tmp_path, acme_dir="acme-restarted")
    await controller.server.close()
    restarted.load_saved()
    assert restarted.from_saved
    assert restarted.received is not None
    assert restarted.received.routes == (("service a", kept),)
    assert [(c.host, c.chain, c.key) for c in restarted.received.certificates] == [
        ("a.example.com", a["chain"], a["key"])]
    assert (tmp_path / "acme-restarted" / "a.example.com.key").read_text() == a["key"]


# -- the routes file through the controller: its http and tcp routes -------------------------


def tcp_route(listen: int, **extra: Any) -> TcpRoute:
    (r,) = parse_routes({"tcp": [{"listen": listen, "service": "db", "port": 5432,
                                  **extra}]}).tcp
    return r


def test_tcp_routes_survive_the_trip_through_json_unchanged() -> None:
    routes = [tcp_route(5432, allow=["10.0.0.0/8"], balance="least_conn", idle_timeout="1h",
                        proxy_protocol=True, zone="dmz"),
              tcp_route(9443, sni=["a.example.com", "*.b.example.com"], connect_timeout="2s")]
    received = parse_document({**doc(), "tcp": [tcp_item(r) for r in routes]})
    assert received.tcp == tuple(routes)
    assert received.errors == ()


@pytest.mark.parametrize(("item", "error"), [
    ({"listen": 5432, "service": "db", "port": 5432, "allow": ["10.0.0.0/8;"]},
     "allow[0]: '10.0.0.0/8;'"),
    ({"listen": 9443, "sni": ["a.example.com;\n}"], "service": "db", "port": 1},
     "sni[0]: 'a.example.com;\\n}'"),
    ({"listen": 9443, "sni": ["default"], "service": "db", "port": 1}, "sni[0]: 'default'"),
    ({"listen": 70000, "service": "db", "port": 1}, "listen: 70000"),
    ({"listen": 2222, "service": "db } server {", "port": 1}, "service: 'db } server {'"),
    ({"listen": 2222, "service": "db", "port": 1, "include": "/etc/passwd"},
     "include: unknown field"),
    ("listen 22", "(top level): Input should be a valid dictionary"),
])
def test_a_hostile_tcp_route_is_refused_alone_at_its_place(item: Any, error: str) -> None:
    good = tcp_route(5432)
    received = parse_document({**doc(), "tcp": [tcp_item(good), item]})
    assert received.tcp == (good,)
    (said,) = received.errors
    assert said.startswith(f"controller tcp[1]: refused by the gateway: {error}"), said


def test_tcp_routes_that_conflict_keep_the_first_and_name_both() -> None:
    items = [tcp_item(tcp_route(5432)), {"listen": 5432, "service": "x", "port": 1},
             tcp_item(tcp_route(9443, sni=["a.example.com"])),
             tcp_item(tcp_route(9443, sni=["a.example.com"]))]
    received = parse_document({**doc(), "tcp": ["bad", *items]})
    assert [(r.listen, r.service) for r in received.tcp] == [(5432, "db"), (9443, "db")]
    assert received.errors[1:] == (
        "controller tcp: refused by the gateway: tcp[2].listen: port 5432 is also tcp[1]'s; "
        "tcp[1] has no 'sni' and takes every connection to it: a port is one plain route, or "
        "shared by routes that each give their 'sni'",
        "controller tcp: refused by the gateway: tcp[4].sni[0]: 'a.example.com' on port 9443 "
        "is already tcp[3]'s")


def test_tcp_that_is_not_a_list_refuses_the_document() -> None:
    with pytest.raises(ValueError, match="'tcp' must be a list"):
        parse_document({**doc(), "tcp": {"listen": 22}})


FILE_DOC = {**doc(route_item(FILE_SOURCE, route(["shop.example.com"], "shop")),
                  route_item(FILE_SOURCE, route(["www.example.com"], "site", zone="dmz")),
                  route_item("service blog", route(["blog.example.com"], "blog"))),
            "tcp": [tcp_item(tcp_route(5432)), tcp_item(tcp_route(9180))]}


def received_source(document: dict[str, Any]) -> ControllerRoutes:
    source = ControllerRoutes("http://controller/routes", SourceMetrics(CollectorRegistry()),
                              reserved={9180: "the agent's admin port (--admin-listen)"})
    source._use(parse_document(document), saved=False)
    return source


def test_a_gateway_without_a_file_serves_the_controller_s_copy_of_it() -> None:
    source = received_source(FILE_DOC)
    table = source.merge(None)
    assert [r.hosts for r in table.routes] == [("shop.example.com",), ("www.example.com",),
                                               ("blog.example.com",)]
    assert source.merged.sources == (FILE_SOURCE, FILE_SOURCE, "service blog")
    assert [r.listen for r in table.tcp] == [5432]
    status = source.status()
    assert status["file_routes"] == "controller"
    assert status["errors"] == ["routes file (from the controller) tcp :9180: not served here: "
                                "port 9180 is the agent's admin port (--admin-listen)"]
    assert [s["source"] for s in status["served"]] == [FILE_SOURCE, FILE_SOURCE, "service blog"]
    assert table.for_zone("dmz").routes == (table.routes[1],)


def test_a_gateway_with_its_own_file_takes_only_the_labels_from_the_controller() -> None:
    source = received_source(FILE_DOC)
    own = parse_routes({"routes": [{"hosts": ["own.example.com"], "service": "own",
                                    "port": 80}],
                        "tcp": [{"listen": 2222, "service": "git", "port": 22}]})
    table = source.merge(own)
    assert [r.hosts for r in table.routes] == [("own.example.com",), ("blog.example.com",)]
    assert table.tcp == own.tcp
    assert source.status()["file_routes"] == "own"
    assert source.status()["errors"] == []
