"""tcp routes through the real nginx (its stream module), as a TCP or TLS client notices them.

Tasks are echo servers on their own loopback addresses (tests/support/tcp.py); clients are told
apart by the loopback address they connect from. TLS passthrough is shown by the client itself:
it verifies the task's own certificate for the name it asked, which the gateway never had.
"""

from __future__ import annotations

import socket
import ssl
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from tests.integration.conftest import write_routes
from tests.integration.test_cli import gateway_agent
from tests.support import free_port, wait_until
from tests.support.gateway import Agent, Dnsmasq, Upstream, http_get, nginx_wrapper
from tests.support.tcp import EchoTask, Refused, exchange
from tests.support.tlsca import TestCA

INSIDE, OUTSIDE = "127.0.20.5", "127.0.21.5"
StartAgent = Callable[..., Agent]
RELOADS = 'gateway_reloads_total{result="success"}'


def routes_file(path: Path, tcp: Sequence[dict[str, Any]],
                routes: Sequence[dict[str, Any]] = ()) -> Path:
    return write_routes(path, routes, tcp)


@pytest.fixture
def tcp_agent(dns: Dnsmasq, agent_on: Callable[..., Agent]) -> StartAgent:
    """Start an agent whose routes file has `tcp` routes (and `routes`); stopped at the end."""

    def start(tcp: Sequence[dict[str, Any]], routes: Sequence[dict[str, Any]] = (), *extra: str,
              wait_ready: bool = True) -> Agent:
        return agent_on(dns.nameserver, routes, *extra, wait_ready=wait_ready, tcp=tcp)

    return start


@pytest.fixture
def tasks_on() -> Iterator[Callable[..., list[EchoTask]]]:
    started: list[EchoTask] = []

    def start(names_addresses: dict[str, str], port: int, **options: Any) -> list[EchoTask]:
        new = [EchoTask(name, address, port, **options)
               for name, address in names_addresses.items()]
        started.extend(new)
        return new

    yield start
    for task in started:
        task.stop()


def refused(port: int, **kw: Any) -> bool:
    try:
        exchange(port, **kw)
    except Refused:
        return True
    return False


def closed_on_plain_bytes(port: int) -> bool:
    """Send bytes that are no TLS hello first (a task would greet before reading, so waiting for
    a greeting would only meet nginx's preread timeout): nginx must close, never pass them on."""
    with socket.create_connection(("127.0.0.1", port), timeout=3.0) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:
            return sock.recv(4096) == b""
        except ConnectionResetError:
            return True


# -- plain TCP -------------------------------------------------------------------------------------


def test_a_tcp_port_reaches_every_task_of_its_service_and_follows_them_without_reload(
        dns: Dnsmasq, tcp_agent: StartAgent, tasks_on: Callable[..., list[EchoTask]]) -> None:
    port = free_port("127.0.13.1")
    tasks_on({"db1": "127.0.13.1", "db2": "127.0.13.2", "db3": "127.0.13.3"}, port)
    dns.set("tasks.db", ["127.0.13.1", "127.0.13.2"])
    listen = free_port()
    agent = tcp_agent([{"listen": listen, "service": "db", "port": port}])

    answers = [exchange(listen, f"hello {i}".encode()) for i in range(20)]
    assert Counter(a.greeting for a in answers) == {"db1": 10, "db2": 10}, "round robin"
    assert [a.echoed for a in answers] == [f"hello {i}".encode() for i in range(20)]
    # a connection is one task's for its whole life: many messages, in order
    with socket.create_connection(("127.0.0.1", listen), timeout=5) as conn, \
            conn.makefile("rb") as reader:
        first = reader.readline().strip().decode()
        for i in range(50):
            conn.sendall(b"%d\n" % i)
            assert reader.readline() == b"%d\n" % i
    assert first in ("db1", "db2")

    # a third task: nginx finds it itself (resolve), no reload
    reloads = agent.metrics()[RELOADS]
    dns.set("tasks.db", ["127.0.13.1", "127.0.13.2", "127.0.13.3"])
    wait_until(lambda: exchange(listen).greeting == "db3", 15, "the new task to be reached")
    assert agent.metrics()[RELOADS] == reloads
    assert {t["listen"] for t in agent.status()["tcp"]} == {listen}


def test_allow_lets_only_the_listed_clients_reach_a_tcp_port(
        dns: Dnsmasq, tcp_agent: StartAgent, tasks_on: Callable[..., list[EchoTask]]) -> None:
    port = free_port("127.0.13.4")
    (task,) = tasks_on({"db": "127.0.13.4"}, port)
    dns.set("tasks.db", ["127.0.13.4"])
    listen = free_port()
    tcp_agent([{"listen": listen, "service": "db", "port": port, "allow": ["127.0.20.0/24"]}])
    assert exchange(listen, source=INSIDE).greeting == "db"
    assert refused(listen, source=OUTSIDE)
    assert refused(listen, source="127.0.0.1")
    assert task.connections == 1, "a refused client never reaches the task"


def test_proxy_protocol_tells_the_task_the_client_address(
        dns: Dnsmasq, tcp_agent: StartAgent, tasks_on: Callable[..., list[EchoTask]]) -> None:
    port = free_port("127.0.13.5")
    tasks_on({"pp": "127.0.13.5"}, port, proxy_protocol=True)
    dns.set("tasks.pp", ["127.0.13.5"])
    listen = free_port()
    tcp_agent([{"listen": listen, "service": "pp", "port": port, "proxy_protocol": True}])
    greeting = exchange(listen, source=INSIDE).greeting
    name, proxy, family, client, server, _client_port, server_port = greeting.split(" ")
    assert (name, proxy, family, client, server, server_port) == (
        "pp", "PROXY", "TCP4", INSIDE, "127.0.0.1", str(listen))


def test_a_service_without_tasks_refuses_until_one_runs(
        dns: Dnsmasq, tcp_agent: StartAgent, tasks_on: Callable[..., list[EchoTask]]) -> None:
    port = free_port("127.0.13.6")
    tasks_on({"late": "127.0.13.6"}, port)
    listen = free_port()
    agent = tcp_agent([{"listen": listen, "service": "late", "port": port,
                        "connect_timeout": "500ms", "idle_timeout": "30s"}])
    assert refused(listen)
    dns.set("tasks.late", ["127.0.13.6"])
    # a service back from no task is a reload; while it is under way old workers still accept
    wait_until(lambda: any(h["status"] == "reloaded: +1 endpoints for tasks.late"
                           for h in agent.status()["history"]), 15, "the reload")
    assert [exchange(listen).greeting for _ in range(5)] == ["late"] * 5


# -- TLS passthrough by SNI ------------------------------------------------------------------------


def test_tls_passes_through_by_sni_to_the_task_with_its_own_certificate(
        dns: Dnsmasq, tcp_agent: StartAgent, tasks_on: Callable[..., list[EchoTask]]) -> None:
    ca = TestCA()
    alpha_cert = ca.issue("alpha.example.com")
    beta_cert = ca.issue("beta.example.com", "*.beta.example.com")
    port = free_port("127.0.14.1")
    tasks_on({"alpha": "127.0.14.1"}, port, certificate=alpha_cert)
    tasks_on({"beta": "127.0.14.2"}, port, certificate=beta_cert)
    dns.set("tasks.alpha", ["127.0.14.1"])
    dns.set("tasks.beta", ["127.0.14.2"])
    listen = free_port()
    tcp_agent([
        {"listen": listen, "sni": ["alpha.example.com"], "service": "alpha", "port": port},
        {"listen": listen, "sni": ["beta.example.com", "*.beta.example.com"], "service": "beta",
         "port": port, "allow": ["127.0.20.0/24"]},
    ])
    client = ca.client_context()  # trusts the test CA only, and checks the name

    def reach(name: str, **kw: Any) -> tuple[str, bytes | None]:
        answer = exchange(listen, b"secret", tls=client, server_hostname=name, **kw)
        assert answer.echoed == b"secret"
        return answer.greeting, answer.certificate

    # the client verified the task's own certificate for the name it asked: the gateway (which
    # has no certificate at all here) passed TLS through to the task
    greeting, cert = reach("alpha.example.com")
    assert (greeting, cert) == ("alpha", alpha_cert.cert.public_bytes(Encoding.DER))
    assert reach("beta.example.com", source=INSIDE) == (
        "beta", beta_cert.cert.public_bytes(Encoding.DER))
    assert reach("x.beta.example.com", source=INSIDE)[0] == "beta", "a wildcard name"
    assert reach("ALPHA.example.com")[0] == "alpha", "names ignore case"

    # a client that `allow` does not list: refused for beta, and alpha still serves it
    assert refused(listen, tls=client, server_hostname="beta.example.com", source=OUTSIDE)
    assert reach("alpha.example.com", source=OUTSIDE)[0] == "alpha"

    anything = ssl.create_default_context()
    anything.check_hostname = False
    anything.verify_mode = ssl.CERT_NONE
    # a name no route gives, no name at all, and no TLS: refused, never some task
    assert refused(listen, tls=anything, server_hostname="gamma.example.com")
    assert refused(listen, tls=anything, server_hostname="beta.example.com.evil.test",
                   source=INSIDE)
    assert refused(listen, tls=anything, server_hostname=None)
    assert closed_on_plain_bytes(listen), "plain bytes where a TLS hello belongs"


def test_tcp_routes_beside_http_routes_and_a_live_change_of_the_file(
        dns: Dnsmasq, tcp_agent: StartAgent, tasks_on: Callable[..., list[EchoTask]]) -> None:
    """HTTP routes serve as before beside tcp routes, and tcp routes come and go with the
    routes file (a reload: nginx reads both files)."""
    port = free_port("127.0.15.1")
    tasks_on({"db": "127.0.15.1"}, port)
    web = Upstream("web", "127.0.15.2", port)
    try:
        dns.set("tasks.db", ["127.0.15.1"])
        dns.set("tasks.web", ["127.0.15.2"])
        first, second = free_port(), free_port()
        http = [{"hosts": ["web"], "service": "web", "port": port}]
        agent = tcp_agent([{"listen": first, "service": "db", "port": port}], http)
        assert http_get(agent.port, "web")[:2] == (200, "web")
        assert exchange(first).greeting == "db"
        assert not _listening(second)

        routes_file(agent.workdir / "routes.yaml",
                    [{"listen": second, "service": "db", "port": port}], http)
        wait_until(lambda: _listening(second) and not refused(second), 15,
                   "the new tcp route to serve")
        wait_until(lambda: not _listening(first), 15, "the old tcp route to close its port")
        assert http_get(agent.port, "web")[:2] == (200, "web")
    finally:
        web.stop()


def _refused_ports(agent: Agent) -> dict[int, str]:
    """The tcp ports /status says nginx cannot listen on, with why."""
    return {t["listen"]: t["refused"] for t in agent.status()["tcp"] if "refused" in t}


def test_a_tcp_port_another_program_holds_is_refused_alone_until_it_is_free(
        dns: Dnsmasq, tcp_agent: StartAgent, tasks_on: Callable[..., list[EchoTask]]) -> None:
    """nginx -t does not bind: a port another program holds would fail only at the reload,
    which keeps the old configuration for every route. That route is refused alone, in
    nginx's words; an http route added with it serves; once the port is free it is applied."""
    port = free_port("127.0.15.3")
    tasks_on({"db": "127.0.15.3"}, port)
    web = Upstream("web", "127.0.15.4", port)
    dns.set("tasks.db", ["127.0.15.3"])
    dns.set("tasks.web", ["127.0.15.4"])
    first = free_port()
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        busy = taken.getsockname()[1]
        agent = tcp_agent([{"listen": first, "service": "db", "port": port}])
        assert http_get(agent.port, "web")[0] == 404
        routes_file(agent.workdir / "routes.yaml", [
            {"listen": first, "service": "db", "port": port},
            {"listen": busy, "service": "db", "port": port}],
            [{"hosts": ["web"], "service": "web", "port": port}])
        why = f"bind() to 127.0.0.1:{busy} failed (98: Address already in use)"
        wait_until(lambda: any(h["status"].startswith("reloaded") and h["status"].endswith(
            f"; tcp port refused: {busy}: {why}") for h in agent.status()["history"]), 15,
                   "the reload of the rest, saying why that port is refused")
        assert http_get(agent.port, "web")[:2] == (200, "web"), "the http route added with it"
        assert _refused_ports(agent) == {busy: why}
        assert exchange(first).greeting == "db", "the other tcp route serves"
        assert f"tcp_port_refused listen={busy} error={why!r}" in agent.log_tail(200)
        assert not any(h["status"].startswith("reload refused")
                       for h in agent.status()["history"])
    finally:
        taken.close()
    wait_until(lambda: _listening(busy) and not refused(busy), 15,
               "the freed port's route to serve")
    assert exchange(busy).greeting == "db"
    assert _refused_ports(agent) == {}
    assert f"tcp_port_free listen={busy}" in agent.log_tail(200)
    web.stop()


def test_an_agent_started_with_a_tcp_port_another_program_holds_serves_the_rest(
        dns: Dnsmasq, tcp_agent: StartAgent, tasks_on: Callable[..., list[EchoTask]]) -> None:
    """A (re)start with such a route is no crash loop (nginx would not start, the agent exit
    1 and swarm restart it, serving nothing): the other routes serve, that one waits."""
    port = free_port("127.0.15.5")
    tasks_on({"db": "127.0.15.5"}, port)
    web = Upstream("web", "127.0.15.6", port)
    dns.set("tasks.db", ["127.0.15.5"])
    dns.set("tasks.web", ["127.0.15.6"])
    first = free_port()
    try:
        with socket.create_server(("127.0.0.1", 0)) as taken:
            busy = taken.getsockname()[1]
            agent = tcp_agent([{"listen": first, "service": "db", "port": port},
                               {"listen": busy, "service": "db", "port": port}],
                              [{"hosts": ["web"], "service": "web", "port": port}])
            assert http_get(agent.port, "web")[:2] == (200, "web")
            assert exchange(first).greeting == "db"
            assert _refused_ports(agent) == {
                busy: f"bind() to 127.0.0.1:{busy} failed (98: Address already in use)"}
            assert agent.stop() == 0
            agent.start()
            assert agent.proc is not None
            assert agent.proc.poll() is None, "still running"
            assert http_get(agent.port, "web")[:2] == (200, "web")
            assert exchange(first).greeting == "db"
        wait_until(lambda: _listening(busy) and not refused(busy), 15,
                   "the freed port's route to serve")
    finally:
        web.stop()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return False
    return True


# -- what the gateway refuses ----------------------------------------------------------------------


def test_a_tcp_route_on_the_gateways_own_port_stops_the_start_naming_it(
        dns: Dnsmasq, tmp_path: Path) -> None:
    agent = Agent(tmp_path, tmp_path / "routes.yaml", dns.nameserver)
    https = free_port()
    routes_file(tmp_path / "routes.yaml", [
        {"listen": agent.port, "service": "db", "port": 5432},
        {"listen": https, "sni": ["a.example.com"], "service": "db", "port": 5432}])
    agent.args += ["--https-listen", f"127.0.0.1:{https}"]
    agent.start(wait_ready=False)
    try:
        assert agent.proc is not None
        assert agent.proc.wait(30) == 1
    finally:
        agent.stop()
    log = agent.log_tail()
    assert f"tcp[0].listen: port {agent.port} is the gateway's HTTP port (--listen)" in log
    assert f"tcp[1].listen: port {https} is the gateway's HTTPS port" in log
    assert "not supported" in log


def test_without_the_stream_module_tcp_routes_are_refused_saying_why(
        dns: Dnsmasq, tmp_path: Path) -> None:
    """An nginx whose stream module cannot be found (here a wrapper script, whose own folder
    has no modules) serves HTTP routes, and refuses tcp routes with the reason."""
    wrapper, _ = nginx_wrapper(tmp_path)
    listen = free_port()
    agent = Agent(tmp_path, routes_file(tmp_path / "routes.yaml", [
        {"listen": listen, "service": "db", "port": 5432}]), dns.nameserver,
        extra=["--nginx-binary", str(wrapper)])
    agent.start(wait_ready=False)
    try:
        assert agent.proc is not None
        assert agent.proc.wait(30) == 1
    finally:
        agent.stop()
    assert "tcp routes need nginx's stream module" in agent.log_tail()
    assert "has no stream module" in agent.log_tail()


def test_check_and_render_know_tcp_routes(tmp_path: Path) -> None:
    routes = routes_file(tmp_path / "routes.yaml", [
        {"listen": 5432, "service": "db", "port": 5432},
        {"listen": 9443, "sni": ["db.example.com"], "service": "db", "port": 5432}],
        [{"hosts": ["a.example.com"], "service": "a", "port": 80}])
    done = gateway_agent("check", "--routes", str(routes))
    assert (done.returncode, done.stdout.split(": ", 1)[1]) == (
        0, "ok, 1 routes, 2 tcp routes, 1 host names, 2 targets\n")
    done = gateway_agent("check", "--routes", str(routes), "--https-listen", "9443")
    assert done.returncode == 1
    assert "tcp[1].listen: port 9443 is the gateway's HTTPS port" in done.stderr
    snapshot = tmp_path / "snapshot.json"
    snapshot.write_text('{"db": ["10.0.1.3"]}')
    done = gateway_agent("render", "--routes", str(routes), "--endpoints", str(snapshot))
    assert done.returncode == 0, done.stderr
    http, stream = done.stdout.split("# ---- the stream context (conf.d/stream.conf) ----\n")
    assert "server tasks.db:5432 resolve" not in http
    assert "    server tasks.db:5432 resolve max_fails=1 fail_timeout=5s;\n" in stream
    assert "    listen 0.0.0.0:9443;\n    # TLS passes through" in stream
