"""What a refused request costs (issue #24, finding 7): through the real nginx and agent, many
requests the gateway refuses write (almost) nothing to the agent's log, and are counted in the
per-route metrics instead. Before, nginx wrote an error-log line per refusal ("access forbidden
by rule", "limiting requests"), about 150 bytes each, relayed into the agent's log."""

from __future__ import annotations

import http.client
from collections.abc import Callable

from tests.integration.conftest import TASK_ADDRESSES
from tests.support import wait_until
from tests.support.gateway import Agent, Dnsmasq, Upstream, http_get

T1 = TASK_ADDRESSES[0]
StartAgent = Callable[..., Agent]
INSIDE, OUTSIDE, PROXY = "127.0.20.5", "127.0.21.5", "127.0.22.1"
REFUSED = 2000
LOG_MAX = 10_000  # bytes of agent log for all of them (before: about 150 per request)
# The JSON access log (--access-log, on by default) writes one line per request, refused or not,
# as any access log does: nginx writes it to its output itself, buffered, and the agent relays
# nothing. What these tests bound is what the agent relayed: nginx's error-log lines.
NO_ACCESS_LOG = ("--access-log", "off")


def requests_from(agent: Agent, source: str, count: int, host: str = "web",
                  headers: dict[str, str] | None = None) -> dict[int, int]:
    """`count` requests on kept-alive connections from `source`: {status: how many}."""
    seen: dict[int, int] = {}
    conn: http.client.HTTPConnection | None = None
    for _ in range(count):
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=5,
                                              source_address=(source, 0))
        conn.request("GET", "/", headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        response.read()
        seen[response.status] = seen.get(response.status, 0) + 1
        if response.will_close:  # keepalive_requests reached
            conn.close()
            conn = None
    if conn is not None:
        conn.close()
    return seen


def four_xx(agent: Agent, at_least: int) -> float:
    """The route's 4xx count in /metrics, once it reaches `at_least` (nginx's access log is
    flushed each second, and read by the agent as often)."""
    return wait_until(lambda: (n := agent.metrics().get(
        'gateway_http_requests_total{route="web/",status_class="4xx"}', 0.0)) >= at_least and n,
        10, f"{at_least} requests with a 4xx in the route's metrics")


def log_growth(agent: Agent, action: Callable[[], object]) -> int:
    """Bytes the agent's log grew by during `action` and the next two cycles (nginx's lines
    are relayed as they come: by then they are in)."""
    before = agent.log_file.stat().st_size
    action()
    agent.wait_cycles(2)
    return agent.log_file.stat().st_size - before


def test_requests_refused_by_allow_write_no_log_line_each_and_are_counted(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.web", [T1])
    agent = start_agent([{"hosts": ["web"], "service": "web", "port": upstream_port,
                          "allow": ["127.0.20.0/24"]}], "--trusted-proxies", "127.0.22.0/24",
                        *NO_ACCESS_LOG)
    refused: dict[int, int] = {}
    grown = log_growth(agent, lambda: refused.update(requests_from(agent, OUTSIDE, REFUSED)))
    assert refused == {403: REFUSED}
    assert grown < LOG_MAX, agent.log_tail()
    # counted where an operator looks: the route's 4xx (the access log's metrics)
    assert four_xx(agent, REFUSED)
    # the allow-list itself holds, directly and behind the trusted proxy
    assert http_get(agent.port, "web", source=INSIDE)[:2] == (200, "task1")
    assert http_get(agent.port, "web", source=PROXY,
                    headers={"X-Forwarded-For": INSIDE})[:2] == (200, "task1")
    assert http_get(agent.port, "web", source=PROXY,
                    headers={"X-Forwarded-For": f"{INSIDE}, {OUTSIDE}"})[0] == 403
    assert http_get(agent.port, "web", source=OUTSIDE,
                    headers={"X-Forwarded-For": INSIDE})[0] == 403


def test_requests_beyond_a_rate_limit_write_no_log_line_each(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.web", [T1])
    agent = start_agent([{"hosts": ["web"], "service": "web", "port": upstream_port,
                          "rate_limit": {"rate": "1r/m", "burst": 0}}], *NO_ACCESS_LOG)
    seen: dict[int, int] = {}
    grown = log_growth(agent, lambda: seen.update(requests_from(agent, OUTSIDE, REFUSED)))
    assert seen == {200: 1, 429: REFUSED - 1}
    assert grown < LOG_MAX, agent.log_tail()
    assert four_xx(agent, REFUSED - 1)
