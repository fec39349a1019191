"""Route options through the real nginx, as a client notices them (docs/configuration.md).

Clients are told apart by the loopback address they connect from (any 127.x is this machine).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.integration.conftest import TASK_ADDRESSES
from tests.support.gateway import Agent, Dnsmasq, Upstream, http_get

T1, T2, T3, T4 = TASK_ADDRESSES[:4]
StartAgent = Callable[..., Agent]
INSIDE, OUTSIDE, PROXY = "127.0.20.5", "127.0.21.5", "127.0.22.1"


def web(port: int, **options: object) -> dict[str, object]:
    return {"hosts": ["web"], "service": "web", "port": port, **options}


def status_from(agent: Agent, source: str, host: str = "web", path: str = "/",
                headers: dict[str, str] | None = None) -> int:
    return http_get(agent.port, host, path, source=source, headers=headers)[0]


# -- allow -----------------------------------------------------------------------------------------


def test_allow_lets_in_only_the_listed_client_addresses(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.web", [T1])
    dns.set("tasks.open", [T2])
    agent = start_agent([web(upstream_port, allow=["127.0.20.0/24", "::1"]),
                         {"hosts": ["open"], "service": "open", "port": upstream_port}])
    assert http_get(agent.port, "web", source=INSIDE)[:2] == (200, "task1")
    status, body, _ = http_get(agent.port, "web", source=OUTSIDE)
    assert status == 403
    assert "task1" not in body
    # without a trusted proxy a client's own X-Forwarded-For is nothing but a header
    assert status_from(agent, OUTSIDE, headers={"X-Forwarded-For": INSIDE}) == 403
    # another route without `allow` lets everyone in
    assert http_get(agent.port, "open", source=OUTSIDE)[:2] == (200, "task2")


def test_allow_behind_a_trusted_proxy_checks_the_client_it_forwards(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.web", [T1])
    agent = start_agent([web(upstream_port, allow=["127.0.20.0/24"])],
                        "--trusted-proxies", "127.0.22.0/24")

    def through_proxy(forwarded_for: str) -> tuple[int, str]:
        status, body, _ = http_get(agent.port, "web", "/headers", source=PROXY,
                                   headers={"X-Forwarded-For": forwarded_for,
                                            "X-Forwarded-Proto": "https"})
        return status, body

    status, body = through_proxy(INSIDE)
    assert status == 200
    seen = json.loads(body)
    # the task sees the chain as before: the client, then the proxy; the proxy's scheme is kept
    assert seen["x-forwarded-for"] == f"{INSIDE}, {PROXY}"
    assert seen["x-real-ip"] == PROXY
    assert seen["x-forwarded-proto"] == "https"
    assert through_proxy(OUTSIDE)[0] == 403
    # a client that forges an allowed address in front of its own: the proxy appended the real
    # one, and that is the one checked (the right-most address that is not a trusted proxy)
    assert through_proxy(f"{INSIDE}, {OUTSIDE}")[0] == 403
    assert through_proxy(f"{OUTSIDE}, {INSIDE}, 127.0.22.9")[0] == 200
    # the proxy's own address is not allowed, and a client that is not a trusted proxy cannot
    # forward for anyone
    assert status_from(agent, PROXY) == 403
    assert status_from(agent, OUTSIDE, headers={"X-Forwarded-For": INSIDE}) == 403
