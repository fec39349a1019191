"""The dashboard's server side: the page's files, and what /status adds for it (the history of
status lines, per-route request counts, the VRRP state, each route's source)."""

from __future__ import annotations

import fnmatch
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent.core.routes import parse_routes
from agent.core.vrrp import vrrp_status
from agent.gateway.drivers.nginx import Nginx
from agent.gateway.model import Change, Note, Outcome
from agent.gateway.observe.admin import make_app
from agent.gateway.observe.metrics import Metrics
from agent.gateway.observe.state import HISTORY, State, words
from agent.gateway.observe.traffic import Traffic
from agent.gateway.settings import GatewaySettings as Settings
from agent.keepalived.notify import record_transition
from tests.unit.gateway.test_settings import parse

ROUTES = parse_routes({"routes": [
    {"hosts": ["managerhttp"], "service": "managerhttp", "port": 8888},
    {"hosts": ["api.example.com"], "path": "/v1", "service": "api", "port": 8888},
]})


# -- the history of outcomes, and their words --------------------------------------------------

A = Change(endpoints=(("tasks.a", 1, 0),))
B = Change(endpoints=(("tasks.b", 1, 0),))
REFUSED_FILE = Note("routes_file", ("routes[0].port: required field is missing",))


def lines(state: State) -> list[str]:
    return [words(outcome) for _, outcome in state.history]


def test_history_keeps_what_happened_once_and_only_the_last_ones() -> None:
    state = State()
    state.record(Outcome("started"), at=1.0)
    for _ in range(3):
        state.record(Outcome("no_change"), at=2.0)
        state.record(Outcome("pending", wait=1.3), at=2.5)
    state.record(Outcome("reloaded", A), at=3.0)
    state.record(Outcome("reloaded", A), at=4.0)  # another reload: kept
    state.record(Outcome("refused", B, error="nginx -t said: boom"), at=5.0)
    state.record(Outcome("retry_pending", wait=3.9), at=5.5)
    state.record(Outcome("retry_pending", wait=2.9), at=6.0)
    state.record(Outcome("failed", error="disk full"), at=7.0)
    state.record(Outcome("failed", error="disk full"), at=8.0)  # the same failure again: once
    assert lines(state) == [
        "started", "reloaded: +1 endpoints for tasks.a", "reloaded: +1 endpoints for tasks.a",
        "reload refused (+1 endpoints for tasks.b): nginx -t said: boom",
        "cycle failed: disk full"]
    assert state.status == "cycle failed: disk full"
    assert [at for at, _ in state.history] == [1.0, 3.0, 4.0, 5.0, 7.0]


def test_history_shows_a_refusal_that_came_with_no_change() -> None:
    state = State()
    state.record(Outcome("reloaded", A))
    state.record(Outcome("no_change", notes=(REFUSED_FILE,)))
    state.record(Outcome("no_change", notes=(REFUSED_FILE,)))
    state.record(Outcome("no_change"))  # fixed
    state.record(Outcome("no_change"))
    assert lines(state) == [
        "reloaded: +1 endpoints for tasks.a",
        "no change; routes file refused: routes[0].port: required field is missing",
        "no change"]


def test_history_is_bounded() -> None:
    state = State()
    for i in range(HISTORY + 5):
        state.record(Outcome("reloaded", Change(routes=(i, i + 1))))
    assert len(state.history) == HISTORY
    assert lines(state)[0] == "reloaded: routes 5 -> 6"
    assert lines(state)[-1] == f"reloaded: routes {HISTORY + 4} -> {HISTORY + 5}"


@pytest.mark.parametrize(("outcome", "line"), [
    (Outcome("started", saved=("tasks.a", "tasks.b")),
     "started with saved endpoints for tasks.a, tasks.b"),
    (Outcome("followed", Change(endpoints=(("tasks.a", 2, 1), ("tasks.b", 0, 3)))),
     "followed without reload: +2 -1 endpoints for tasks.a, -3 endpoints for tasks.b"),
    (Outcome("reloaded", Change(routes=(3, 4), tcp=(0, 1))),
     "reloaded: routes 3 -> 4, tcp routes 0 -> 1"),
    (Outcome("reloaded"), "reloaded: configuration changed"),
    (Outcome("pending", wait=0.04), "change pending: applying in 0.0s"),
    (Outcome("no_change", notes=(
        Note("tcp_port", ("5432: bind() failed", "6379: bind() failed")),
        Note("certificate", ("a.example.com", "b.example.com")),
        Note("password_file", ("x.htpasswd: not found", "y.htpasswd: plain text")),
        Note("error_page", ("sorry.html: too large",)))),
     "no change; tcp port refused: 5432: bind() failed, 6379: bind() failed; certificate "
     "refused for a.example.com, b.example.com; password file refused: x.htpasswd: not found; "
     "y.htpasswd: plain text; error page refused: sorry.html: too large"),
])
def test_outcomes_in_words(outcome: Outcome, line: str) -> None:
    """What the log and /status say of an outcome (the words made in one place only)."""
    assert words(outcome) == line


# -- per-route request counts ------------------------------------------------------------------

def test_traffic_totals_count_requests_by_class_and_are_none_while_off() -> None:
    traffic = Traffic()
    assert traffic.totals() is None
    traffic.follow(lambda: ROUTES)
    header = b"g1|"
    # ROUTE|STATUS|REQUEST_TIME|UPSTREAM_RESPONSE_TIME|UPSTREAM_STATUS|UPSTREAM_HEADER_TIME|..
    for fields in ("200|0.001|0.001|200|0.001", "200|0.001|0.001|200|0.001",
                   "503|0.000|-|-|-", "502|0.001|0.001|502|-", "504|1.0|1.0|504|-"):
        traffic.feed(header + f"/gateway-route/managerhttp|{fields}|10|10".encode())
    totals = traffic.totals()
    assert totals is not None
    assert totals["managerhttp/"] == {"1xx": 0, "2xx": 2, "3xx": 0, "4xx": 0, "5xx": 3,
                                      "upstream_errors": 2,
                                      # per latency bucket: the page's p95 (4 <= 1 ms, 1 <= 1 s)
                                      "duration": [4, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0,
                                                   0]}
    assert totals["api.example.com/v1"]["2xx"] == 0
    assert set(totals) == {"managerhttp/", "api.example.com/v1", "unrouted"}


# -- the VRRP state -----------------------------------------------------------------------------

def test_vrrp_state_is_read_from_the_notify_hooks_textfile(tmp_path: Path) -> None:
    assert vrrp_status(None) is None
    textfile = tmp_path / "keepalived.prom"
    assert vrrp_status(textfile)["error"].startswith("no file yet")  # type: ignore[index]
    record_transition(textfile, "INSTANCE", "gateway_vip", "BACKUP", "100", now=1000.0)
    record_transition(textfile, "INSTANCE", "gateway_vip", "MASTER", "150", now=2000.0)
    record_transition(textfile, "GROUP", "gateways", "MASTER", "0", now=2000.0)
    doc = vrrp_status(textfile)
    assert doc is not None
    assert doc["error"] is None
    assert doc["instances"] == [
        {"kind": "group", "name": "gateways", "state": "MASTER", "priority": 0.0,
         "last_transition_at": 2000.0, "transitions": {"MASTER": 1.0}},
        {"kind": "instance", "name": "gateway_vip", "state": "MASTER", "priority": 150.0,
         "last_transition_at": 2000.0, "transitions": {"BACKUP": 1.0, "MASTER": 1.0}}]


def test_vrrp_state_from_a_file_that_is_not_the_hooks(tmp_path: Path) -> None:
    textfile = tmp_path / "keepalived.prom"
    textfile.write_text("this is { not an exposition\n")
    doc = vrrp_status(textfile)
    assert doc is not None
    assert doc["instances"] == []
    assert doc["error"].startswith("not a textfile the notify hook wrote")


# -- the admin server ---------------------------------------------------------------------------

async def client_for(state: State, settings: Settings, metrics: Metrics | None = None,
                     ) -> TestClient[Any, Any]:
    app = make_app(state, Nginx(settings), metrics or Metrics(), settings)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_the_page_and_its_files_are_served_with_a_strict_policy(tmp_path: Path) -> None:
    client = await client_for(State(), Settings(nginx_prefix=tmp_path))
    try:
        root = await client.get("/", allow_redirects=False)
        assert root.status == 302
        assert root.headers["Location"] == "/dashboard/"
        page = await client.get("/dashboard/")
        assert page.status == 200
        assert page.content_type == "text/html"
        body = await page.text()
        assert '<script src="dashboard.js"' in body
        policy = page.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy
        assert "script-src 'self'" in policy
        assert "connect-src 'self'" in policy
        script = await client.get("/dashboard/dashboard.js")
        assert script.content_type == "text/javascript"
        assert "innerHTML" not in await script.text()  # every value goes in as text
        assert (await client.get("/dashboard/dashboard.css")).content_type == "text/css"
        assert (await client.get("/dashboard/nothing.js")).status == 404
    finally:
        await client.close()


async def test_status_has_what_the_page_shows(tmp_path: Path) -> None:
    textfile = tmp_path / "keepalived.prom"
    record_transition(textfile, "INSTANCE", "gateway_vip", "MASTER", "150", now=2000.0)
    state = State(routes=ROUTES)
    state.record(Outcome("started"), at=1.0)
    state.record(Outcome("reloaded", Change(endpoints=(("tasks.api", 1, 0),))), at=2.0)
    metrics = Metrics()
    metrics.traffic.follow(lambda: state.routes)
    settings = Settings(nginx_prefix=tmp_path, vrrp_state_file=textfile)
    client = await client_for(state, settings, metrics)
    try:
        doc = json.loads(await (await client.get("/status")).text())
    finally:
        await client.close()
    assert [(r["label"], r["source"]) for r in doc["routes"]] == [
        ("managerhttp/", "routes file"), ("api.example.com/v1", "routes file")]
    assert doc["history"] == [{"at": 2.0, "status": "reloaded: +1 endpoints for tasks.api"},
                              {"at": 1.0, "status": "started"}]  # newest first
    assert doc["traffic"]["routes"]["managerhttp/"]["2xx"] == 0
    assert doc["vrrp"]["instances"][0]["state"] == "MASTER"
    assert doc["discovery_age"] is None  # DNS has not answered yet


async def test_status_without_traffic_metrics_or_vrrp_file(tmp_path: Path) -> None:
    client = await client_for(State(routes=ROUTES), Settings(nginx_prefix=tmp_path))
    try:
        doc = json.loads(await (await client.get("/status")).text())
    finally:
        await client.close()
    assert doc["traffic"] is None
    assert doc["vrrp"] is None


async def test_metrics_are_sent_a_family_at_a_time_whole_and_compressed_on_request(
        tmp_path: Path) -> None:
    """/metrics goes out in parts (chunked: at 10,000 routes it is 36 MB, never built whole);
    what arrives is exposition(), plain or gzip-compressed, and `name[]` keeps its families
    only."""
    import gzip

    from prometheus_client.parser import text_string_to_metric_families

    def family_names(text: bytes) -> list[str]:
        return [f.name for f in text_string_to_metric_families(text.decode())]

    state = State(routes=ROUTES)
    metrics = Metrics()
    metrics.traffic.follow(lambda: state.routes)
    client = await client_for(state, Settings(nginx_prefix=tmp_path), metrics)
    try:
        plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
        assert plain.headers.get("Transfer-Encoding") == "chunked"
        assert plain.content_type == "text/plain"
        body = await plain.read()
        # the per-route families as exposition() writes them, after the registry's (whose
        # process figures move between two calls)
        routes_part = metrics.traffic.http_text().encode()
        assert body.endswith(routes_part)
        assert body.startswith(b"# HELP ")
        assert family_names(body) == family_names(metrics.exposition())
        packed = await client.get("/metrics", headers={"Accept-Encoding": "gzip"},
                                  auto_decompress=False)
        assert packed.headers.get("Content-Encoding") == "gzip"
        unpacked = gzip.decompress(await packed.read())
        assert unpacked.endswith(routes_part)
        assert family_names(unpacked) == family_names(metrics.exposition())
        some = await client.get("/metrics", params={"name[]": "gateway_upstream_retries_total"})
        text = await some.text()
        assert 'gateway_upstream_retries_total{route="managerhttp/"} 0.0' in text
        assert "gateway_http_requests_total" not in text
    finally:
        await client.close()


async def test_a_head_of_metrics_sends_no_body_and_the_connection_serves_on(
        tmp_path: Path) -> None:
    """HEAD /metrics answers headers only: a streamed body sent for it would reach the client
    unframed, as the start of its next answer on the same connection."""
    import asyncio

    client = await client_for(State(routes=ROUTES), Settings(nginx_prefix=tmp_path))
    try:
        assert client.server.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        writer.write(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        answers = (await asyncio.wait_for(reader.read(), 5)).decode()
        writer.close()
    finally:
        await client.close()
    head, rest = answers.split("\r\n\r\n", 1)
    assert head.startswith("HTTP/1.1 200"), head
    assert rest.startswith("HTTP/1.1 200"), rest[:80]  # the next answer, nothing between


def test_every_file_of_the_page_is_package_data() -> None:
    """The wheel carries what [tool.setuptools.package-data] names: every file of the page."""
    root = Path(__file__).resolve().parents[3]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["agent.core"]
    files = sorted(p.relative_to(root / "agent" / "core").as_posix()
                   for p in (root / "agent" / "core" / "static").iterdir())
    assert files == ["static/dashboard.css", "static/dashboard.html", "static/dashboard.js"]
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


def test_the_vrrp_state_file_is_a_setting_with_its_variable() -> None:
    assert parse([]).vrrp_state_file is None
    env = {"GATEWAY_VRRP_STATE_FILE": "/var/lib/prometheus/node-exporter/keepalived.prom"}
    assert parse([], env).vrrp_state_file == Path(env["GATEWAY_VRRP_STATE_FILE"])
    assert parse(["--vrrp-state-file", "/x.prom"], env).vrrp_state_file == Path("/x.prom")


def test_tcp_lines_count_per_route_by_port_and_tls_name() -> None:
    from agent.core.routes import RouteTable
    from agent.core.tcp import parse_tcp

    tcp, errors = parse_tcp([
        {"listen": 5432, "service": "db", "port": 5432},
        {"listen": 9443, "sni": ["db.example.com", "*.example.com"], "service": "web",
         "port": 8443},
        {"listen": 9443, "sni": ["*.a.example.com"], "service": "a", "port": 8443}])
    assert errors == []
    table = RouteTable(ROUTES.routes, tcp=tcp)
    traffic = Traffic()
    traffic.follow(lambda: table)
    for line in (b"t1|5432||200|12.5|100|20|10.0.1.7:5432|0.001",
                 b"t1|9443|db.example.com|200|0.5|7|9|10.0.1.8:8443|0.000",
                 b"t1|9443|x.example.com|200|0.5|1|1|10.0.1.8:8443|0.000",
                 b"t1|9443|b.a.example.com|200|0.5|1|1|10.0.1.9:8443|0.000",  # the longest
                 b"t1|9443|other.org|502|0.0|0|0|-|-",
                 b"t1|9443|x|200|nan|0|0|-|-", b"t1|1234||200|1|1|1|-|-"):
        traffic.feed(line)
    status = traffic.status()
    assert status is not None
    assert status["tcp"][":5432"] == {"connections": 1, "failed": 0, "bytes_in": 20,
                                      "bytes_out": 100}
    assert status["tcp"][":9443 db.example.com,*.example.com"]["connections"] == 2
    assert status["tcp"][":9443 *.a.example.com"]["connections"] == 1
    assert status["tcp"][":9443 refused"]["failed"] == 1
    assert traffic.results == {"ok": 5, "malformed": 1, "unknown_route": 1}
