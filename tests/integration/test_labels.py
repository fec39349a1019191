"""Routes from service labels through the real programs, without Docker: `gateway-agent
controller` reads a fake Docker API with the docker SDK, and a gateway (`gateway-agent run
--routes-url`, real nginx and dnsmasq) routes what it serves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import TASK_ADDRESSES, write_routes
from tests.support import wait_until
from tests.support.controller import ControllerProcess
from tests.support.fakedocker import FakeDocker
from tests.support.gateway import Agent, Dnsmasq, Upstream

T1, T2, T3 = TASK_ADDRESSES[:3]
StartAgent = Callable[..., Agent]


@pytest.fixture
def controller(tmp_path: Path, docker: FakeDocker) -> Iterator[ControllerProcess]:
    c = ControllerProcess(tmp_path, docker)
    yield c
    c.stop()


def labels(hosts: str, port: int, **options: str) -> dict[str, str]:
    return {"gateway.hosts": hosts, "gateway.port": str(port),
            **{f"gateway.{k}": v for k, v in options.items()}}


def test_labelled_services_become_routes_and_survive_the_controller(
        tmp_path: Path, dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        docker: FakeDocker, controller: ControllerProcess, start_agent: StartAgent) -> None:
    dns.set("tasks.managerhttp", [T1])
    dns.set("tasks.shop_web", [T2])
    dns.set("tasks.shop_api", [T3])
    docker.create("shop_web", labels("web.example.com", upstream_port))
    controller.start()
    state = tmp_path / "state"
    file_routes = [{"hosts": ["managerhttp"], "service": "managerhttp", "port": upstream_port}]
    agent = start_agent(file_routes, "--routes-url", controller.url, "--state-dir", str(state))
    assert agent.backends_seen("web.example.com", 3) == {"task2"}
    assert agent.backends_seen("managerhttp", 3) == {"task1"}

    # a new labelled service: routable without touching the gateway
    started = time.monotonic()
    docker.create("shop_api", labels("api.example.com", upstream_port, path="/v1"))
    wait_until(lambda: agent.get("api.example.com", "/v1/x")[1] == "task3", 10,
               "the new service's route to answer")
    print(f"label route answering {time.monotonic() - started:.2f} s after the service event")
    assert agent.get("api.example.com", "/v2")[0] == 404  # only its path

    # its labels change: the route follows
    docker.update("shop_api", labels("api2.example.com", upstream_port))
    wait_until(lambda: agent.get("api2.example.com")[1] == "task3", 10, "the renamed route")
    # (an old nginx worker may still take a connection for a moment after a reload)
    wait_until(lambda: agent.get("api.example.com", "/v1/x")[0] == 404, 5, "the old name to go")

    # a service claiming a host of the routes file, and one with broken labels: both refused,
    # with errors naming them; everything else keeps working
    docker.create("shop_thief", labels("managerhttp", upstream_port))
    docker.create("shop_broken", labels("broken.example.com", upstream_port,
                                        websocket="yes please"))
    wait_until(lambda: len(agent.status()["routes_source"]["errors"]) == 1 and
               len(agent.status()["routes_source"]["conflicts"]) == 1, 10,
               "the gateway to report both")
    source = agent.status()["routes_source"]
    assert source["errors"] == ["service shop_broken: label gateway.websocket: 'yes please': "
                                "Input should be a valid boolean"]
    assert source["conflicts"] == ["service shop_thief: not routed: 'managerhttp' belongs to "
                                   "the routes file, every path under it included"]
    assert agent.backends_seen("managerhttp", 3) == {"task1"}
    assert agent.backends_seen("web.example.com", 3) == {"task2"}
    assert agent.get("broken.example.com")[0] == 404
    assert controller.status()["errors"] == source["errors"]
    metrics = agent.metrics()
    assert metrics["gateway_routes_conflicts"] == 1
    assert metrics["gateway_routes_source_errors"] == 1

    # removed: its route goes
    docker.remove("shop_api")
    wait_until(lambda: agent.get("api2.example.com")[0] == 404, 10, "the route to go")

    # the controller stops: the gateway keeps serving what it had
    controller.stop()
    wait_until(lambda: agent.status()["routes_source"]["reachable"] is False, 10,
               "the gateway to notice")
    assert agent.backends_seen("web.example.com", 3) == {"task2"}
    assert agent.admin("/readyz")[0] == 200  # still ready: keepalived keeps its VIP here
    assert agent.metrics()["gateway_routes_source_up"] == 0

    # ... and a gateway restarted meanwhile starts with the routes it saved
    agent.stop()
    again = start_agent(file_routes, "--routes-url", controller.url, "--state-dir", str(state))
    assert again.backends_seen("web.example.com", 3) == {"task2"}
    assert again.status()["routes_source"]["from_saved_state"] is True


def test_the_controller_follows_events_after_docker_restarts(
        docker: FakeDocker, controller: ControllerProcess) -> None:
    controller.start()
    assert controller.status()["services"] == 0
    docker.drop_event_streams()  # dockerd restarting: the stream ends
    wait_until(lambda: "not following" in controller.get("/readyz")[1] or
               docker.listeners == 1, 5, "the controller to notice")
    # while it reconnects, a service appears: the new stream's first full list finds it
    docker.create("late", labels("late.example.com", 80))
    wait_until(lambda: controller.status()["services"] == 1, 10, "the controller to list again")
    wait_until(lambda: controller.get("/readyz")[0] == 200, 10, "the event stream again")
    docker.set_failing(True)
    docker.create("unseen", labels("unseen.example.com", 80))
    wait_until(lambda: controller.get("/readyz")[0] == 503, 10, "readyz to say Docker fails")
    assert [r["service"] for r in controller.status()["routes"]] == ["late"]
    docker.set_failing(False)
    wait_until(lambda: len(controller.status()["routes"]) == 2, 15, "the controller to recover")


def test_a_label_cannot_take_a_path_under_a_routes_file_host(
        tmp_path: Path, dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        docker: FakeDocker, start_agent: StartAgent) -> None:
    """`gateway.hosts=bank.example.com` with `gateway.path=/login`: a path under a name of the
    routes file. The file's names belong to the file, every path under them: the label route is
    refused, by the controller and by the gateway, and /login stays the file's."""
    dns.set("tasks.bank", [T1])
    dns.set("tasks.thief", [T2])
    dns.set("tasks.shop", [T3])
    file_routes = [{"hosts": ["bank.example.com", "*.corp.example.com"], "service": "bank",
                    "port": upstream_port}]
    (tmp_path / "controller").mkdir()
    routes_file = write_routes(tmp_path / "controller" / "routes.yml", file_routes)
    controller = ControllerProcess(tmp_path / "controller", docker, ["--routes", str(routes_file)])
    controller.start()
    try:
        agent = start_agent(file_routes, "--routes-url", controller.url)
        docker.create("thief", labels("bank.example.com", upstream_port, path="/login"))
        docker.create("thief_corp", labels("x.corp.example.com", upstream_port))
        docker.create("shop", labels("shop.example.com", upstream_port))
        # the last change is served: the gateway has the routes document of all three
        wait_until(lambda: agent.get("shop.example.com")[1] == "task3", 10,
                   "the fair label route to answer")
        assert controller.status()["services"] == 3
        assert agent.status()["routes_source"]["version"] == controller.status()["routes_version"]
        assert agent.get("bank.example.com", "/login") == (200, "task1")
        assert agent.get("bank.example.com", "/login/x") == (200, "task1")
        assert agent.get("x.corp.example.com") == (200, "task1")
        assert agent.backends_seen("bank.example.com", 3) == {"task1"}
        errors = [
            "service thief: not routed: 'bank.example.com' belongs to the routes file, every "
            "path under it included",
            "service thief_corp: not routed: 'x.corp.example.com' is under "
            "'*.corp.example.com', which belongs to the routes file"]
        assert sorted(controller.status()["errors"]) == errors
        assert sorted(agent.status()["routes_source"]["errors"]) == errors
        assert [s["source"] for s in agent.status()["routes_source"]["served"]] == [
            "routes file", "service shop"]
    finally:
        controller.stop()
