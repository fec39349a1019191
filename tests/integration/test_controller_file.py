"""The routes file served by the controller: a gateway with no routes file of its own follows
the controller's, a change of it is a reload there (never a restart), and the gateway keeps
serving while the controller is away. Real programs: `gateway-agent controller` reading a fake
Docker API, `gateway-agent run` with the real nginx and dnsmasq, kept-alive clients on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import TASK_ADDRESSES, write_routes
from tests.integration.test_lossless import load
from tests.support import free_port, wait_until
from tests.support.controller import ControllerProcess
from tests.support.fakedocker import FakeDocker
from tests.support.gateway import Agent, Dnsmasq, Upstream
from tests.support.tcp import EchoTask, Refused, exchange

T1, T2, T3 = TASK_ADDRESSES[:3]
RELOADS = 'gateway_reloads_total{result="success"}'


@pytest.fixture
def controller_on(tmp_path: Path, docker: FakeDocker) -> Iterator[Callable[..., ControllerProcess]]:
    """A controller reading `routes` (and `tcp`) from its own routes file, as
    stacks/controller.yml mounts the routes config; stopped at the end."""
    started: list[ControllerProcess] = []
    workdir = tmp_path / "controller"
    workdir.mkdir()

    def start(routes: list[dict[str, Any]], tcp: list[dict[str, Any]] = ()) -> ControllerProcess:
        path = write_routes(workdir / "routes.yml", routes, tcp)
        c = ControllerProcess(workdir, docker, ["--routes", str(path)])
        started.append(c)
        c.start()
        return c

    yield start
    for c in started:
        c.stop()


@pytest.fixture
def fileless_agent(tmp_path: Path, dns: Dnsmasq) -> Iterator[Callable[..., Agent]]:
    """A gateway as stacks/gateway.yml runs it: --routes names a file that is not there (the
    image's GATEWAY_ROUTES, with no config mounted), routes from the controller."""
    agents: list[Agent] = []

    def start(url: str, wait_ready: bool = True) -> Agent:
        workdir = tmp_path / f"agent{len(agents)}"
        workdir.mkdir()
        agent = Agent(workdir, workdir / "routes.yml", dns.nameserver,
                      extra=["--poll-interval", "0.5", "--routes-url", url,
                             "--reload-min-interval", "0", "--state-dir",
                             str(workdir / "state")])
        agents.append(agent)
        agent.start(wait_ready)
        return agent

    yield start
    for agent in agents:
        agent.stop()


def shop(port: int) -> dict[str, Any]:
    return {"hosts": ["shop"], "service": "shop", "port": port}


def served_by_the_same_processes(agent: Agent, nginx_pid: int) -> bool:
    """The agent never exited, and nginx's master is the one it started."""
    assert agent.proc is not None
    assert agent.proc.poll() is None, agent.log_tail()
    return bool(agent.status()["nginx"]["pid"] == nginx_pid)


def test_routes_added_to_the_controller_s_file_are_served_without_a_restart(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        controller_on: Callable[..., ControllerProcess], fileless_agent: Callable[..., Agent],
        ) -> None:
    dns.set("tasks.shop", [T1, T2])
    dns.set("tasks.blog", [T3])
    dns.set("tasks.db", ["127.0.13.7"])
    db_port = free_port("127.0.13.7")
    db = EchoTask("db", "127.0.13.7", db_port)
    controller = controller_on([shop(upstream_port)])
    agent = fileless_agent(controller.url)
    try:
        assert agent.backends_seen("shop", 6) == {"task1", "task2"}
        status = agent.status()
        assert status["routes_source"]["file_routes"] == "controller"
        assert [r["source"] for r in status["routes"]] == ["routes file"]
        nginx_pid = status["nginx"]["pid"]
        reloads = agent.metrics()[RELOADS]
        routes_file = controller.workdir / "routes.yml"
        listen = free_port()
        with load(agent.port, "shop") as traffic:
            for i in range(3):  # the file edited in place, as a bind mount is
                blogs = [{"hosts": [f"blog{k}"], "service": "blog", "port": upstream_port}
                         for k in range(i + 1)]
                write_routes(routes_file, [shop(upstream_port), *blogs])
                wait_until(lambda i=i: agent.get(f"blog{i}")[1] == "task3", 15,
                           f"blog{i} to be served")
            # a tcp route, the same way
            write_routes(routes_file, [shop(upstream_port), *blogs],
                         [{"listen": listen, "service": "db", "port": db_port}])
            wait_until(lambda: reached(listen) == "db", 15, "the tcp route to be served")
        assert traffic.failures == [], traffic.failures[:10]
        assert traffic.ok > 300, f"only {traffic.ok} requests were answered"
        assert agent.metrics()[RELOADS] - reloads >= 4  # each change was a reload ...
        assert served_by_the_same_processes(agent, nginx_pid)  # ... and never a restart
        status = agent.status()
        assert [(r["hosts"], r["source"]) for r in status["routes"]] == [
            (["shop"], "routes file"), *(([f"blog{k}"], "routes file") for k in range(3))]
        assert [t["listen"] for t in status["tcp"]] == [listen]
    finally:
        db.stop()


def reached(port: int) -> str | None:
    try:
        return exchange(port).greeting
    except (Refused, OSError):
        return None


def test_the_controller_restarted_with_a_new_file_the_gateway_serves_on_then_follows(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        controller_on: Callable[..., ControllerProcess], fileless_agent: Callable[..., Agent],
        ) -> None:
    """As `ROUTES_VERSION=2 docker stack deploy -c stacks/controller.yml controller` does: the
    controller stops, starts again with the new file; the gateway is not touched."""
    dns.set("tasks.shop", [T1, T2])
    dns.set("tasks.blog", [T3])
    blog = {"hosts": ["blog"], "service": "blog", "port": upstream_port}
    controller = controller_on([shop(upstream_port), blog])
    agent = fileless_agent(controller.url)
    assert agent.backends_seen("blog", 3) == {"task3"}
    nginx_pid = agent.status()["nginx"]["pid"]
    with load(agent.port, "shop") as traffic:
        controller.stop()
        wait_until(lambda: agent.status()["routes_source"]["reachable"] is False, 15,
                   "the gateway to notice the controller gone")
        # meanwhile: the old routes keep being served
        answered = traffic.ok
        assert agent.backends_seen("blog", 6) == {"task3"}
        wait_until(lambda: traffic.ok > answered + 100, 15, "requests while it is away")
        assert agent.admin("/readyz")[0] == 200
        # the new version of the file: blog goes, news comes; the controller starts again on
        # the same address (in a swarm: the same service name)
        news = {"hosts": ["news"], "service": "blog", "port": upstream_port}
        write_routes(controller.workdir / "routes.yml", [shop(upstream_port), news])
        controller.start()
        wait_until(lambda: agent.get("news")[1] == "task3", 20, "the new route")
        wait_until(lambda: agent.get("blog")[0] == 404, 10, "the removed route to go")
    assert traffic.failures == [], traffic.failures[:10]
    assert traffic.ok > 300, f"only {traffic.ok} requests were answered"
    assert served_by_the_same_processes(agent, nginx_pid)


def test_a_gateway_without_routes_is_not_ready_until_the_controller_answers(
        tmp_path: Path, dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        docker: FakeDocker, fileless_agent: Callable[..., Agent]) -> None:
    """No routes file of its own, no saved copy, no controller yet (the gateway stack deployed
    before the controller's, or the controller away when a gateway starts on a new node): it
    would answer 404 to every request, so keepalived must not give it the VIP."""
    dns.set("tasks.shop", [T1])
    (tmp_path / "c").mkdir()
    routes = write_routes(tmp_path / "c" / "routes.yml", [shop(upstream_port)])
    controller = ControllerProcess(tmp_path / "c", docker, ["--routes", str(routes)])
    agent = fileless_agent(controller.url, wait_ready=False)
    try:
        wait_until(lambda: agent.admin("/readyz")[0] == 503, 20, "the agent's admin port")
        agent.wait_cycles(2)
        status, text = agent.admin("/readyz")
        assert status == 503
        assert "no routes yet: no routes file here, and the controller" in text
        controller.start()
        wait_until(agent.ready, 20, "the gateway to be ready once the controller answers")
        assert agent.backends_seen("shop", 3) == {"task1"}
    finally:
        controller.stop()
