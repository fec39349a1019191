"""Idle connections against the admin ports (issue #24, finding 3): the real agent and the real
controller under a container's usual limit of 1024 open files, 1,500 connections that never
send a request, and what their users notice: /readyz answers, a change is applied, and the log
stays small."""

from __future__ import annotations

import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import TASK_ADDRESSES, write_routes
from tests.support import require_programs, wait_until
from tests.support.controller import ControllerProcess
from tests.support.fakedocker import FakeDocker
from tests.support.gateway import Agent, Dnsmasq, Upstream, http_get

IDLE = 1500
LOG_MAX = 100_000  # bytes the log may grow by meanwhile (before: 25 MB in 20 s, tracebacks)


@pytest.fixture
def own_files() -> Iterator[None]:
    """Room in this process for the idle connections (the hard limit here is 20,000)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = IDLE + 500
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.fail(f"the hard open-files limit ({hard}) is below {want}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def limited(args: list[str], soft: int, hard: int) -> list[str]:
    """`args` run under an open-files limit (util-linux's prlimit)."""
    return [require_programs("prlimit")["prlimit"], f"--nofile={soft}:{hard}", "--", *args]


def accept_queue(port: int) -> int:
    """Connections waiting in the kernel for 127.0.0.1:`port`'s listener to accept them."""
    local = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[3] == "0A":  # LISTEN
            return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def idle_connections(port: int) -> list[socket.socket]:
    """IDLE connections to `port` that send nothing. Opened a few at a time while the
    listener's queue has room (a connection the full queue drops waits a second for the
    kernel to retry, and the test would mostly wait); once the server no longer accepts, the
    rest are left connecting, as an attacker's would."""
    conns: list[socket.socket] = []
    accepting = True
    try:
        for i in range(IDLE):
            if accepting and i % 16 == 0:
                deadline = time.monotonic() + 3
                while accept_queue(port) > 16 and (accepting := time.monotonic() < deadline):
                    time.sleep(0.002)
            if accepting:
                conns.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            else:
                conns.append(socket.socket())
                conns[-1].setblocking(False)
                conns[-1].connect_ex(("127.0.0.1", port))
    except BaseException:
        for c in conns:
            c.close()
        raise
    return conns


def closed_by_server(conns: list[socket.socket]) -> int:
    """How many of `conns` the server has closed (EOF waiting)."""
    count = 0
    for c in conns:
        c.setblocking(False)
        try:
            count += c.recv(1) == b""
        except BlockingIOError:
            pass
        except ConnectionError:
            count += 1
    return count


def test_idle_connections_leave_the_gateway_admin_port_answering_and_changes_applied(
        tmp_path: Path, dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        own_files: None) -> None:
    dns.set("tasks.web", [TASK_ADDRESSES[0]])
    route = {"hosts": ["a.test"], "service": "web", "port": upstream_port}
    routes = write_routes(tmp_path / "routes.yaml", [route])
    agent = Agent(tmp_path, routes, dns.nameserver, extra=["--poll-interval", "0.5"])
    # a container's usual limit, hard too: raising the soft limit gains nothing here
    agent.args = limited(agent.args, 1024, 1024)
    agent.start()
    try:
        before = agent.log_file.stat().st_size
        conns = idle_connections(agent.admin_port)
        try:
            assert agent.admin("/readyz") == (200, "ready\n")
            assert agent.admin("/healthz")[0] == 200
            write_routes(routes, [route, {**route, "hosts": ["b.test"]}])
            wait_until(lambda: agent.get("b.test") == (200, "task1"), 15,
                       f"the new route to be served; log:\n{agent.log_tail()}")
            # the connections were held by the agent: those it closed, it closed itself
            assert closed_by_server(conns) >= IDLE - 1024
        finally:
            for c in conns:
                c.close()
        grown = agent.log_file.stat().st_size - before
        assert grown < LOG_MAX, agent.log_tail()
    finally:
        agent.stop()


def test_idle_connections_leave_the_controller_answering_and_labels_applied(
        tmp_path: Path, own_files: None) -> None:
    docker = FakeDocker()
    controller = ControllerProcess(tmp_path, docker)
    # soft 1024, hard 4096: the controller raises its soft limit to the hard one
    controller.args = limited(controller.args, 1024, 4096)
    try:
        controller.start()
        before = controller.log_file.stat().st_size
        conns = idle_connections(controller.port)
        try:
            status, body, _ = http_get(controller.port, "localhost", "/readyz")
            assert (status, body) == (200, "ready\n")
            docker.create("shop", {"gateway.hosts": "shop.test", "gateway.port": "80"})
            wait_until(lambda: "shop.test" in controller.get("/routes")[1], 15,
                       f"the labelled service in /routes; log:\n{controller.log()}")
            assert closed_by_server(conns) >= IDLE - 1024
        finally:
            for c in conns:
                c.close()
        grown = controller.log_file.stat().st_size - before
        assert grown < LOG_MAX, controller.log()
        assert controller.proc is not None
        limits = Path(f"/proc/{controller.proc.pid}/limits").read_text()
        assert [line.split()[3:5] for line in limits.splitlines()
                if line.startswith("Max open files")] == [["4096", "4096"]]
    finally:
        controller.stop()
        docker.stop()
