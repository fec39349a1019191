"""The controller's HTTP side and the gateway's long-poll client, against a real aiohttp server.

Docker is replaced by a list of services the test changes (tests/integration/test_labels.py runs
the real `gateway-agent controller` with the docker SDK against a fake Docker API).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from agent.controller.acme import AcmeManager
from agent.controller.acme_client import issued_from_pem
from agent.controller.app import make_app
from agent.controller.labels import Service
from agent.controller.metrics import ControllerMetrics
from agent.controller.routesfile import RoutesFile
from agent.controller.sync import Controller
from agent.core.routes import parse_routes
from agent.gateway.drivers.source import ControllerRoutes, SourceMetrics
from tests.support import until
from tests.support.tlsca import TestCA
from tests.unit.controller.test_acme import Clock, FakeClient

WEB = {"gateway.hosts": "web.example.com", "gateway.port": "8080"}
DMZ = {"gateway.hosts": "www.example.com", "gateway.port": "80", "gateway.zone": "dmz"}


class Docker:
    """The services the controller lists; `failing` makes the list raise as the SDK would."""

    def __init__(self) -> None:
        self.services: dict[str, Service] = {}
        self.running: set[str] = set()  # services with a running task
        self.failing = False
        self.clock = 0

    def put(self, name: str, labels: dict[str, str]) -> None:
        self.clock += 1
        created = self.services[name].created if name in self.services else \
            f"2024-01-01T00:00:{self.clock:02d}Z"
        self.services[name] = Service(name, id=name, created=created, labels=labels)

    async def list_services(self) -> list[Service]:
        if self.failing:
            raise ConnectionError("Error while fetching server API version")
        return list(self.services.values())

    async def list_running(self, ids: list[str]) -> set[str]:
        return self.running & set(ids)


@pytest.fixture
def docker() -> Docker:
    return Docker()


@pytest.fixture
async def controller(docker: Docker) -> AsyncIterator[Controller]:
    c = Controller(docker.list_services, ControllerMetrics(), resync_interval=3600)
    stop = asyncio.Event()
    task = asyncio.create_task(c.run(stop))
    yield c
    stop.set()
    await task


async def changed(c: Controller) -> None:
    """Tell the controller something changed (as a Docker event does) and let it list."""
    def syncs() -> float:
        return sum(c.metrics.registry.get_sample_value(
            "gateway_controller_syncs_total", {"result": r}) or 0.0 for r in ("ok", "error"))

    before = syncs()
    c.event("update")
    await until(lambda: syncs() > before)


@pytest.fixture
async def client(controller: Controller) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(make_app(controller))) as c:
        yield c


async def get(client: TestClient[Any, Any], query: str = "", **headers: str,
              ) -> tuple[int, dict[str, Any] | None, str | None]:
    resp = await client.get("/routes" + query, headers=headers)
    body = await resp.json() if resp.status in (200, 503) else None
    return resp.status, body, resp.headers.get("ETag")


def samples(text: str) -> dict[str, float]:
    return {s.name + (json.dumps(s.labels, sort_keys=True) if s.labels else ""): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


async def test_nothing_is_served_before_docker_answered(docker: Docker) -> None:
    docker.failing = True
    c = Controller(docker.list_services, ControllerMetrics())
    await c.sync()
    async with TestClient(TestServer(make_app(c))) as client:
        status, body, _ = await get(client)
        assert status == 503
        assert body is not None
        assert "not synchronised" in body["error"]
        assert (await client.get("/readyz")).status == 503


async def test_routes_with_a_version_and_the_errors_of_bad_labels(
        docker: Docker, controller: Controller, client: TestClient[Any, Any]) -> None:
    docker.put("shop_web", WEB)
    docker.put("shop_bad", {**WEB, "gateway.hosts": "bad.example.com", "gateway.port": "http"})
    docker.put("shop_thief", WEB)  # the same host, later: refused, shop_web keeps it
    await changed(controller)
    status, body, etag = await get(client)
    assert status == 200
    assert body is not None
    assert [item["source"] for item in body["routes"]] == ["service shop_web"]
    assert body["routes"][0]["route"]["hosts"] == ["web.example.com"]
    assert body["errors"] == [
        "service shop_bad: label gateway.port: 'http': Input should be a valid integer",
        "service shop_thief: not routed: 'web.example.com' with path '/' is already routed by "
        "service shop_web"]
    assert etag == f'"{body["version"]}"'
    metrics = samples(await (await client.get("/metrics")).text())
    assert metrics["gateway_controller_routes"] == 1
    assert metrics["gateway_controller_label_errors"] == 2
    assert metrics["gateway_controller_services"] == 3
    assert metrics["gateway_controller_docker_up"] == 1
    status_doc = await (await client.get("/status")).json()
    assert status_doc["routes"][0]["source"] == "service shop_web"
    assert status_doc["errors"] == body["errors"]


async def test_a_long_poll_answers_when_the_routes_change(
        docker: Docker, controller: Controller, client: TestClient[Any, Any]) -> None:
    docker.put("shop_web", WEB)
    await changed(controller)
    _, first, _ = await get(client)
    assert first is not None
    waiting = asyncio.create_task(get(client, f"?version={first['version']}&wait=20"))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # nothing changed: it waits
    assert samples(await (await client.get("/metrics")).text())[
        "gateway_controller_waiting_requests"] == 1
    docker.put("shop_api", {"gateway.hosts": "api.example.com", "gateway.port": "80"})
    started = time.monotonic()
    await changed(controller)
    status, body, _ = await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - started < 2  # at once; generous for a loaded machine
    assert status == 200
    assert body is not None
    assert body["version"] != first["version"]
    assert len(body["routes"]) == 2
    # an event that changes nothing served (a scale, an image update) wakes nobody
    waiting = asyncio.create_task(get(client, f"?version={body['version']}&wait=0.5"))
    docker.put("other", {"owner": "me"})
    await changed(controller)
    status, _, etag = await waiting
    assert (status, etag) == (304, f'"{body["version"]}"')


async def test_if_none_match_and_bad_parameters(
        docker: Docker, controller: Controller, client: TestClient[Any, Any]) -> None:
    docker.put("shop_web", WEB)
    await changed(controller)
    _, _, etag = await get(client)
    assert etag is not None
    assert (await get(client, "?wait=0.1", **{"If-None-Match": etag}))[0] == 304
    assert (await get(client, "?wait=0.1", **{"If-None-Match": '"other"'}))[0] == 200
    for query in ("?wait=soon", "?wait=-1", "?wait=nan", "?zone=DMZ;"):
        assert (await client.get("/routes" + query)).status == 400, query


async def test_a_zone_gets_its_own_routes_and_is_not_woken_by_others(
        docker: Docker, controller: Controller, client: TestClient[Any, Any]) -> None:
    docker.put("shop_web", WEB)
    docker.put("dmz_www", DMZ)
    docker.put("dmz_bad", {**DMZ, "gateway.hosts": "x.example.com", "gateway.balance": "?"})
    await changed(controller)
    _, dmz, _ = await get(client, "?zone=dmz")
    assert dmz is not None
    assert [i["source"] for i in dmz["routes"]] == ["service dmz_www"]
    assert [e.split(":")[0] for e in dmz["errors"]] == ["service dmz_bad"]
    waiting = asyncio.create_task(get(client, f"?zone=dmz&version={dmz['version']}&wait=0.5"))
    docker.put("shop_api", {"gateway.hosts": "api.example.com", "gateway.port": "80"})
    await changed(controller)
    assert (await waiting)[0] == 304


async def test_docker_gone_keeps_the_last_routes(
        docker: Docker, controller: Controller, client: TestClient[Any, Any]) -> None:
    docker.put("shop_web", WEB)
    controller.event("connected")
    await changed(controller)
    assert (await client.get("/readyz")).status == 200
    docker.failing = True
    await changed(controller)
    status, body, _ = await get(client)
    assert status == 200
    assert body is not None
    assert len(body["routes"]) == 1
    readyz = await client.get("/readyz")
    assert readyz.status == 503
    assert "Docker does not answer: ConnectionError" in await readyz.text()
    metrics = samples(await (await client.get("/metrics")).text())
    assert metrics["gateway_controller_docker_up"] == 0
    assert metrics['gateway_controller_syncs_total{"result": "error"}'] >= 1


async def test_a_new_service_is_served_once_its_first_task_runs(docker: Docker) -> None:
    """So that a gateway reloads once, with the task, rather than rendering a 503 first and the
    task only after its next allowed reload."""
    docker.put("shop_web", WEB)  # there before the controller: served at once
    c = Controller(docker.list_services, ControllerMetrics(), resync_interval=3600,
                   list_running=docker.list_running, new_service_wait=30)
    stop = asyncio.Event()
    task = asyncio.create_task(c.run(stop))
    try:
        await until(lambda: c.catalog.synced)
        assert [i["source"] for i in c.catalog.document(None)["routes"]] == ["service shop_web"]
        docker.put("shop_api", {"gateway.hosts": "api.example.com", "gateway.port": "80"})
        await changed(c)
        assert c.status()["held_for_tasks"].keys() == {"shop_api"}
        assert len(c.catalog.document(None)["routes"]) == 1
        docker.running.add("shop_api")
        await until(lambda: len(c.catalog.document(None)["routes"]) == 2, within=2)
        assert c.status()["held_for_tasks"] == {}
        # labels added to a service that runs already: served at once
        docker.running.add("shop_old")
        docker.put("shop_old", {"gateway.hosts": "old.example.com", "gateway.port": "80"})
        await changed(c)
        assert len(c.catalog.document(None)["routes"]) == 3
        # a service whose task never comes is served after the wait (and answers 503)
        c.new_service_wait = 0.3
        docker.put("shop_never", {"gateway.hosts": "never.example.com", "gateway.port": "80"})
        await changed(c)
        assert len(c.catalog.document(None)["routes"]) == 3
        await until(lambda: len(c.catalog.document(None)["routes"]) == 4, within=3)
    finally:
        stop.set()
        await task


# -- the gateway's side: ControllerRoutes against the controller over real HTTP ----------------


class Served:
    """The controller on a real TCP port (aiohttp's TestServer), which the test can stop."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.server = TestServer(make_app(controller))

    @property
    def url(self) -> str:
        return str(self.server.make_url("/routes"))


@pytest.fixture
async def served(controller: Controller) -> AsyncIterator[Served]:
    s = Served(controller)
    await s.server.start_server()
    yield s
    await s.server.close()


@contextlib.contextmanager
def routes_client(url: str, state_dir: Path | None = None, zone: str | None = None,
                  wait: float = 20.0) -> Iterator[tuple[ControllerRoutes, list[float],
                                                        CollectorRegistry]]:
    registry = CollectorRegistry()
    changes: list[float] = []
    source = ControllerRoutes(url, SourceMetrics(registry), zone=zone, wait=wait,
                              state_dir=state_dir,
                              on_change=lambda: changes.append(time.monotonic()))
    yield source, changes, registry


FILE = parse_routes({"routes": [
    {"hosts": ["www.example.com"], "service": "site", "port": 80},
    {"hosts": ["static.example.com"], "service": "static", "port": 80}]})


async def test_the_gateway_learns_of_a_change_at_once_and_merges_the_file_first(
        docker: Docker, served: Served, tmp_path: Path) -> None:
    docker.put("shop_web", WEB)
    await changed(served.controller)
    with routes_client(served.url, state_dir=tmp_path) as (source, changes, registry):
        await source.start(within=3)
        try:
            assert [r.service for r in source.merge(FILE).routes] == ["site", "static",
                                                                       "shop_web"]
            # a labelled service claiming a host of the file: refused, the file's route stays
            docker.put("shop_www", {**WEB, "gateway.hosts": "www.example.com"})
            await asyncio.sleep(0.2)  # the client is waiting in a long-poll now
            started = time.monotonic()
            await changed(served.controller)
            await until(lambda: len(changes) == 2)
            assert changes[1] - started < 2  # it took milliseconds; generous bound
            table = source.merge(FILE)
            assert [r.service for r in table.routes] == ["site", "static", "shop_web"]
            assert source.status()["conflicts"] == [
                "service shop_www: not routed: 'www.example.com' belongs to the routes file, "
                "every path under it included"]
            assert registry.get_sample_value("gateway_routes_conflicts") == 1
            assert registry.get_sample_value("gateway_routes_source_up") == 1
            assert registry.get_sample_value("gateway_routes_source_fetches_total",
                                             {"result": "changed"}) == 2
        finally:
            await source.close()


async def test_the_controller_gone_the_gateway_keeps_and_saves_its_routes(
        docker: Docker, controller: Controller, tmp_path: Path) -> None:
    docker.put("shop_web", WEB)
    await changed(controller)
    served = Served(controller)
    await served.server.start_server()
    url = served.url
    with routes_client(url, state_dir=tmp_path, wait=1) as (source, _, registry):
        await source.start(within=3)
        try:
            await served.server.close()  # the controller is gone
            await until(lambda: source.last_error is not None, within=10)
            assert [r.service for r in source.merge(FILE).routes] == ["site", "static",
                                                                       "shop_web"]
            status = source.status()
            assert status["reachable"] is False
            assert status["last_error"].startswith("ClientConnectorError")
            assert registry.get_sample_value("gateway_routes_source_up") == 0
        finally:
            await source.close()
    saved = json.loads((tmp_path / "controller-routes.json").read_text())
    assert saved["url"] == url
    # a gateway restarted while the controller is away starts with the saved routes
    with routes_client(url, state_dir=tmp_path) as (restarted, changes, _):
        await restarted.start(within=1)
        try:
            assert restarted.from_saved
            assert changes
            assert [r.service for r in restarted.merge(FILE).routes] == ["site", "static",
                                                                          "shop_web"]
        finally:
            await restarted.close()
    # ... but not the routes another controller (or zone) sent
    with routes_client(url, state_dir=tmp_path, zone="dmz") as (other, _, _):
        other.load_saved()
        assert other.received is None


async def test_a_zone_asks_for_its_routes_only(docker: Docker, served: Served) -> None:
    docker.put("shop_web", WEB)
    docker.put("dmz_www", DMZ)
    await changed(served.controller)
    with routes_client(served.url, zone="dmz") as (source, _, _):
        async with aiohttp.ClientSession() as session:
            assert await source.fetch(session, wait=0)
        assert [s for s, _ in (source.received.routes if source.received else ())] == [
            "service dmz_www"]


# -- the token, and ACME ---------------------------------------------------------------------

TOKEN = "0123456789abcdef0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ACME_WEB = {**WEB, "gateway.tls": "acme"}
ACME_DMZ = {**DMZ, "gateway.tls": "acme"}


async def test_a_zone_token_gets_that_zone_s_routes_and_nothing_else(docker: Docker) -> None:
    """The dmz gateways hold a token of their own: a dmz node taken over cannot read the
    routes (nor the ACME keys) of the other zones, nor force renewals."""
    docker.put("shop_web", WEB)
    docker.put("dmz_www", DMZ)
    dmz_token = "fedcba9876543210fedcba9876543210"
    dmz = {"Authorization": f"Bearer {dmz_token}"}
    c = Controller(docker.list_services, ControllerMetrics(), token=TOKEN,
                   zone_tokens=(("dmz", dmz_token),))
    await c.sync()
    async with TestClient(TestServer(make_app(c))) as client:
        status, body, _ = await get(client, "?zone=dmz", **dmz)
        assert status == 200
        assert body is not None
        assert [i["source"] for i in body["routes"]] == ["service dmz_www"]
        for query in ("", "?zone=intra", "?zone=dmz&zone=intra", "?zone=intra&zone=dmz",
                      "?zone=DMZ"):
            assert (await get(client, query, **dmz))[0] == 401, query
        assert (await client.post("/acme/renew", headers=dmz)).status == 401
        # what an intruder on a dmz node asks next: the controller's status and metrics
        for path in ("/status", "/status?zone=intra", "/status?zone=dmz&zone=intra",
                     "/metrics", "/metrics?zone=dmz"):
            resp = await client.get(path, headers=dmz)
            assert resp.status == 401, path
            assert "shop" not in await resp.text()
        # its own zone's status: the dmz route and nothing of the others
        resp = await client.get("/status?zone=dmz", headers=dmz)
        assert resp.status == 200
        text = await resp.text()
        assert [r["service"] for r in json.loads(text)["routes"]] == ["dmz_www"]
        assert "shop" not in text
        assert "web.example.com" not in text
        # the token of every zone still gets every zone
        assert (await get(client, "?zone=dmz", **AUTH))[0] == 200
        assert (await get(client, "", **AUTH))[0] == 200
        resp = await client.get("/status", headers=AUTH)
        assert [r["service"] for r in (await resp.json())["routes"]] == ["shop_web", "dmz_www"]


async def test_routes_need_the_token_when_one_is_set(docker: Docker) -> None:
    docker.put("shop_web", WEB)
    c = Controller(docker.list_services, ControllerMetrics(), token=TOKEN)
    await c.sync()
    async with TestClient(TestServer(make_app(c))) as client:
        for wrong in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN},
                      {"Authorization": f"Bearer {TOKEN}0"}, {"Authorization": f"Basic {TOKEN}"}):
            resp = await client.get("/routes", headers=wrong)
            assert resp.status == 401, wrong
            assert resp.headers["WWW-Authenticate"] == "Bearer"
            assert "routes" not in await resp.text()
        status, body, _ = await get(client, **AUTH)
        assert status == 200
        assert body is not None
        assert [i["source"] for i in body["routes"]] == ["service shop_web"]
        # with a token, /status, /metrics and /readyz need it too: they name every zone's
        # hosts, services and errors
        for path in ("/status", "/metrics", "/readyz"):
            resp = await client.get(path)
            assert resp.status == 401, path
            assert "shop" not in await resp.text()
            # (/readyz: 503 here, no event stream is followed; answered, not refused)
            assert (await client.get(path, headers=AUTH)).status == (503 if path == "/readyz"
                                                                     else 200)
        # what the stack's healthcheck and the ACME server ask needs no token
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/.well-known/acme-challenge/abc")).status == 404
        metrics = samples(await (await client.get("/metrics", headers=AUTH)).text())
        assert metrics["gateway_controller_unauthorized_requests_total"] == 8
        # renewing needs the token too; without ACME there is nothing to renew
        assert (await client.post("/acme/renew")).status == 401
        assert (await client.post("/acme/renew", headers=AUTH)).status == 404


@contextlib.asynccontextmanager
async def acme_controller(docker: Docker, tmp_path: Path,
                          ) -> AsyncIterator[tuple[Controller, FakeClient, TestClient[Any, Any]]]:
    """A controller with ACME on, its client replaced by controller/test_acme.py's fake."""
    metrics = ControllerMetrics()
    fake = FakeClient(TestCA(), Clock())
    manager = AcmeManager(fake, tmp_path, metrics.registry,  # type: ignore[arg-type]
                          renew_before=30 * 86400, retry_min=300, clock=fake.clock)
    c = Controller(docker.list_services, metrics, token=TOKEN, acme=manager)
    await c.sync()
    async with TestClient(TestServer(make_app(c))) as client:
        yield c, fake, client


async def test_the_controller_answers_the_acme_challenges_it_has(docker: Docker,
                                                                tmp_path: Path) -> None:
    docker.put("shop_web", ACME_WEB)
    async with acme_controller(docker, tmp_path) as (_, fake, client):
        fake.challenges["LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"] = "LoqX.key-auth"
        resp = await client.get("/.well-known/acme-challenge/"
                                "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0")
        assert resp.status == 200
        assert await resp.text() == "LoqX.key-auth"
        assert resp.content_type == "application/octet-stream"
        assert (await client.get("/.well-known/acme-challenge/other")).status == 404
        fake.challenges.clear()  # the order is over
        assert (await client.get("/.well-known/acme-challenge/"
                                 "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0")).status == 404


async def test_renew_on_request(docker: Docker, tmp_path: Path) -> None:
    docker.put("shop_web", ACME_WEB)
    docker.put("dmz_www", ACME_DMZ)
    docker.put("shop_plain", {**WEB, "gateway.hosts": "plain.example.com"})
    async with acme_controller(docker, tmp_path) as (_, _, client):
        resp = await client.post("/acme/renew?host=plain.example.com", headers=AUTH)
        assert resp.status == 404
        resp = await client.post("/acme/renew?host=web.example.com&host=x.example.com",
                                 headers=AUTH)
        assert (resp.status, await resp.json()) == (202, {"renewing": ["web.example.com"]})
        resp = await client.post("/acme/renew", headers=AUTH)
        assert (resp.status, await resp.json()) == (
            202, {"renewing": ["web.example.com", "www.example.com"]})


async def test_a_new_certificate_reaches_the_waiting_gateways_of_its_zone(
        docker: Docker, tmp_path: Path) -> None:
    docker.put("shop_web", ACME_WEB)
    docker.put("dmz_www", ACME_DMZ)
    async with acme_controller(docker, tmp_path) as (c, _, client):
        _, everything, _ = await get(client, **AUTH)
        _, dmz, _ = await get(client, "?zone=dmz", **AUTH)
        assert everything is not None
        assert dmz is not None
        assert (everything["certificates"], dmz["certificates"]) == ([], [])
        waiting = asyncio.create_task(get(client, f"?version={everything['version']}&wait=10",
                                          **AUTH))
        waiting_dmz = asyncio.create_task(get(client, f"?zone=dmz&version={dmz['version']}"
                                                      "&wait=0.5", **AUTH))
        await asyncio.sleep(0.2)
        assert c.acme is not None
        assert await c.acme.order("web.example.com")
        status, body, _ = await asyncio.wait_for(waiting, 5)
        assert status == 200
        assert body is not None
        (cert,) = body["certificates"]
        assert cert["host"] == "web.example.com"
        assert issued_from_pem("web.example.com", cert["chain"], cert["key"])
        assert (await waiting_dmz)[0] == 304  # not a certificate of its zone
        status_doc = await (await client.get("/status", headers=AUTH)).json()
        assert status_doc["acme"]["hosts"]["web.example.com"]["certificate"] is True
        assert cert["key"] not in json.dumps(status_doc)


async def test_a_gateway_of_one_zone_does_not_make_the_hosts_of_another_orderable(
        docker: Docker, tmp_path: Path) -> None:
    docker.put("shop_web", {**ACME_WEB, "gateway.zone": "intra"})
    docker.put("dmz_www", ACME_DMZ)
    async with acme_controller(docker, tmp_path) as (_, _, client):
        assert (await get(client, "?zone=dmz", **AUTH))[0] == 200
        hosts = (await (await client.get("/status", headers=AUTH)).json())["acme"]["hosts"]
        assert hosts["www.example.com"]["next_order"] != "when a gateway has the route"
        assert hosts["web.example.com"]["next_order"] == "when a gateway has the route"


async def test_a_label_route_the_gateways_refuse_gets_no_certificate(docker: Docker,
                                                                    tmp_path: Path) -> None:
    """The routes file serves shop.example.com with a certificate of its own; a label asks for
    ACME on the same host: the gateways refuse the label route (another `tls`), so ordering a
    certificate for it would fail validation for ever."""
    routes_file = tmp_path / "routes.yml"
    routes_file.write_text("routes:\n  - {hosts: [web.example.com], service: web, port: 80, "
                           "tls: true}\n")
    docker.put("shop_web", {**ACME_WEB, "gateway.path": "/api"})
    docker.put("dmz_www", ACME_DMZ)
    async with acme_controller(docker, tmp_path) as (c, _, _):
        c.file_routes = RoutesFile(routes_file)
        await c.sync()  # lists the services, reads the file, tells ACME what is wanted
        assert c.acme is not None
        assert sorted(c.acme.wanted) == ["www.example.com"]


async def test_the_controller_refuses_a_label_under_a_routes_file_name_and_says_why(
        docker: Docker, tmp_path: Path) -> None:
    """With the routes file (--routes), the controller refuses a label route on one of its
    names, any path, and reports it in its own /status, as the gateways do in theirs."""
    docker.put("shop_web", WEB)
    docker.put("shop_login", {**WEB, "gateway.hosts": "www.example.com",
                              "gateway.path": "/login"})
    routes_file = tmp_path / "routes.yml"
    routes_file.write_text(json.dumps({"routes": [r.model_dump(exclude_none=True)
                                                  for r in FILE.routes]}))
    c = Controller(docker.list_services, ControllerMetrics(), file_routes=RoutesFile(routes_file))
    await c.sync()
    async with TestClient(TestServer(make_app(c))) as client:
        status, body, _ = await get(client)
        assert status == 200
        assert body is not None
        # the file's own routes first: the gateways without a routes file serve them
        assert [i["source"] for i in body["routes"]] == ["routes file", "routes file",
                                                         "service shop_web"]
        error = ("service shop_login: not routed: 'www.example.com' belongs to the routes "
                 "file, every path under it included")
        assert body["errors"] == [error]
        status_doc = await (await client.get("/status")).json()
        assert status_doc["errors"] == [error]
        metrics = samples(await (await client.get("/metrics")).text())
        assert metrics["gateway_controller_label_errors"] == 1
