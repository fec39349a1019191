"""What a route asks for, as a client of the real nginx sees it: path prefixes and their
boundary, wildcard hosts over plain HTTP, `least_conn`, `ip_hash`, the timeouts, `host:` targets
and a template of one's own."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import pytest

from tests.integration.conftest import TASK_ADDRESSES
from tests.support import free_port, wait_until
from tests.support.gateway import Agent, Dnsmasq, Upstream, http_get

T1, T2, T3, T4 = TASK_ADDRESSES[:4]
StartAgent = Callable[..., Agent]


def test_a_path_prefix_takes_itself_and_what_is_below_it_nothing_else(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.api", [T1])
    dns.set("tasks.site", [T2])
    dns.set("tasks.only", [T3])
    agent = start_agent([
        {"hosts": ["a.example.com"], "path": "/api", "service": "api", "port": upstream_port},
        {"hosts": ["a.example.com"], "service": "site", "port": upstream_port},
        {"hosts": ["b.example.com"], "path": "/api", "service": "only", "port": upstream_port}])
    for path in ("/api", "/api/", "/api/x", "/api/x/y?q=1"):
        assert agent.get("a.example.com", path) == (200, "task1"), path
    for path in ("/apix", "/ap", "/API", "/", "/x/api", "/api.json"):
        assert agent.get("a.example.com", path) == (200, "task2"), path
    # a host with only a prefix route: the rest of it is nobody's
    assert agent.get("b.example.com", "/api/v1") == (200, "task3")
    assert agent.get("b.example.com", "/apix")[0] == 404
    assert agent.get("b.example.com", "/")[0] == 404


def test_wildcard_hosts_over_plain_http(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.wild", [T1])
    dns.set("tasks.exact", [T2])
    agent = start_agent([
        {"hosts": ["*.wild.example.com"], "service": "wild", "port": upstream_port},
        {"hosts": ["x.wild.example.com"], "service": "exact", "port": upstream_port}])
    assert agent.get("a.wild.example.com") == (200, "task1")
    assert agent.get("A.Wild.Example.Com") == (200, "task1")
    assert agent.get("a.b.wild.example.com") == (200, "task1")  # nginx: any depth
    assert agent.get("x.wild.example.com") == (200, "task2")  # the exact name wins
    assert agent.get("wild.example.com")[0] == 404  # the parent is not under its wildcard
    assert agent.get("awild.example.com")[0] == 404


def test_least_conn_sends_requests_past_a_busy_task(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    """One task is busy with a slow request: least_conn gives the next ones to the other
    (round robin would alternate between them)."""
    dns.set("tasks.web", [T1, T2])
    agent = start_agent([{"hosts": ["web.example.com"], "service": "web",
                          "port": upstream_port, "balance": "least_conn"}])
    slow: dict[str, tuple[int, str]] = {}
    busy = tasks["task1"].server.hits + tasks["task2"].server.hits
    client = threading.Thread(target=lambda: slow.update(
        answer=agent.get("web.example.com", "/slow?s=3", timeout=10)))
    client.start()
    wait_until(lambda: tasks["task1"].server.in_flight + tasks["task2"].server.in_flight == 1,
               5, "the slow request to reach a task")
    quick = [agent.get("web.example.com") for _ in range(6)]
    client.join(10)
    assert slow["answer"][0] == 200
    assert len({body for _, body in quick}) == 1, quick
    assert {status for status, _ in quick} == {200}
    assert quick[0][1] != slow["answer"][1]
    assert tasks["task1"].server.hits + tasks["task2"].server.hits == busy + 7


def test_ip_hash_keeps_each_client_on_one_task(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    """ip_hash hashes the first three octets of an IPv4 client: clients 127.N.0.1 differ."""
    dns.set("tasks.web", [T1, T2, T3, T4])
    agent = start_agent([{"hosts": ["web.example.com"], "service": "web",
                          "port": upstream_port, "balance": "ip_hash"}])
    seen: dict[str, set[str]] = {}
    for n in range(1, 9):
        client = f"127.{n}.0.1"
        seen[client] = {http_get(agent.port, "web.example.com", source=client)[1]
                        for _ in range(6)}
    assert all(len(backends) == 1 for backends in seen.values()), seen
    assert len(set().union(*seen.values())) > 1, seen  # and not everyone on one task


@pytest.fixture
def unanswering(upstream_port: int) -> Iterator[tuple[str, int]]:
    """An address whose listen queue is full: a connection to it is never answered (the SYN
    is dropped), as with a task on a node that went away."""
    address = TASK_ADDRESSES[7]
    port = free_port(address)
    listener = socket.socket()
    listener.bind((address, port))
    listener.listen(0)
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((address, port))
        fillers.append(s)
    yield address, port
    for s in fillers:
        s.close()
    listener.close()


def test_connect_and_read_timeouts(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        unanswering: tuple[str, int], start_agent: StartAgent) -> None:
    dns.set("tasks.web", [T1])
    dns.set("tasks.gone", [unanswering[0]])
    agent = start_agent([
        {"hosts": ["quick.example.com"], "service": "web", "port": upstream_port,
         "read_timeout": "1s"},
        {"hosts": ["patient.example.com"], "service": "web", "port": upstream_port},
        {"hosts": ["gone.example.com"], "service": "gone", "port": unanswering[1],
         "connect_timeout": "300ms"}])
    assert agent.get("quick.example.com", "/slow?s=3", timeout=10)[0] == 504
    assert agent.get("patient.example.com", "/slow?s=2", timeout=10) == (200, "task1")
    assert agent.get("gone.example.com", timeout=10)[0] == 504


def test_a_host_target_is_resolved_as_it_is(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    """`host:` routes to a DNS name the operator chose, not to tasks.<name>."""
    dns.set("legacy.internal", [T3, T4])
    dns.set("tasks.legacy.internal", [T1])  # must not be asked
    agent = start_agent([{"hosts": ["old.example.com"], "host": "legacy.internal",
                          "port": upstream_port}])
    assert agent.backends_seen("old.example.com", 8) == {"task3", "task4"}
    assert agent.status()["endpoints"]["legacy.internal"]["lookup"] == "legacy.internal"


def test_a_template_of_one_s_own_serves(
        tmp_path: Path, dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    """--template: the built-in template with one header more in every proxied location."""
    builtin = (resources.files("agent.gateway") / "templates" / "gateway.conf.j2").read_text()
    # (a plain route's location: its proxy settings are the http level's, plan/scale.py)
    marker = ("        proxy_pass http{% if loc.upstream_tls %}s{% endif %}://"
              "{{ loc.upstream | nginx }};\n")
    assert builtin.count(marker) == 1
    mine = tmp_path / "mine.conf.j2"
    mine.write_text(builtin.replace(marker, marker + "        add_header X-Template mine;\n"))
    dns.set("tasks.web", [T1])
    agent = start_agent([{"hosts": ["web.example.com"], "service": "web",
                          "port": upstream_port}], "--template", str(mine))
    status, body, headers = http_get(agent.port, "web.example.com")
    assert (status, body) == (200, "task1")
    assert headers["x-template"] == "mine"
    assert agent.status()["last_reload"]["result"] == "success"
