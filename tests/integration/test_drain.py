"""Told to stop, the gateway keeps its port open until traffic has moved away: real agent, real
nginx, real upstreams on loopback, keepalived's notify command writing the VRRP state file.

Before the drain, SIGTERM made nginx close its listeners at once, while keepalived still held
the VIP on this node: every new connection was refused until the check noticed (tests/cluster
measured 13-57 failed requests per gateway restart).
"""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.integration.conftest import TASK_ADDRESSES
from tests.support import wait_until
from tests.support.gateway import Agent, Dnsmasq, Upstream, http_get

StartAgent = Callable[..., Agent]
ROUTE = {"hosts": ["web"], "service": "web", "port": 0}


def notify(textfile: Path, state: str) -> None:
    """What keepalived runs on a transition of instance `gateway` (agent/keepalived/notify.py)."""
    subprocess.run([sys.executable, "-m", "agent", "keepalived", "notify", "--textfile",
                    str(textfile), "INSTANCE", "gateway", state, "250"], check=True,
                   capture_output=True, timeout=30)


def draining(agent: Agent) -> bool:
    status, body = agent.admin("/readyz")[:2]
    return status == 503 and "draining" in body


def serves_on_new_connections(agent: Agent, count: int) -> list[int]:
    """`count` requests, each on a new connection: their statuses (OSError: the test fails)."""
    return [http_get(agent.port, "web", timeout=5)[0] for _ in range(count)]


def test_stopping_keeps_the_port_open_and_closes_kept_alive_connections(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.web", [TASK_ADDRESSES[0]])
    agent = start_agent([{**ROUTE, "port": upstream_port}], "--drain-delay", "3")
    kept = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=5)
    kept.request("GET", "/", headers={"Host": "web"})
    first = kept.getresponse()
    first.read()
    assert first.status == 200
    assert first.getheader("Connection", "").lower() != "close"  # kept alive before the stop

    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: draining(agent), 5, "/readyz to say draining")
    # not ready, and still serving: the VIP (or a load balancer) is moving traffic away now
    assert serves_on_new_connections(agent, 20) == [200] * 20
    kept.request("GET", "/", headers={"Host": "web"})
    last = kept.getresponse()
    last.read()
    assert last.status == 200
    assert last.getheader("Connection", "").lower() == "close"  # the client reconnects elsewhere
    kept.close()
    assert agent.proc.poll() is None, "the agent quit before its --drain-delay"

    assert agent.proc.wait(30) == 0
    assert "drained" in agent.log_file.read_text()


def test_the_drain_ends_when_the_vip_has_left_this_node(
        tmp_path: Path, dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.web", [TASK_ADDRESSES[0]])
    textfile = tmp_path / "keepalived.prom"
    notify(textfile, "MASTER")
    agent = start_agent([{**ROUTE, "port": upstream_port}], "--drain-delay", "60",
                        "--vrrp-state-file", str(textfile))
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: draining(agent), 5, "/readyz to say draining")
    # this node still holds the VIP: the gateway serves whatever the VIP brings
    until = time.monotonic() + 1.5
    served = 0
    while time.monotonic() < until:
        assert serves_on_new_connections(agent, 1) == [200]
        served += 1
    assert agent.proc.poll() is None, "the agent quit while its node still held the VIP"

    notify(textfile, "FAULT")  # keepalived saw /readyz fail and gave the VIP away
    assert agent.proc.wait(20) == 0, "the drain did not end when the VIP left (60 s delay)"
    log = agent.log_file.read_text()
    assert "the VIP left this node" in log, agent.log_tail()
    assert served > 5
