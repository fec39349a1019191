"""The holes a security review found, each shown through the real programs: nginx, dnsmasq and
the test's upstreams on loopback, a client sending what an attacker would."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from tests.integration.conftest import TASK_ADDRESSES
from tests.support.dns import ControlledDns
from tests.support.gateway import Agent, Dnsmasq, Upstream

T1, T2, T3, T4 = TASK_ADDRESSES[:4]
StartAgent = Callable[..., Agent]


def test_tasks_answered_outside_the_swarm_s_networks_get_no_traffic(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    """Docker's DNS forwards `tasks.shop` of a service scaled to zero to the node's resolvers:
    an answer from outside the swarm's networks (here loopback, which the default refuses) is
    no task. A `host:` target is the operator's own name and is resolved as it is."""
    dns.set("tasks.shop", [T1])
    dns.set("tasks.web", [T2, T3])
    dns.set("upstream.test", [T4])
    routes = [{"hosts": ["shop.example.com"], "service": "shop", "port": upstream_port},
              {"hosts": ["web.example.com"], "service": "web", "port": upstream_port},
              {"hosts": ["plain.example.com"], "host": "upstream.test", "port": upstream_port}]
    agent = start_agent(routes, task_networks=None)  # the default: Docker's address pools
    assert agent.backends_seen("plain.example.com", 4) == {"task4"}  # configuration applied
    assert task1_hits_unchanged(tasks, agent)
    assert agent.get("web.example.com")[0] == 503
    endpoints = agent.status()["endpoints"]
    assert (endpoints["shop"]["addresses"], endpoints["shop"]["state"],
            endpoints["shop"]["refused"]) == ([], "none", [T1])
    assert endpoints["upstream.test"]["addresses"] == [T4]
    metrics = agent.metrics()
    assert metrics['gateway_dns_refused_addresses_total{result="loopback"}'] >= 3
    assert metrics['gateway_dns_refused_addresses_total{result="public"}'] == 0

    # the operator's networks decide: one task address of two is in them
    narrow = start_agent(routes, task_networks="127.0.10.2/32")
    assert narrow.backends_seen("web.example.com", 6) == {"task2"}
    assert narrow.status()["endpoints"]["web"]["refused"] == [T3]


@pytest.fixture
def hostile() -> Iterator[ControlledDns]:
    server = ControlledDns()
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("tells_apart", ["by source port", "at random"])
def test_nginx_s_own_lookups_never_reach_an_address_the_filter_refused(
        hostile: ControlledDns, tasks: dict[str, Upstream], upstream_port: int,
        agent_on: Callable[..., Agent], tells_apart: str) -> None:
    """A nameserver that answers the agent with a task and nginx with an address outside
    --task-networks: nginx asks from one source port, the agent from a fresh one every round
    (or the answers differ at random). nginx asks the agent's own resolver, which answers only
    what the filter accepted: not one request reaches the refused address."""
    hostile.set("tasks.shop", [T1])
    if tells_apart == "by source port":
        hostile.answer_repeats("tasks.shop", [T2])
    else:
        hostile.sequence("tasks.shop", [[T1], [T1, T2]])
    agent = agent_on(hostile.nameserver, [{"hosts": ["shop.example.com"], "service": "shop",
                                           "port": upstream_port}], task_networks=f"{T1}/32")
    agent.wait_cycles(8)  # 4 s: nginx has looked the name up again, more than once
    before = {name: tasks[name].server.hits for name in ("task1", "task2")}
    answers = []
    for _ in range(40):  # over 4 s: nginx looks the name up again meanwhile
        answers.append(agent.get("shop.example.com"))
        time.sleep(0.1)
    reached = {name: tasks[name].server.hits - hits for name, hits in before.items()}
    assert reached["task2"] == 0, \
        f"{reached['task2']} of 40 requests reached {T2}, outside --task-networks"
    assert reached["task1"] == answers.count((200, "task1")) > 0
    if tells_apart == "by source port":
        # nginx never asks the hostile server, so the agent alone is asked; when the kernel
        # happens to give the agent a port it used before, the agent is told the other address
        # and refuses it (no task for a moment: 503), as the filter should
        assert set(answers) <= {(200, "task1"), (503, "503 no running task of shop\n")}
        assert answers.count((200, "task1")) > 0
        assert set(agent.status()["endpoints"]["shop"]["refused"]) <= {T2}
    # nginx did look the name up again and again: of the agent
    assert agent.metrics()['gateway_resolver_queries_total{result="answered"}'] >= 3


def task1_hits_unchanged(tasks: dict[str, Upstream], agent: Agent) -> bool:
    """A few more requests for shop.example.com reach no task."""
    before = tasks["task1"].server.hits
    for _ in range(3):
        assert agent.get("shop.example.com")[0] == 503
    return tasks["task1"].server.hits == before



def upgrade(agent: Agent, host: str, path: str, protocol: str) -> tuple[str, bytes]:
    """Ask for `protocol` as a client would; then send b'ping' on the same connection.
    (the status line, what came back after the response head)"""
    with socket.create_connection(("127.0.0.1", agent.port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: {protocol}\r\n"
                     "Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__"
                     "\r\nSec-WebSocket-Version: 13\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].decode()
        if " 101 " in status:
            sock.sendall(b"ping")
            want = len(b"taskN:ping")
            while len(rest) < want and (chunk := sock.recv(4096)):
                rest += chunk
        else:
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(rest) < length and (chunk := sock.recv(4096)):
                rest += chunk
        return status, rest


def test_websocket_routes_upgrade_to_websocket_only(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    """A route with `websocket: true` under /chat: a WebSocket upgrade reaches the task and the
    connection becomes a tunnel. Any other protocol (h2c would give HTTP/2 straight to the task,
    past the path prefix) is not passed on: the task answers a plain request."""
    dns.set("tasks.chat", [T1])
    dns.set("tasks.site", [T2])
    agent = start_agent([
        {"hosts": ["chat.example.com"], "path": "/chat", "service": "chat",
         "port": upstream_port, "websocket": True},
        {"hosts": ["chat.example.com"], "service": "site", "port": upstream_port}])
    status, echoed = upgrade(agent, "chat.example.com", "/chat/upgrade", "websocket")
    assert status == "HTTP/1.1 101 Switching Protocols"
    assert echoed == b"task1:ping"
    status, echoed = upgrade(agent, "chat.example.com", "/chat/upgrade", "WebSocket")
    assert (status, echoed) == ("HTTP/1.1 101 Switching Protocols", b"task1:ping")
    for protocol in ("h2c", "websocket, h2c", "h2c, websocket", "TLS/1.0"):
        status, body = upgrade(agent, "chat.example.com", "/chat/upgrade", protocol)
        assert status == "HTTP/1.1 200 OK", protocol
        assert body == b"task1", protocol  # a plain answer: the task saw no Upgrade
    # what the task receives for those: neither Upgrade nor Connection: upgrade
    status, body = upgrade(agent, "chat.example.com", "/chat/headers", "h2c")
    assert status == "HTTP/1.1 200 OK"
    assert b'"upgrade"' not in body
    assert b'"connection": "upgrade"' not in body.lower()
    # a route without websocket never upgrades
    status, body = upgrade(agent, "chat.example.com", "/upgrade", "websocket")
    assert (status, body) == ("HTTP/1.1 200 OK", b"task2")


def test_the_admin_port_shows_status_and_metrics_to_the_token_only(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    """With --admin-token-file, /status and /metrics (routes, services, task addresses) answer
    only the token; /healthz and /readyz (keepalived's check, gateway-check) stay open and say
    nothing but ok or why not."""
    token = "admin0123456789abcdef0123456789"
    dns.set("tasks.shop", [T1])
    agent = start_agent([{"hosts": ["shop.example.com"], "service": "shop",
                          "port": upstream_port}], admin_token=token)  # ready: /readyz is open
    assert agent.backends_seen("shop.example.com", 2) == {"task1"}
    for path in ("/status", "/metrics", "/status?x=1", "/nothing"):
        for wrong in ("", "nope", token + "0", token[:-1]):
            status, body = agent.admin(path, token=wrong or "-")
            assert status == 401, (path, wrong)
            assert T1 not in body
            assert "shop" not in body
    assert agent.admin("/status", method="HEAD")[0] == 200  # with the token
    status, body = agent.admin("/readyz", token="-")
    assert (status, body) == (200, "ready\n")
    status, body = agent.admin("/healthz", token="-")
    assert status == 200
    assert body.startswith("ok: last cycle ")
    assert agent.status()["endpoints"]["shop"]["addresses"] == [T1]
    assert agent.metrics()["gateway_admin_unauthorized_requests_total"] == 16
    # the gateway-check keepalived runs on the node asks /readyz, without a token
    check = subprocess.run(
        [sys.executable, "-m", "agent.check", "--http",
         f"http://127.0.0.1:{agent.admin_port}/readyz", "--timeout", "2"],
        capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
