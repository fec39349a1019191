"""match through the real nginx (docs/configuration.md): routes that share a host and path, a
request sent to the one whose headers and method it has, the most specific first, the route
without match for the rest, 404 where there is none; hostile values refused with their place."""

from __future__ import annotations

import http.client
from collections.abc import Callable
from pathlib import Path

from tests.integration.conftest import TASK_ADDRESSES, write_routes
from tests.support import wait_until
from tests.support.controller import ControllerProcess
from tests.support.fakedocker import FakeDocker
from tests.support.gateway import Agent, Dnsmasq, Upstream, http_get

T1, T2, T3, T4 = TASK_ADDRESSES[:4]
StartAgent = Callable[..., Agent]


def send(agent: Agent, method: str, path: str, headers: dict[str, str] | None = None,
         body: bytes | None = None, host: str = "shop", chunked: bool = False,
         ) -> tuple[int, str, dict[str, str]]:
    """One request with a body (http_get sends none), with its length or `chunked`:
    (status, body, headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=5)
    try:
        conn.request(method, path, body=iter([body]) if chunked and body else body,
                     headers={"Host": host, **(headers or {})}, encode_chunked=chunked)
        resp = conn.getresponse()
        return (resp.status, resp.read().decode(errors="replace"),
                {k.lower(): v for k, v in resp.getheaders()})
    finally:
        conn.close()


def test_routes_of_one_path_are_chosen_by_headers_and_method(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent, reachable: Path) -> None:
    for name, address in (("stable", T1), ("beta", T2), ("writer", T3), ("admin", T4)):
        dns.set(f"tasks.{name}", [address])
    port = upstream_port
    agent = start_agent([
        {"hosts": ["shop"], "path": "/api", "service": "beta", "port": port,
         "match": {"headers": {"X-Env": "beta"}}},
        {"hosts": ["shop"], "path": "/api", "service": "writer", "port": port,
         "match": {"methods": ["POST"],
                   "headers": {"Content-Type": "~^application/json(;.*)?$"}}},
        {"hosts": ["shop"], "path": "/api", "service": "stable", "port": port},
        {"hosts": ["shop"], "path": "/admin", "service": "admin", "port": port,
         "match": {"methods": ["GET", "HEAD"]}},
        {"hosts": ["shop"], "path": "/upload", "service": "beta", "port": port,
         "match": {"headers": {"X-Env": "beta"}}, "max_body_size": "5m"},
        {"hosts": ["shop"], "path": "/upload", "service": "stable", "port": port,
         "max_body_size": "5m"},
    ], workdir=reachable)  # (nginx's workers write large bodies to files under it)
    # no header: the route without match; an exact value, case and all: the second service
    assert send(agent, "GET", "/api/items")[:2] == (200, "task1")
    status, body, headers = send(agent, "GET", "/api/items?q=1", {"X-Env": "beta"})
    assert (status, body) == (200, "task2")
    assert headers["x-seen-path"] == "/api/items?q=1"  # the request target as it came
    assert send(agent, "GET", "/api", {"X-Env": "beta"})[:2] == (200, "task2")
    assert send(agent, "GET", "/api/items", {"X-Env": "Beta"})[:2] == (200, "task1")
    assert send(agent, "GET", "/api/items", {"X-Env": "beta2"})[:2] == (200, "task1")
    # a regular expression and a method; the body goes on
    json_post = {"Content-Type": "application/json; charset=utf-8"}
    writer_hits = tasks["task3"].server.hits
    assert send(agent, "POST", "/api/items", json_post, b'{"a": 1}')[:2] == (200, "task3")
    assert tasks["task3"].server.hits == writer_hits + 1
    assert send(agent, "POST", "/api/items", {"Content-Type": "text/plain"},
                b"a")[:2] == (200, "task1")
    assert send(agent, "GET", "/api/items", json_post)[:2] == (200, "task1")  # not a POST
    # both routes match: the one with more conditions (method and header) takes it
    assert send(agent, "POST", "/api/items", {**json_post, "X-Env": "beta"},
                b"{}")[:2] == (200, "task3")
    # a path whose only route is for GET and HEAD: other methods get the gateway's 404
    assert send(agent, "GET", "/admin/users")[:2] == (200, "task4")
    # (the test's task answers HEAD with its own 501: the request reached it)
    assert send(agent, "HEAD", "/admin/users")[0] == 501
    admin_hits = tasks["task4"].server.hits
    status, body, _ = send(agent, "POST", "/admin/users", body=b"x")
    assert (status, body) == (404, "404 no route for this request\n")
    assert tasks["task4"].server.hits == admin_hits
    # a body over nginx's 1 MiB to a path whose routes allow more, sent with its length (nginx
    # checks it where the path is found, before a route is chosen) and chunked (checked after)
    big = b"x" * (3 * 1024**2)
    for headers in ({"X-Env": "beta"}, {}):
        assert send(agent, "POST", "/upload", headers, big)[:2] == (200, "task2" if headers
                                                                     else "task1")
        assert send(agent, "POST", "/upload", {**headers, "Transfer-Encoding": "chunked"},
                    big, chunked=True)[0] == 200
    assert send(agent, "POST", "/upload", {}, b"x" * (6 * 1024**2))[0] == 413
    # a path no route has is what it was
    assert send(agent, "GET", "/other")[:2] == (404, "404 no route for this path\n")
    # both 404s are counted as unrouted requests
    wait_until(lambda: agent.metrics().get(
        'gateway_http_requests_total{route="unrouted",status_class="4xx"}', 0) >= 2, 10,
        "the 404s in the unrouted requests' metrics")

    # /status shows each route's match, the routes with their own label
    routes = agent.status()["routes"]
    by_service = {r["service"]: r for r in routes}
    assert by_service["beta"]["match"] == {"headers": {"X-Env": "beta"}, "methods": []}
    assert by_service["writer"]["match"]["methods"] == ["POST"]
    assert "match" not in by_service["stable"]
    assert len({r["label"] for r in routes}) == len(routes) == 6
    # and each route's requests are counted under its own label
    beta = by_service["beta"]["label"]
    wait_until(lambda: agent.metrics().get(
        f'gateway_http_requests_total{{route="{beta}",status_class="2xx"}}', 0) >= 2, 10,
        "the beta route's requests in its metrics")


def test_hostile_match_values_are_refused_with_their_place(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.stable", [T1])
    route = {"hosts": ["shop"], "path": "/api", "service": "stable", "port": upstream_port}
    agent = start_agent([route])
    hostile = [
        {"headers": {"X-Env": 'a"; return 200 "owned'}},
        {"headers": {"X-Env": "~^(?<gateway_rid>.*)$"}},
        {"headers": {"X-Env": "~beta"}},  # not anchored
        {"headers": {"X-Env}": "1"}},
        {"methods": ["GET;"]},
    ]
    write_routes(agent.workdir / "routes.yaml", [
        {**route, "service": f"s{i}", "match": m} for i, m in enumerate(hostile)])
    wait_until(lambda: agent.status()["routes_error"], 5, "the bad file to be refused")
    error = agent.status()["routes_error"]
    for i, where in enumerate(("headers", "headers", "headers", "headers", "methods")):
        assert f"routes[{i}].match.{where}" in error, (i, error)
    assert agent.get("shop", "/api") == (200, "task1")
    conf = (agent.prefix / "conf.d" / "gateway.conf").read_text()
    assert "owned" not in conf
    assert "gateway_rid>.*" not in conf

    # two routes of one path with the same match conflict, named by their place
    write_routes(agent.workdir / "routes.yaml", [
        {**route, "match": {"methods": ["GET"]}}, {**route, "match": {"methods": ["GET"]}}])
    wait_until(lambda: "routes[1].hosts[0]" in (agent.status()["routes_error"] or ""), 5,
               "the conflict to be refused")
    assert "with the same 'match'" in agent.status()["routes_error"]
    assert http_get(agent.port, "shop", "/api", method="POST")[:2] == (200, "task1")


def test_labelled_services_share_a_path_by_match_through_the_controller(
        tmp_path: Path, dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        docker: FakeDocker, start_agent: StartAgent) -> None:
    dns.set("tasks.shop", [T1])
    dns.set("tasks.shop_beta", [T2])
    dns.set("tasks.shop_thief", [T3])
    base = {"gateway.hosts": "shop.example.com", "gateway.path": "/api",
            "gateway.port": str(upstream_port)}
    docker.create("shop", base)
    docker.create("shop_beta", {**base, "gateway.match.headers.X-Env": "~^beta(-[0-9]+)?$",
                                "gateway.match.methods": "GET,HEAD"})
    # the same match as an older service's: refused, naming both
    docker.create("shop_thief", {**base, "gateway.match.headers.X-Env": "~^beta(-[0-9]+)?$",
                                 "gateway.match.methods": "HEAD, GET"})
    controller = ControllerProcess(tmp_path, docker)
    try:
        controller.start()
        agent = start_agent([], "--routes-url", controller.url)
        wait_until(lambda: send(agent, "GET", "/api/x", {"X-Env": "beta-2"},
                                host="shop.example.com")[:2] == (200, "task2"), 10,
                   "the labelled routes to be served")
        assert send(agent, "GET", "/api/x", host="shop.example.com")[:2] == (200, "task1")
        assert send(agent, "POST", "/api/x", {"X-Env": "beta"}, b"x",
                    host="shop.example.com")[:2] == (200, "task1")
        assert controller.status()["errors"] == [
            "service shop_thief: not routed: 'shop.example.com' with path '/api' is already "
            "routed by service shop_beta with the same 'match'"]
    finally:
        controller.stop()
