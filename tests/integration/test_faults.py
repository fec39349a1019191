"""Faults around the gateway, through the whole agent: DNS that flaps, goes silent or answers with
hundreds of tasks; an nginx binary that refuses `-t` or disappears; a worker killed; a reload nginx
cannot carry out; a configuration directory that is read-only or full. And trust: forwarded
headers, Host, the admin port.

Each fault test shows what a user would notice: requests keep their answers while the fault lasts,
the failure is counted (gateway_reloads_total{result="failure"},
gateway_apply_failures_total{stage}) and explained by one log line each time, and the gateway
recovers by itself once the fault clears.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

import pytest

from tests.integration.conftest import TASK_ADDRESSES
from tests.support import free_port, require_programs, require_root, wait_until
from tests.support.dns import ControlledDns
from tests.support.gateway import Agent, Dnsmasq, Upstream, http_get, nginx_children, nginx_wrapper

pytestmark = pytest.mark.integration

T1, T2, T3 = TASK_ADDRESSES[:3]
StartAgent = Callable[..., Agent]


def web(port: int, **extra: object) -> dict[str, object]:
    return {"hosts": ["web"], "service": "web", "port": port, **extra}


def sample(agent: Agent, name: str, **labels: str) -> float:
    key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
                  if labels else "")
    return agent.metrics().get(key, 0.0)


def failures(agent: Agent) -> tuple[float, float]:
    """(gateway_reloads_total{result="failure"}, gateway_apply_failures_total over stages)."""
    m = agent.metrics()
    stages = sum(v for k, v in m.items() if k.startswith("gateway_apply_failures_total{"))
    return m['gateway_reloads_total{result="failure"}'], stages


def log_lines(agent: Agent, pattern: str) -> list[str]:
    return [line for line in agent.log_file.read_text(errors="replace").splitlines()
            if re.search(pattern, line)]


class Traffic:
    """A user: requests for one host, one after another, each on a fresh connection."""

    def __init__(self, agent: Agent, host: str) -> None:
        self.agent, self.host = agent, host
        self.answers: Counter[tuple[int, str]] = Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.answers[self.agent.get(self.host, timeout=10)] += 1
            except OSError as exc:
                self.errors.append(repr(exc))
            time.sleep(0.005)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    @property
    def requests(self) -> int:
        return sum(self.answers.values()) + len(self.errors)

    def failed(self) -> list[str]:
        return self.errors + [f"{n} x {a}" for a, n in self.answers.items() if a[0] != 200]


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def controlled() -> Iterator[ControlledDns]:
    server = ControlledDns(tcp=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def tmpfs() -> Iterator[Callable[..., Path]]:
    """Mount a tiny tmpfs (root); every mount is undone at the end, also when the test fails."""
    require_root()
    require_programs("mount", "umount")
    mounted: list[Path] = []

    def mount(path: Path, size: str = "64k") -> Path:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                        str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; returns it."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:
        while True:
            try:
                f.write(b"\0" * 4096)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return filler


# -- DNS -----------------------------------------------------------------------------------------


def test_answers_flapping_every_poll_cost_a_reload_per_quiet_interval_not_per_flap(
        controlled: ControlledDns, tasks: dict[str, Upstream], upstream_port: int,
        agent_on: Callable[..., Agent]) -> None:
    """Answers that change every round: each state is served, but the reloads are held to one
    per --reload-min-interval (2 s) instead of one per round; failed rounds reload nothing."""
    controlled.set("tasks.web", [T1, T2])
    agent = agent_on(controlled.nameserver, [web(upstream_port)], "--poll-interval", "0.2")
    before = sample(agent, "gateway_reloads_total", result="success")

    controlled.sequence("tasks.web", [[T1, T2], [T1]])
    started = time.monotonic()
    with Traffic(agent, "web") as traffic:
        wait_until(lambda: controlled.rounds("tasks.web") >= 30, 30, "30 rounds of discovery")
    elapsed = time.monotonic() - started
    flaps = controlled.rounds("tasks.web")
    reloads = sample(agent, "gateway_reloads_total", result="success") - before
    print(f"answers flapping: {flaps} rounds in {elapsed:.1f}s, {reloads:.0f} reloads, "
          f"{traffic.requests} requests")
    assert traffic.failed() == []
    assert reloads <= elapsed / 2 + 2, f"{reloads} reloads in {elapsed:.1f}s"
    assert reloads < flaps / 3

    # a server that fails every other round: the last known tasks stay, nothing reloads
    controlled.sequence("tasks.web", [[T1, T2], "servfail", [T1, T2], "silent", [T1, T2],
                                      "refused"])
    # what failed rounds keep is the last answer, both tasks: once both serve, nothing is pending
    wait_until(lambda: agent.backends_seen("web", 6) == {"task1", "task2"} and
               agent.status()["status"] == "no change", 10, "both tasks to be served")
    before = sample(agent, "gateway_reloads_total", result="success")
    start_round = controlled.rounds("tasks.web")
    with Traffic(agent, "web") as traffic:
        wait_until(lambda: controlled.rounds("tasks.web") >= start_round + 18, 40,
                   "18 more rounds")
    assert traffic.failed() == []
    assert {body for (_, body) in traffic.answers} == {"task1", "task2"}
    assert sample(agent, "gateway_reloads_total", result="success") == before
    m = agent.metrics()
    for result in ("servfail", "timeout", "refused"):
        assert m[f'gateway_dns_lookups_total{{result="{result}"}}'] > 0, result


def test_a_silent_nameserver_keeps_traffic_on_the_last_tasks_and_one_line_says_so(
        controlled: ControlledDns, tasks: dict[str, Upstream], upstream_port: int,
        agent_on: Callable[..., Agent]) -> None:
    controlled.set("tasks.web", [T1, T2])
    agent = agent_on(controlled.nameserver, [web(upstream_port)])
    before = sample(agent, "gateway_reloads_total", result="success")

    controlled.fault("*", "silent")  # every query times out, round after round
    with Traffic(agent, "web") as traffic:
        time.sleep(10)
    assert traffic.failed() == []
    assert {body for (_, body) in traffic.answers} == {"task1", "task2"}
    doc = agent.status()
    assert doc["endpoints"]["web"]["stale"] is True
    assert doc["endpoints"]["web"]["addresses"] == [T1, T2]
    assert agent.admin("/healthz")[0] == 200, "timeouts must not stall the loop"
    assert sample(agent, "gateway_upstream_endpoints_stale", service="web") == 1
    assert sample(agent, "gateway_dns_lookups_total", result="timeout") >= 10
    assert sample(agent, "gateway_reloads_total", result="success") == before
    assert len(log_lines(agent, r"dns_lookup_failed name=tasks\.web")) == 1

    # the service changed during the outage; the gateway sees it once DNS answers again
    controlled.set("tasks.web", [T3])
    controlled.fault("*", None)
    wait_until(lambda: agent.backends_seen("web", 6) == {"task3"}, 10,
               "the change made during the outage to be served")
    assert agent.status()["endpoints"]["web"]["stale"] is False
    assert len(log_lines(agent, r"dns_lookup_recovered name=tasks\.web")) == 1


def test_started_while_the_nameserver_is_silent_and_nothing_was_saved(
        controlled: ControlledDns, tasks: dict[str, Upstream], upstream_port: int,
        agent_on: Callable[..., Agent]) -> None:
    """Nothing known yet: nginx serves 503 for the route, the gateway says it is not ready and
    why, and it becomes ready by itself when DNS answers."""
    controlled.set("tasks.web", [T1])
    controlled.fault("*", "silent")
    agent = agent_on(controlled.nameserver, [web(upstream_port)], wait_ready=False)
    wait_until(lambda: agent.get("web")[0] == 503, 20, "nginx to answer 503 for the route")
    doc = agent.status()
    assert "saved" not in doc["status"], doc["status"]
    assert doc["endpoints"]["web"]["stale"] is True
    code, text = agent.admin("/readyz")
    assert code == 503
    assert "discovery" in text
    controlled.fault("*", None)
    wait_until(agent.ready, 10, "the gateway to become ready once DNS answers")
    wait_until(lambda: agent.get("web") == (200, "task1"), 10, "the task to be served")


def test_ready_means_nginx_has_the_tasks_even_when_the_nameserver_is_slow(
        controlled: ControlledDns, tasks: dict[str, Upstream], upstream_port: int,
        agent_on: Callable[..., Agent]) -> None:
    """/readyz says ready only once nginx knows its upstreams' tasks: the first request after
    it reaches a task, also when the nameserver answers the agent's first lookup and then
    nothing for a few seconds (which nginx's own first lookups would have met)."""
    controlled.sequence("tasks.web", [[T1]] + ["silent"] * 4 + [[T1]] * 1000)
    agent = agent_on(controlled.nameserver, [web(upstream_port)])
    assert agent.get("web") == (200, "task1")
    assert controlled.rounds("tasks.web") >= 1  # (the agent's lookup was answered)
    m = agent.metrics()
    assert m['gateway_resolver_queries_total{result="answered"}'] >= 1  # nginx asked the agent


class ManyUpstreams:
    """One HTTP server listening on many loopback addresses, answering with the address hit."""

    def __init__(self, addresses: Sequence[str], port: int) -> None:
        self.addresses, self.port = list(addresses), port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.servers: list[asyncio.Server] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = writer.get_extra_info("sockname")[0]
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                body = address.encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def __enter__(self) -> ManyUpstreams:
        self.thread.start()

        async def start() -> None:
            for address in self.addresses:
                self.servers.append(await asyncio.start_server(self._serve, address, self.port))

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        async def stop() -> None:
            for server in self.servers:
                server.close()
            connections = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in connections:  # nginx's keepalive connections
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def test_hundreds_of_tasks_arrive_over_tcp_and_all_get_traffic(
        controlled: ControlledDns, agent_on: Callable[..., Agent]) -> None:
    many = [f"127.0.{20 + i // 250}.{i % 250 + 1}" for i in range(300)]
    port = free_port("127.0.20.1")
    with ManyUpstreams(many, port):
        controlled.set("tasks.web", many)
        agent = agent_on(controlled.nameserver, [web(port)])
        assert sample(agent, "gateway_upstream_endpoints", service="web") == 300
        assert controlled.resolver.tcp_queries > 0, "the truncated UDP answer was not retried"
        seen = agent.backends_seen("web", 300)
        assert len(seen) >= 250, f"only {len(seen)} of 300 tasks answered 300 requests"
        assert seen <= set(many)

        controlled.set("tasks.web", many[:3])
        wait_until(lambda: agent.backends_seen("web", 12) == set(many[:3]), 10,
                   "the gateway to shrink to three tasks")
        assert sample(agent, "gateway_upstream_endpoints", service="web") == 3


# -- nginx ---------------------------------------------------------------------------------------

# These tests make the agent apply a configuration by changing a service's tasks, which in the
# default mode nginx follows without one (upstream `resolve`): the agent writes task addresses
# itself here, so that every change goes through the apply path under test.
STATIC = ("--upstream-mode", "static")


def test_nginx_t_failing_then_the_binary_gone_then_back(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent, tmp_path: Path) -> None:
    wrapper, flag = nginx_wrapper(tmp_path)
    dns.set("tasks.web", [T1])
    agent = start_agent([web(upstream_port)], "--nginx-binary", str(wrapper), *STATIC)
    assert agent.backends_seen("web", 4) == {"task1"}
    assert failures(agent) == (0, 0)

    # 1. nginx -t refuses every candidate
    flag.touch()
    dns.set("tasks.web", [T1, T2])
    wait_until(lambda: sample(agent, "gateway_apply_failures_total", stage="validate") >= 1, 10,
               "the refused candidate to be counted")
    assert agent.backends_seen("web", 8) == {"task1"}, "the configuration in use keeps serving"
    assert "refused by the test" in agent.status()["last_error"]
    assert sample(agent, "gateway_config_last_reload_successful") == 0
    flag.unlink()
    wait_until(lambda: agent.backends_seen("web", 8) == {"task1", "task2"}, 15,
               "the agent to apply the change once nginx -t passes again")
    # nginx serves the new configuration a moment before the agent has finished verifying it
    wait_until(lambda: sample(agent, "gateway_config_last_reload_successful") == 1, 10,
               "the apply to be counted a success")
    refused, stages = failures(agent)
    assert refused == stages >= 1
    lines = log_lines(agent, r"reload_failed ")
    assert len(lines) == refused, "one log line per failure"
    assert all("stage=validate" in line and "refused by the test" in line for line in lines)

    # 2. the binary disappears (a package upgrade gone wrong): nginx keeps serving, nothing
    # new can be validated
    hidden = wrapper.with_name("nginx-hidden")
    wrapper.rename(hidden)
    dns.set("tasks.web", [T2])
    wait_until(lambda: failures(agent)[0] > refused, 10, "the missing binary to be counted")
    assert agent.backends_seen("web", 8) == {"task1", "task2"}
    line = log_lines(agent, r"reload_failed ")[-1]
    assert "stage=validate" in line
    assert "cannot run" in line
    assert "No such file" in line
    hidden.rename(wrapper)
    wait_until(lambda: agent.backends_seen("web", 6) == {"task2"}, 15,
               "the agent to recover once the binary is back")
    refused, stages = failures(agent)
    assert refused == stages == len(log_lines(agent, r"reload_failed "))
    assert agent.proc is not None
    assert agent.proc.poll() is None


def test_nginx_binary_missing_at_start_is_one_clear_error(
        dns: Dnsmasq, upstream_port: int, start_agent: StartAgent, tmp_path: Path) -> None:
    dns.set("tasks.web", [T1])
    missing = tmp_path / "no-such-dir" / "nginx"
    agent = start_agent([web(upstream_port)], "--nginx-binary", str(missing), wait_ready=False)
    assert agent.proc is not None
    assert agent.proc.wait(30) == 1
    lines = log_lines(agent, r"nginx_unusable")
    assert len(lines) == 1
    assert str(missing) in lines[0]
    assert "the gateway needs nginx 1.29.6 or newer" in lines[0]


def test_an_nginx_too_old_is_refused_naming_both_versions(
        dns: Dnsmasq, upstream_port: int, start_agent: StartAgent, tmp_path: Path) -> None:
    old = tmp_path / "nginx"
    old.write_text("#!/bin/sh\necho 'nginx version: nginx/1.22.1' >&2\n")
    old.chmod(0o755)
    dns.set("tasks.web", [T1])
    agent = start_agent([web(upstream_port)], "--nginx-binary", str(old), wait_ready=False)
    assert agent.proc is not None
    assert agent.proc.wait(30) == 1
    lines = log_lines(agent, r"nginx_unusable")
    assert len(lines) == 1
    assert f"{old} is nginx 1.22.1; the gateway needs nginx 1.29.6 or newer" in lines[0]


def test_a_killed_worker_is_replaced_and_traffic_continues(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.web", [T1, T2])
    agent = start_agent([web(upstream_port)])
    master = agent.status()["nginx"]["pid"]
    before = sample(agent, "gateway_reloads_total", result="success")
    workers = nginx_children(master)
    assert len(workers) == 1  # --worker-processes 1: no other worker to take the traffic

    os.kill(workers[0], signal.SIGKILL)
    # connections wait in the listen queue until the master has started a new worker
    assert agent.backends_seen("web", 10) == {"task1", "task2"}
    replaced = wait_until(lambda: [p for p in nginx_children(master) if p not in workers], 10,
                          "nginx to start a new worker")
    assert len(replaced) == 1
    with Traffic(agent, "web") as traffic:
        time.sleep(1.5)
    assert traffic.failed() == []
    assert traffic.requests > 10
    assert agent.proc is not None
    assert agent.proc.poll() is None
    assert agent.status()["nginx"]["pid"] == master
    assert sample(agent, "gateway_nginx_up") == 1
    assert sample(agent, "gateway_reloads_total", result="success") == before

    # the new worker takes a reload like the old one
    dns.set("tasks.web", [T3])
    wait_until(lambda: agent.backends_seen("web", 6) == {"task3"}, 10, "a reload after the kill")


def test_a_reload_nginx_cannot_carry_out_is_rolled_back_and_retried(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent, tmp_path: Path) -> None:
    """`nginx -t` passes, but the reload fails (it cannot bind a port someone else holds): the
    agent sees that the new generation never serves, puts the old file back and retries."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    builtin = Path(__file__).resolve().parents[2] / "agent/gateway/templates/gateway.conf.j2"
    template = tmp_path / "extra-listener.conf.j2"
    template.write_text(builtin.read_text() + "{% if upstreams | length > 1 %}\n"
                        f"server {{ listen 127.0.0.1:{port}; return 444; }}\n{{% endif %}}\n")
    dns.set("tasks.web", [T1])
    routes = [web(upstream_port), {"hosts": ["api"], "service": "api", "port": upstream_port}]
    agent = start_agent(routes, "--template", str(template))
    live = (agent.prefix / "conf.d" / "gateway.conf").read_text()
    try:
        with Traffic(agent, "web") as traffic:
            dns.set("tasks.api", [T3])
            wait_until(lambda: sample(agent, "gateway_apply_failures_total", stage="verify") >= 1,
                       40, "the failed reload to be counted")
        assert traffic.failed() == []
        assert agent.get("api")[0] == 503, "the old configuration serves"
        assert (agent.prefix / "conf.d" / "gateway.conf").read_text() == live
        assert sample(agent, "gateway_reloads_total", result="failure") >= 1
        assert "still serves generation" in agent.status()["last_error"]
        line = log_lines(agent, r"reload_failed ")[0]
        assert "stage=verify" in line
        assert "rolled back to the previous configuration" in line
        assert log_lines(agent, r"apply_failed") == [], "one line per failure, not two"
    finally:
        busy.close()
    wait_until(lambda: agent.get("api") == (200, "task3"), 40,
               "the retried reload to succeed once the port is free")
    refused, stages = failures(agent)
    assert refused == stages == len(log_lines(agent, r"reload_failed "))


def _temporary_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def a_change_that_cannot_be_written(agent: Agent, dns: Dnsmasq) -> str:
    """A second task appears while the configuration cannot be written: users keep the first
    one's answers without a failure; the failure is counted. Returns its log line."""
    with Traffic(agent, "web") as traffic:
        dns.set("tasks.web", [T1, T2])
        wait_until(lambda: sample(agent, "gateway_apply_failures_total", stage="write") >= 1,
                   10, "the write failure to be counted")
        time.sleep(0.5)
    assert traffic.failed() == []
    assert {body for (_, body) in traffic.answers} == {"task1"}
    line = log_lines(agent, r"reload_failed ")[-1]
    assert "stage=write" in line
    return line


def test_a_read_only_configuration_directory(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent, tmpfs: Callable[..., Path], tmp_path: Path) -> None:
    workdir = tmp_path / "gw"
    conf_d = tmpfs(workdir / "nginx" / "conf.d")
    dns.set("tasks.web", [T1])
    agent = start_agent([web(upstream_port)], *STATIC, workdir=workdir)

    remount(conf_d, "ro")
    assert "Read-only file system" in a_change_that_cannot_be_written(agent, dns)

    remount(conf_d, "rw")
    wait_until(lambda: agent.backends_seen("web", 8) == {"task1", "task2"}, 15,
               "the agent to recover once the directory is writable")
    refused, stages = failures(agent)
    assert refused == stages == len(log_lines(agent, r"reload_failed "))
    assert _temporary_files(conf_d) == []


def test_a_full_configuration_directory_and_a_full_state_directory(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent, tmpfs: Callable[..., Path], tmp_path: Path) -> None:
    workdir = tmp_path / "gw"
    conf_d = tmpfs(workdir / "nginx" / "conf.d")
    state = tmpfs(tmp_path / "state")
    dns.set("tasks.web", [T1])
    agent = start_agent([web(upstream_port)], "--state-dir", str(state), *STATIC,
                        workdir=workdir)
    assert json.loads((state / "endpoints.json").read_text())["endpoints"]["tasks.web"][
        "addresses"] == [T1]

    conf_filler, state_filler = fill(conf_d), fill(state)
    assert "No space left" in a_change_that_cannot_be_written(agent, dns)
    assert _temporary_files(conf_d) == [], "a failed write left a file behind"

    # the configuration directory has room again; the state directory still has none: the
    # change is served, and not saving the endpoints is said once, not fatal
    conf_filler.unlink()
    wait_until(lambda: agent.backends_seen("web", 8) == {"task1", "task2"}, 15,
               "the agent to recover once the directory has room")
    wait_until(lambda: log_lines(agent, r"state_not_saved"), 10, "the failed save to be said")
    agent.wait_cycles(3)
    assert len(log_lines(agent, r"state_not_saved")) == 1
    assert _temporary_files(state) == [], "a failed save left a file behind"
    assert _temporary_files(conf_d) == []

    state_filler.unlink()
    dns.set("tasks.web", [T2])
    wait_until(lambda: json.loads((state / "endpoints.json").read_text())["endpoints"][
        "tasks.web"]["addresses"] == [T2], 15, "the endpoints to be saved again")
    refused, stages = failures(agent)
    assert refused == stages == len(log_lines(agent, r"reload_failed "))


# -- trust ---------------------------------------------------------------------------------------

FORGED = {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https",
          "X-Forwarded-Host": "admin.internal", "X-Forwarded-Port": "8443",
          "X-Forwarded-Prefix": "/admin", "Forwarded": "for=6.6.6.6;proto=https;host=admin",
          "X-Real-IP": "6.6.6.6"}


def test_forwarded_headers_are_kept_only_from_trusted_proxies(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.web", [T1])
    agent = start_agent([web(upstream_port)], "--trusted-proxies", "127.0.0.2/32")

    def seen(source: str, headers: dict[str, str]) -> dict[str, str]:
        status, body, _ = http_get(agent.port, "web", "/headers", headers=headers,
                                   source=source)
        assert status == 200
        return dict(json.loads(body))

    # a client outside the trusted range: what it says about itself is replaced or dropped
    untrusted = seen("127.0.0.1", FORGED)
    assert untrusted["x-forwarded-for"] == "127.0.0.1"
    assert untrusted["x-real-ip"] == "127.0.0.1"
    assert untrusted["x-forwarded-proto"] == "http"
    assert untrusted["x-forwarded-host"] == "web"
    assert "x-forwarded-port" not in untrusted
    assert "x-forwarded-prefix" not in untrusted
    assert "forwarded" not in untrusted

    # the trusted proxy: its headers pass, the chain gets the proxy's address
    trusted = seen("127.0.0.2", FORGED)
    assert trusted["x-forwarded-for"] == "6.6.6.6, 127.0.0.2"
    assert trusted["x-forwarded-proto"] == "https"
    assert trusted["x-forwarded-host"] == "admin.internal"
    assert trusted["x-forwarded-port"] == "8443"
    assert trusted["x-forwarded-prefix"] == "/admin"
    assert trusted["forwarded"] == FORGED["Forwarded"]
    assert trusted["x-real-ip"] == "127.0.0.2", "X-Real-IP is always the peer nginx saw"

    # even a trusted proxy cannot put anything but a scheme, a host name or a port there
    odd = seen("127.0.0.2", {"X-Forwarded-Proto": "javascript", "X-Forwarded-Host": "a/b",
                             "X-Forwarded-Port": "80;1"})
    assert (odd["x-forwarded-proto"], odd["x-forwarded-host"]) == ("http", "web")
    assert "x-forwarded-port" not in odd


def raw_request(port: int, request: bytes) -> tuple[int, str]:
    """Send bytes as they are (what http.client would not); (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def test_a_request_no_route_names_is_refused_however_it_is_made(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.web", [T1])
    agent = start_agent([web(upstream_port)])
    hits = tasks["task1"].server.hits
    refusals = {
        "HTTP/1.0 without Host": b"GET / HTTP/1.0\r\n\r\n",
        "an absolute URI naming another host": (b"GET http://evil.example/ HTTP/1.1\r\n"
                                                b"Host: web\r\nConnection: close\r\n\r\n"),
        "Host with a path": b"GET / HTTP/1.1\r\nHost: web/x\r\nConnection: close\r\n\r\n",
        "two Host headers": (b"GET / HTTP/1.1\r\nHost: evil\r\nHost: web\r\n"
                             b"Connection: close\r\n\r\n"),
        "the status listener's path": (b"GET /stub_status HTTP/1.1\r\nHost: localhost\r\n"
                                       b"Connection: close\r\n\r\n"),
        "the admin server's path": (b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
                                    b"Connection: close\r\n\r\n"),
    }
    for what, request in refusals.items():
        status, body = raw_request(agent.port, request)
        assert status in (400, 404), (what, status, body)
        assert "task1" not in body, what
    assert tasks["task1"].server.hits == hits, "a refused request reached a task"

    # what is the same name to nginx reaches the route: case, a port, a trailing dot, and an
    # absolute URI naming it (which takes precedence over Host)
    for host in ("WEB", f"web:{agent.port}", "web."):
        assert agent.get(host) == (200, "task1"), host
    assert raw_request(agent.port, b"GET http://web/ HTTP/1.1\r\nHost: evil\r\n"
                                   b"Connection: close\r\n\r\n") == (200, "task1")


def listening(pid: int) -> set[tuple[str, int]]:
    """The TCP (IPv4) addresses process `pid` listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
            address, port = fields[1].split(":")
            found.add((socket.inet_ntoa(bytes.fromhex(address)[::-1]), int(port, 16)))
    return found


def test_the_admin_port_on_its_own_address_changes_nothing(
        controlled: ControlledDns, tasks: dict[str, Upstream], upstream_port: int,
        agent_on: Callable[..., Agent]) -> None:
    controlled.set("tasks.web", [T1])
    agent = agent_on(controlled.nameserver, [web(upstream_port)], admin_address="127.0.0.3")
    assert agent.proc is not None
    assert listening(agent.proc.pid) == {("127.0.0.3", agent.admin_port),
                                         ("127.0.0.1", agent.resolver_port)}, \
        "the agent listens on the admin address and, for nginx, on loopback, nowhere else"
    status, body, _ = http_get(agent.port, "x", "/metrics")
    assert status == 404, "the route port does not serve the admin app"
    assert "gateway_" not in body

    before = agent.status()
    counters = {k: v for k, v in agent.metrics().items()
                if k.startswith(("gateway_reloads_total", "gateway_routes_loads_total"))}
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in ("/metrics", "/healthz", "/readyz", "/status", "/reload", "/routes",
                     "/config", "/"):
            status, _, _ = http_get(agent.admin_port, "x", path, method=method,
                                    address=agent.admin_address)
            assert status in (404, 405), (method, path, status)
    after = agent.status()
    assert after["nginx"] == before["nginx"]
    assert after["routes"] == before["routes"]
    assert after["last_reload"] == before["last_reload"]
    assert {k: v for k, v in agent.metrics().items() if k in counters} == counters
