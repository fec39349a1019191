"""Per-route traffic metrics end to end: real requests through a real nginx, which writes its
access-log lines to a file the agent reads, and the counts a user reads on /metrics. The
feature is on by default: no test here turns it on."""

from __future__ import annotations

import http.client
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.integration.conftest import TASK_ADDRESSES, write_routes
from tests.support import wait_until
from tests.support.gateway import Agent, Dnsmasq, Upstream

T1, T2, T3 = TASK_ADDRESSES[:3]
NOBODY = "127.0.10.99"  # in DNS as a task, but nothing listens there: connections are refused
StartAgent = Callable[..., Agent]
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def start(start_agent: StartAgent, routes: list[dict[str, object]], *extra: str) -> Agent:
    return start_agent(routes, *extra)  # no --access-log-metrics: on by default


def requests_by_class(m: dict[str, float], route: str) -> dict[str, float]:
    """{status_class: count} of one route, leaving out the classes that are 0."""
    out = {}
    for klass in CLASSES:
        value = m.get(f'gateway_http_requests_total{{route="{route}",status_class="{klass}"}}')
        if value:
            out[klass] = value
    return out


def routes_in(m: dict[str, float]) -> set[str]:
    return {key.split('route="')[1].split('"')[0] for key in m
            if key.startswith("gateway_http_requests_total{")}


def post(agent: Agent, host: str, body: bytes) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=5)
    try:
        conn.request("POST", "/upload", body=body, headers={"Host": host})
        return conn.getresponse().status
    finally:
        conn.close()


def test_counts_match_the_requests_sent_per_route_and_status_class(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.managerhttp", [T1, T2])
    dns.set("tasks.api", [T3])  # tasks.dmzhttp: NXDOMAIN, its route answers 503
    agent = start(start_agent, [
        {"hosts": ["managerhttp", "manager.example.com"], "service": "managerhttp",
         "port": upstream_port, "max_body_size": "1k"},
        {"hosts": ["manager.example.com"], "path": "/api", "service": "api",
         "port": upstream_port},
        {"hosts": ["dmzhttp"], "service": "dmzhttp", "port": upstream_port},
    ])
    sent = {"managerhttp/": {"2xx": 0, "4xx": 0}, "manager.example.com/api": {"2xx": 0},
            "dmzhttp/": {"5xx": 0}, "unrouted": {"4xx": 0}}

    def expect(route: str, klass: str, status: int, want: int) -> None:
        assert status == want
        sent[route][klass] += 1

    for _ in range(7):
        expect("managerhttp/", "2xx", agent.get("managerhttp")[0], 200)
    for _ in range(3):  # the route's second host counts under the same route
        expect("managerhttp/", "2xx", agent.get("manager.example.com", "/x")[0], 200)
    for _ in range(2):  # refused by nginx before any location logic: still the route's request
        expect("managerhttp/", "4xx", post(agent, "managerhttp", b"x" * 2048), 413)
    for path in ("/api", "/api/", "/api/v1/items", "/api/x?y=1"):
        expect("manager.example.com/api", "2xx", agent.get("manager.example.com", path)[0], 200)
    for _ in range(5):
        expect("dmzhttp/", "5xx", agent.get("dmzhttp")[0], 503)
    for host, status in (("unknown.example.com", 404), ("other", 404), (None, 400)):
        expect("unrouted", "4xx", agent.get(host)[0], status)  # None: HTTP/1.1 without Host
    want = {route: {k: float(v) for k, v in classes.items()} for route, classes in sent.items()}

    def counted() -> dict[str, dict[str, float]]:
        m = agent.metrics()
        return {route: requests_by_class(m, route) for route in sent}

    wait_until(lambda: counted() == want, 5, f"the counts {want}, /metrics had {counted()}")
    m = agent.metrics()
    assert routes_in(m) == set(sent), "one series per route, no URL or client in a label"
    for route, classes in want.items():
        count = m[f'gateway_http_request_duration_seconds_count{{route="{route}"}}']
        assert count == sum(classes.values())
        assert m[f'gateway_http_response_bytes_total{{route="{route}"}}'] > 0
        assert m[f'gateway_http_request_bytes_total{{route="{route}"}}'] > 0
    # only the requests an upstream answered have an upstream time
    assert m['gateway_upstream_response_duration_seconds_count{route="managerhttp/"}'] == 10
    assert m['gateway_upstream_response_duration_seconds_count{route="dmzhttp/"}'] == 0
    assert m['gateway_http_response_bytes_total{route="manager.example.com/api"}'] >= \
        4 * len("task3")
    assert m['gateway_access_log_records_total{result="ok"}'] == sum(
        sum(classes.values()) for classes in want.values())
    for result in ("malformed", "unknown_route"):
        assert m[f'gateway_access_log_records_total{{result="{result}"}}'] == 0
    assert 'gateway_access_log_records_total{result="dropped"}' not in m, "a file drops nothing"


def test_hosts_routed_alike_share_a_server_and_each_counts_under_its_own_route(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    """Hosts whose one route is `/` to the same service share one server block (plan/scale.py):
    each host's requests still go to its service and count under its own route, its refusals
    (413 before any proxying) too; a host with other settings keeps a server of its own."""
    dns.set("tasks.shop", [T1])
    dns.set("tasks.blog", [T2])
    routes: list[dict[str, object]] = [
        {"hosts": ["a.shop.example"], "service": "shop", "port": upstream_port,
         "max_body_size": "1k"},
        {"hosts": ["b.shop.example"], "service": "shop", "port": upstream_port,
         "max_body_size": "1k"},
        {"hosts": ["c.shop.example", "d.shop.example"], "service": "shop",
         "port": upstream_port, "max_body_size": "1k"},
        {"hosts": ["big.shop.example"], "service": "shop", "port": upstream_port},
        {"hosts": ["a.blog.example"], "service": "blog", "port": upstream_port,
         "max_body_size": "1k"},
    ]
    agent = start(start_agent, routes)
    conf = (agent.prefix / "conf.d" / "gateway.conf").read_text()
    names = [line.strip() for line in conf.splitlines() if line.strip().startswith("server_name")]
    assert "server_name a.shop.example b.shop.example c.shop.example d.shop.example;" in names
    assert "server_name big.shop.example;" in names
    assert "server_name a.blog.example;" in names
    assert conf.count("root $gateway_host_root;") == 1, "one shared location"

    sent: Counter[tuple[str, str]] = Counter()
    # a number of requests of its own for each host: a host counted under another's route
    # shows
    for times, (host, route, task) in enumerate((
            ("a.shop.example", "a.shop.example/", "task1"),
            ("b.shop.example", "b.shop.example/", "task1"),
            ("c.shop.example", "c.shop.example/", "task1"),
            ("d.shop.example", "c.shop.example/", "task1"),
            ("big.shop.example", "big.shop.example/", "task1"),
            ("a.blog.example", "a.blog.example/", "task2")), 1):
        for _ in range(times):
            assert agent.get(host) == (200, task), host
            sent[(route, "2xx")] += 1
        if host != "big.shop.example":
            assert post(agent, host, b"x" * 2048) == 413, host
            sent[(route, "4xx")] += 1
    assert agent.get("e.shop.example")[0] == 404, "a name no route gives: the default server"
    want = {route: {klass: float(n) for (r, klass), n in sent.items() if r == route}
            for route, _ in sent}

    def counted() -> dict[str, dict[str, float]]:
        m = agent.metrics()
        return {route: requests_by_class(m, route) for route in want}

    wait_until(lambda: counted() == want, 5, f"the counts {want}, /metrics had {counted()}")
    m = agent.metrics()
    assert routes_in(m) == set(want) | {"unrouted"}
    assert m['gateway_access_log_records_total{result="unknown_route"}'] == 0


def test_a_dead_task_shows_as_upstream_errors_and_retries_while_clients_get_200(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.managerhttp", [T1, NOBODY])
    agent = start(start_agent, [{"hosts": ["managerhttp"], "service": "managerhttp",
                                    "port": upstream_port}])
    for _ in range(6):  # round robin: at least one of the first two tries NOBODY
        assert agent.get("managerhttp") == (200, "task1")
    wait_until(lambda: requests_by_class(agent.metrics(), "managerhttp/") == {"2xx": 6}, 5,
               "six requests counted")
    m = agent.metrics()
    errors = m['gateway_upstream_errors_total{route="managerhttp/"}']
    assert errors >= 1
    assert m['gateway_upstream_retries_total{route="managerhttp/"}'] == errors
    assert m['gateway_upstream_response_duration_seconds_count{route="managerhttp/"}'] == 6


def test_records_that_name_no_route_in_use_are_counted_without_a_series(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.managerhttp", [T1])
    agent = start(start_agent, [{"hosts": ["managerhttp"], "service": "managerhttp",
                                       "port": upstream_port}])
    with (agent.prefix / "logs" / "gateway-metrics.log").open("ab") as log:
        log.write(b"not a record\n"
                  b"g1|/gateway-route/managerhttp|2000|0.001|-|-|-|10|10\n"  # bad status
                  b"g1|/gateway-route/managerhttp|200|0.001|-|-|-|10\n"  # a field short
                  b"g1|/gateway-route/evil.example.com/x|200|0.001|-|-|-|10|10\n")

    def results() -> dict[str, float]:
        m = agent.metrics()
        return {r: m[f'gateway_access_log_records_total{{result="{r}"}}']
                for r in ("ok", "malformed", "unknown_route")}

    wait_until(lambda: results() == {"ok": 0, "malformed": 3, "unknown_route": 1}, 5,
               f"the records to be counted, /metrics had {results()}")
    assert routes_in(agent.metrics()) == {"managerhttp/", "unrouted"}


def test_route_series_follow_the_routes_in_use(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.managerhttp", [T1])
    routes = [{"hosts": ["managerhttp"], "service": "managerhttp", "port": upstream_port}]
    agent = start(start_agent, routes)
    assert agent.get("managerhttp")[0] == 200
    wait_until(lambda: requests_by_class(agent.metrics(), "managerhttp/") == {"2xx": 1}, 5,
               "the request to be counted")

    write_routes(agent.workdir / "routes.yaml",
                 [{"hosts": ["renamed.example.com"], "service": "managerhttp",
                   "port": upstream_port}])
    wait_until(lambda: agent.get("renamed.example.com")[0] == 200, 5, "the new route")
    assert routes_in(agent.metrics()) == {"renamed.example.com/", "unrouted"}
    wait_until(lambda: requests_by_class(agent.metrics(), "renamed.example.com/"), 5,
               "the request on the new route to be counted")


def test_off_writes_no_access_log_and_exports_no_series(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.managerhttp", [T1])
    agent = start_agent([{"hosts": ["managerhttp"], "service": "managerhttp",
                          "port": upstream_port}], "--access-log-metrics", "off")
    for _ in range(3):
        assert agent.get("managerhttp") == (200, "task1")
    wait_until(lambda: agent.metrics().get("nginx_http_requests_total", 0) >= 3, 5,
               "nginx's request counter")
    m = agent.metrics()
    assert not any(k.startswith(("gateway_http_", "gateway_access_log_")) for k in m)
    conf = (agent.prefix / "conf.d" / "gateway.conf").read_text()
    assert "gateway_metrics" not in conf
    assert not (agent.prefix / "logs" / "gateway-metrics.log").exists()
    held = agent.logs_nginx_holds()
    assert "gateway-access.log" in held, held  # the JSON log, which does not need the metrics
    assert "access.log" not in held, "nginx's default access log is off too"


def send(agent: Agent, requests: list[tuple[str | None, int]], clients: int = 4,
         during: Callable[[], None] | None = None) -> Counter[tuple[str | None, int]]:
    """Send every (host, expected status) request from `clients` threads, calling `during`
    once a third of them were answered; the (host, status) pairs clients got."""
    got: Counter[tuple[str | None, int]] = Counter()
    lock = threading.Lock()
    third = threading.Event()

    def one(item: tuple[str | None, int]) -> None:
        status = agent.get(item[0])[0]
        with lock:
            got[(item[0], status)] += 1
            if sum(got.values()) >= len(requests) // 3:
                third.set()

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(one, item) for item in requests]
        if during is not None:
            third.wait(30)
            during()
        for f in futures:
            f.result()
    return got


def test_counts_equal_requests_sent_across_a_reload_and_rotations(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.managerhttp", [T1, T2])  # tasks.dmzhttp: NXDOMAIN, its route answers 503
    routes: list[dict[str, object]] = [
        {"hosts": ["managerhttp"], "service": "managerhttp", "port": upstream_port},
        {"hosts": ["dmzhttp"], "service": "dmzhttp", "port": upstream_port}]
    agent = start(start_agent, routes, "--access-log-rotate-size", "4096")
    log = agent.prefix / "logs" / "gateway-metrics.log"
    for directory in log.parents:  # nginx's workers (nobody) reopen the file by its path:
        if directory == Path("/tmp"):  # pytest's folders are root's only (0700)
            break
        directory.chmod(directory.stat().st_mode | 0o005)
    probes: Counter[int] = Counter()  # the reload's own requests: 404 until the new route

    def reload() -> None:  # a route change: nginx reloads while the clients go on
        write_routes(agent.workdir / "routes.yaml", [
            *routes, {"hosts": ["new.example.com"], "service": "managerhttp",
                      "port": upstream_port}])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            status = agent.get("new.example.com")[0]
            probes[status] += 1
            if status == 200:
                return
            time.sleep(0.05)
        raise AssertionError(f"the new route never answered: {probes}")

    plan = [("managerhttp", 200)] * 600 + [("dmzhttp", 503)] * 150 + \
        [("unknown.example.com", 404)] * 150
    got = send(agent, plan, during=reload)
    assert got == Counter(plan), "every client got what the route answers"
    assert set(probes) <= {404, 200}
    want = {"managerhttp/": {"2xx": 600.0}, "dmzhttp/": {"5xx": 150.0},
            "new.example.com/": {"2xx": 1.0}, "unrouted": {"4xx": 150.0 + probes[404]}}

    def counted() -> dict[str, dict[str, float]]:
        m = agent.metrics()
        return {route: requests_by_class(m, route) for route in want}

    wait_until(lambda: counted() == want, 10, f"the counts {want}, /metrics had {counted()}")
    m = agent.metrics()
    assert m['gateway_access_log_records_total{result="ok"}'] == 901 + probes[404]
    assert m['gateway_access_log_records_total{result="malformed"}'] == 0
    # rotated: 901 lines of some 70 bytes would be 60 kB; the file stays near 4 kB
    wait_until(lambda: not log.with_name(log.name + ".1").exists(), 10, "the old file removed")
    assert log.stat().st_size < 8192


def test_after_nginx_died_the_restarted_agent_counts_from_zero_and_nothing_twice(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.managerhttp", [T1])
    agent = start(start_agent, [{"hosts": ["managerhttp"], "service": "managerhttp",
                                 "port": upstream_port}])
    for _ in range(7):
        assert agent.get("managerhttp")[0] == 200
    wait_until(lambda: requests_by_class(agent.metrics(), "managerhttp/") == {"2xx": 7}, 10,
               "seven requests counted")
    os.kill(agent.nginx_master(), signal.SIGKILL)
    assert agent.proc is not None
    assert agent.proc.wait(15) == 1, "the agent ends with nginx; swarm restarts the task"
    agent.start()  # the same prefix: the file of the previous run is still there
    for _ in range(5):
        assert agent.get("managerhttp")[0] == 200
    # the first read takes the whole file: had the old lines been there, this would be 12
    wait_until(lambda: requests_by_class(agent.metrics(), "managerhttp/") == {"2xx": 5}, 10,
               f"five requests counted, /metrics had "
               f"{requests_by_class(agent.metrics(), 'managerhttp/')}")
