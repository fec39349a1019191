"""A route's second services and how it speaks to its tasks, through the real nginx
(docs/configuration.md): protocol h2c, canary, mirror, and sticky on upstreams nginx resolves.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.integration.conftest import TASK_ADDRESSES
from tests.support import free_port, wait_until
from tests.support.gateway import Agent, Dnsmasq, Upstream, http_get
from tests.support.h2c import H2cServer

T1, T2, T3, T4, T5, T6, T7, T8 = TASK_ADDRESSES
StartAgent = Callable[..., Agent]
RELOADS = 'gateway_reloads_total{result="success"}'


def web(port: int, **options: object) -> dict[str, object]:
    return {"hosts": ["web"], "service": "web", "port": port, **options}


def within_sigmas(count: int, n: int, p: float, sigmas: float = 4) -> bool:
    """`count` of `n` draws with chance `p` is within `sigmas` standard deviations of n*p."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


# -- protocol: h2c ---------------------------------------------------------------------------------


def test_an_h2c_task_is_spoken_to_in_http2(dns: Dnsmasq, start_agent: StartAgent) -> None:
    port = free_port(T8)
    server = H2cServer("h2task", T8, port)
    try:
        dns.set("tasks.h2", [T8])
        agent = start_agent([{"hosts": ["h2"], "service": "h2", "port": port,
                              "protocol": "h2c"}])
        # the client speaks HTTP/1.1 to the gateway; the task (which knows no other protocol
        # than HTTP/2, by prior knowledge) answers
        for i in range(3):  # also on a kept-alive connection
            status, body, _ = http_get(agent.port, "h2", f"/hello?x={i}")
            assert (status, body) == (200, f"h2task HTTP/2 /hello?x={i}")
        assert agent.status()["routes"][0]["protocol"] == "h2c"
    finally:
        server.stop()


# -- canary ----------------------------------------------------------------------------------------


def test_a_canary_takes_its_share_while_a_side_scales_and_a_header_or_cookie_keeps_a_side(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.web", [T1, T2])
    dns.set("tasks.next", [T3])
    agent = start_agent([web(upstream_port, canary={
        "service": "next", "weight": 10, "cookie": "side", "header": "X-Canary"})])

    seen: Counter[str] = Counter()
    for i in range(1000):
        if i == 500:  # the stable side scales up midway: the split stays what it was
            dns.set("tasks.web", [T1, T2, T4, T5])
            wait_until(lambda: {"task4", "task5"} <= {http_get(
                agent.port, "web", headers={"X-Canary": "stable"})[1] for _ in range(20)}, 15,
                "the stable side's new tasks to be reached")
        status, body, headers = http_get(agent.port, "web")
        assert status == 200
        seen[body] += 1
    assert within_sigmas(seen["task3"], 1000, 0.10), seen
    assert {"task4", "task5"} & set(seen), "the scaled stable side was followed"

    # a header forces either side, and sets no cookie
    for side, wanted in (("canary", {"task3"}), ("stable", {"task1", "task2", "task4", "task5"})):
        got = set()
        for _ in range(30):
            status, body, headers = http_get(agent.port, "web", headers={"X-Canary": side})
            assert "set-cookie" not in headers
            got.add(body)
        assert got, side
        assert got <= wanted, (side, got)

    # a client without the cookie gets its side in one; with it, it stays there
    sides = {}
    for _ in range(60):
        _, body, headers = http_get(agent.port, "web")
        cookie = headers["set-cookie"].split(";")[0]
        sides[cookie] = body == "task3"
    assert set(sides) == {"side=canary", "side=stable"}
    for cookie, canary in sides.items():
        bodies = {http_get(agent.port, "web", headers={"Cookie": cookie})[1] for _ in range(20)}
        assert (bodies == {"task3"}) if canary else ("task3" not in bodies), (cookie, bodies)
    assert agent.status()["routes"][0]["canary"]["weight"] == 10


# -- mirror ----------------------------------------------------------------------------------------


class _Slow(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def do_GET(self) -> None:
        self.server.started += 1
        time.sleep(2)
        self.server.answered += 1
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"slow")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def slow_mirror() -> Iterator[Any]:
    server = ThreadingHTTPServer((T7, free_port(T7)), _Slow)
    server.daemon_threads = True
    server.started = server.answered = 0  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_mirror_gets_its_share_of_copies_and_a_slow_one_never_holds_the_client(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent, slow_mirror: Any) -> None:
    dns.set("tasks.web", [T1])
    dns.set("tasks.shadow", [T6])
    dns.set("tasks.slow", [T7])
    agent = start_agent([
        web(upstream_port, mirror={"service": "shadow", "share": 30}),
        {"hosts": ["slowly"], "service": "web", "port": upstream_port,
         "mirror": {"service": "slow", "port": slow_mirror.server_address[1]}}])
    shadow = tasks["task6"].server
    before = shadow.hits
    for _ in range(400):
        status, body, _ = http_get(agent.port, "web")
        assert (status, body) == (200, "task1"), "the client sees the route's own task only"
    wait_until(lambda: within_sigmas(shadow.hits - before, 400, 0.30), 10,
               "the mirror's share of 400 requests")
    time.sleep(1)  # copies still on their way would be counted now
    assert within_sigmas(shadow.hits - before, 400, 0.30), shadow.hits - before

    # a mirror that takes 2 s to answer: the client has its answer while the copy is waited on
    status, body, _ = http_get(agent.port, "slowly")
    assert (status, body) == (200, "task1")
    wait_until(lambda: slow_mirror.started >= 1, 5, "the copy to reach the slow mirror")
    assert slow_mirror.answered == 0, "the client waited for the mirror"


# -- sticky on resolve -----------------------------------------------------------------------------


def test_sticky_clients_stay_on_their_task_across_a_scale_up_with_no_reload(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.web", [T1, T2])
    agent = start_agent([web(upstream_port, sticky="gateway_task")])
    clients = {}
    for _ in range(20):
        _, body, headers = http_get(agent.port, "web")
        clients[headers["set-cookie"].split(";")[0]] = body
    assert set(clients.values()) == {"task1", "task2"}
    reloads, generation = agent.metrics()[RELOADS], agent.status()["nginx"]["generation"]

    dns.set("tasks.web", [T1, T2, T3, T4])
    # the new tasks are seen: new clients reach them
    wait_until(lambda: {"task3", "task4"} <= agent.backends_seen("web", 40), 15,
               "new clients to reach the new tasks")
    agent.wait_cycles()
    assert agent.metrics()[RELOADS] == reloads, "a task change of a sticky route reloaded"
    assert agent.status()["nginx"]["generation"] == generation
    for cookie, task in clients.items():
        assert {http_get(agent.port, "web", headers={"Cookie": cookie})[1]
                for _ in range(5)} == {task}
