"""The routes file served by the controller: its http and tcp routes in the routes document
(each zone its own), followed when the file changes, and a bad file keeping its last good routes
with its error named."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from agent.controller.app import make_app
from agent.controller.metrics import ControllerMetrics
from agent.controller.routesfile import RoutesFile
from agent.controller.sync import Controller
from agent.core.wire import parse_document
from tests.support import until
from tests.unit.controller.test_controller import DMZ, WEB, Docker, get

HTTP = [{"hosts": ["shop.example.com"], "service": "shop", "port": 80},
        {"hosts": ["www.example.com"], "service": "site", "port": 80, "zone": "dmz"}]
TCP = [{"listen": 5432, "service": "db", "port": 5432},
       {"listen": 9443, "sni": ["vault.example.com"], "service": "vault", "port": 8200,
        "zone": "dmz"}]


def write(path: Path, routes: list[dict[str, Any]], tcp: list[dict[str, Any]] = ()) -> Path:
    doc: dict[str, Any] = {"routes": list(routes)}
    if tcp:
        doc["tcp"] = list(tcp)
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Controller, Docker, Path]]:
    """A controller with a routes file, its loop and its file watch running."""
    docker = Docker()
    docker.put("shop_web", WEB)
    docker.put("dmz_app", {**DMZ, "gateway.hosts": "app.example.com"})
    path = write(tmp_path / "routes.yml", HTTP, TCP)
    c = Controller(docker.list_services, ControllerMetrics(), resync_interval=3600,
                   file_routes=RoutesFile(path))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.run(stop)),
             asyncio.create_task(c.watch_file(stop, interval=0.02))]
    await until(lambda: c.catalog.synced)
    yield c, docker, path
    stop.set()
    await asyncio.gather(*tasks)


async def test_the_document_carries_the_file_s_routes_first_and_its_tcp_routes(
        running: tuple[Controller, Docker, Path]) -> None:
    c, _, _ = running
    doc = c.catalog.document(None)
    assert [(i["source"], i["route"]["hosts"]) for i in doc["routes"]] == [
        ("routes file", ["shop.example.com"]), ("routes file", ["www.example.com"]),
        ("service shop_web", ["web.example.com"]), ("service dmz_app", ["app.example.com"])]
    assert [t["listen"] for t in doc["tcp"]] == [5432, 9443]
    # what a gateway reads of it: the same routes, the tcp routes by the file's model
    received = parse_document(doc)
    assert received.errors == ()
    assert [r.label for r in received.tcp] == [":5432", ":9443 vault.example.com"]
    assert received.tcp[1].zone == "dmz"


async def test_a_zone_gets_its_own_file_routes_and_tcp_routes_only(
        running: tuple[Controller, Docker, Path]) -> None:
    c, _, _ = running
    dmz = c.catalog.document("dmz")
    assert [(i["source"], i["route"]["hosts"]) for i in dmz["routes"]] == [
        ("routes file", ["www.example.com"]), ("service dmz_app", ["app.example.com"])]
    assert [t["listen"] for t in dmz["tcp"]] == [9443]
    assert c.catalog.document("intra")["tcp"] == []


async def test_an_edit_of_the_file_reaches_a_waiting_gateway_without_docker(
        running: tuple[Controller, Docker, Path]) -> None:
    """A bind-mounted file edited in place: the long-poll answers with the new routes though
    Docker does not answer meanwhile (nothing is listed again)."""
    c, docker, path = running
    async with TestClient(TestServer(make_app(c))) as client:
        _, first, _ = await get(client)
        assert first is not None
        dmz_version = c.catalog.document("dmz")["version"]
        docker.failing = True
        waiting = asyncio.create_task(get(client, f"?version={first['version']}&wait=20"))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        write(path, [*HTTP, {"hosts": ["new.example.com"], "service": "new", "port": 80}],
              [*TCP, {"listen": 2222, "service": "git", "port": 22}])
        status, body, _ = await asyncio.wait_for(waiting, 5)
        assert status == 200
        assert body is not None
        assert ["new.example.com"] in [i["route"]["hosts"] for i in body["routes"]]
        assert [t["listen"] for t in body["tcp"]] == [5432, 9443, 2222]
        # routes of no zone: the dmz document is the same, and a dmz gateway is not woken
        assert c.catalog.document("dmz")["version"] == dmz_version


async def test_a_bad_file_keeps_its_last_good_routes_and_says_where(
        running: tuple[Controller, Docker, Path]) -> None:
    c, _, path = running
    before = c.catalog.document(None)
    path.write_text("routes:\n  - {hosts: [ok.example.com], service: ok, port: 80}\n"
                    "  - {hosts: ['a b'], service: x, port: 80}\n")
    await until(lambda: c.catalog.document(None)["errors"] != before["errors"])
    doc = c.catalog.document(None)
    assert doc["routes"] == before["routes"]
    assert doc["tcp"] == before["tcp"]
    (error,) = doc["errors"]
    assert error.startswith(f"routes file {path}: routes[1].hosts[0]: 'a b'")
    assert error.endswith("its last good routes (4) are served")
    assert c.status()["errors"] == [error]
    # a zone's document says that it is refused, not what it says (it may name other zones)
    (dmz_error,) = c.catalog.document("dmz")["errors"]
    assert "a b" not in dmz_error
    assert "refused by the controller" in dmz_error
    # put right: served, the error gone
    write(path, HTTP[:1])
    await until(lambda: not c.catalog.document(None)["errors"])
    assert [i["route"]["hosts"] for i in c.catalog.document(None)["routes"]][:1] == [
        ["shop.example.com"]]
    assert c.catalog.document(None)["tcp"] == []


async def test_a_missing_file_at_start_serves_none_of_it_and_says_so(tmp_path: Path) -> None:
    docker = Docker()
    docker.put("shop_web", WEB)
    c = Controller(docker.list_services, ControllerMetrics(),
                   file_routes=RoutesFile(tmp_path / "routes.yml"))
    await c.sync()
    doc = c.catalog.document(None)
    assert [i["source"] for i in doc["routes"]] == ["service shop_web"]
    (error,) = doc["errors"]
    assert "cannot read" in error
    assert error.endswith("none of its routes are served")


def test_the_controller_reads_its_file_again_keeping_the_unchanged_routes(
        tmp_path: Path) -> None:
    """As the gateway does: a changed file makes only its changed routes (core/routes.py)."""
    a = {"hosts": ["a.example"], "service": "a", "port": 80}
    b = {"hosts": ["b.example"], "service": "b", "port": 80}
    path = write(tmp_path / "routes.yaml", [a, b])
    given = RoutesFile(path)
    assert given.refresh()
    before = given.table.routes
    write(path, [a, {**b, "port": 81}])
    assert given.refresh()
    assert given.table.routes[0] is before[0]
    assert given.table.routes[1].port == 81
