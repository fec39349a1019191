"""The gateway end to end on loopback: real nginx, real dnsmasq, real HTTP upstreams."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import TASK_ADDRESSES, write_routes
from tests.support import CI, wait_until
from tests.support.gateway import Agent, Dnsmasq, Upstream

T1, T2, T3, T4 = TASK_ADDRESSES[:4]
StartAgent = Callable[..., Agent]


def manager_and_dmz(port: int) -> list[dict[str, object]]:
    return [
        {"hosts": ["managerhttp", "manager.example.com"], "service": "managerhttp", "port": port},
        {"hosts": ["dmzhttp"], "service": "dmzhttp", "port": port, "zone": "dmz"},
    ]


def reloads(agent: Agent, result: str = "success") -> float:
    return agent.metrics()[f'gateway_reloads_total{{result="{result}"}}']


def test_each_host_reaches_its_service(dns: Dnsmasq, tasks: dict[str, Upstream],
                                       upstream_port: int, start_agent: StartAgent) -> None:
    dns.set("tasks.managerhttp", [T1, T2])
    dns.set("tasks.dmzhttp", [T3])
    agent = start_agent(manager_and_dmz(upstream_port))

    assert agent.backends_seen("managerhttp") == {"task1", "task2"}
    assert agent.backends_seen("manager.example.com") == {"task1", "task2"}
    assert agent.backends_seen("MANAGERHTTP") == {"task1", "task2"}  # host names ignore case
    assert agent.backends_seen("dmzhttp") == {"task3"}


def test_task_added_gets_traffic_and_removed_task_stops(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.managerhttp", [T1])
    poll = 1.0
    agent = start_agent(manager_and_dmz(upstream_port)[:1], "--poll-interval", str(poll))
    assert agent.backends_seen("managerhttp") == {"task1"}

    # Docker's DNS answers with a 600 s TTL (and so does this dnsmasq): a cached answer would
    # hide the new task for ten minutes.
    changed = time.monotonic()
    dns.set("tasks.managerhttp", [T1, T2])
    wait_until(lambda: "task2" in agent.backends_seen("managerhttp", 4), 2 * poll + 1.0,
               "the new task to get traffic within two poll intervals")
    added_after = time.monotonic() - changed
    assert agent.backends_seen("managerhttp") == {"task1", "task2"}

    time.sleep(2.0)  # a quiet period: reloads are coalesced within --reload-min-interval
    changed = time.monotonic()
    dns.set("tasks.managerhttp", [T2])
    wait_until(lambda: agent.backends_seen("managerhttp", 10) == {"task2"}, 2 * poll + 1.0,
               "the removed task to stop getting traffic")
    print(f"task added: {added_after:.2f}s, removed: {time.monotonic() - changed:.2f}s")
    assert agent.metrics()['gateway_upstream_endpoints{service="managerhttp"}'] == 1


def test_nginx_learns_of_a_task_within_seconds_whatever_the_poll(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    """nginx asks the agent for its upstreams' names once a second, and the agent looks a
    name up when nginx asks for it (drivers/dnsserver.py, the reconciler's look_again): with
    a poll of 60 s, a task added gets traffic and a task removed stops getting it within a
    few seconds, without a reload."""
    dns.set("tasks.managerhttp", [T1])
    agent = start_agent(manager_and_dmz(upstream_port)[:1], "--poll-interval", "60")
    assert agent.backends_seen("managerhttp") == {"task1"}
    before = reloads(agent)
    dns.set("tasks.managerhttp", [T1, T2])
    wait_until(lambda: "task2" in agent.backends_seen("managerhttp", 4), 10.0,
               "the new task to get traffic long before the next poll (60 s)")
    dns.set("tasks.managerhttp", [T2])
    wait_until(lambda: agent.backends_seen("managerhttp", 10) == {"task2"}, 10.0,
               "the removed task to stop getting traffic long before the next poll")
    assert reloads(agent) == before


def test_service_without_tasks_answers_503_and_nginx_stays_up(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.managerhttp", [T1])
    agent = start_agent(manager_and_dmz(upstream_port))  # tasks.dmzhttp: NXDOMAIN

    status, body = agent.get("dmzhttp")
    assert status == 503
    assert "no running task of dmzhttp" in body
    assert agent.get("managerhttp") == (200, "task1")

    dns.set("tasks.managerhttp", [])  # scaled to zero
    wait_until(lambda: agent.get("managerhttp")[0] == 503, 5, "503 once the last task is gone")
    doc = agent.status()
    assert doc["endpoints"]["managerhttp"]["state"] == "none"
    assert doc["endpoints"]["managerhttp"]["stale"] is False
    assert doc["nginx"]["running"] is True

    dns.set("tasks.managerhttp", [T2])
    wait_until(lambda: agent.get("managerhttp") == (200, "task2"), 5, "traffic after scale-up")


def test_dns_outage_keeps_traffic_on_last_known_tasks(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.managerhttp", [T1, T2])
    dns.set("tasks.dmzhttp", [T3])
    agent = start_agent(manager_and_dmz(upstream_port))
    before = reloads(agent)

    dns.stop()
    wait_until(lambda: agent.status()["endpoints"]["managerhttp"]["stale"], 5,
               "the endpoints to be marked stale")
    assert agent.backends_seen("managerhttp") == {"task1", "task2"}
    assert agent.backends_seen("dmzhttp") == {"task3"}
    m = agent.metrics()
    assert m['gateway_upstream_endpoints_stale{service="managerhttp"}'] == 1
    assert m['gateway_upstream_endpoints{service="managerhttp"}'] == 2
    assert m['gateway_dns_lookups_total{result="timeout"}'] + \
        m['gateway_dns_lookups_total{result="error"}'] > 0
    assert reloads(agent) == before, "a failed lookup must not change the configuration"
    # logged once when the failure starts, not every cycle
    agent.wait_cycles(3)
    assert agent.log_tail(400).count("dns_lookup_failed name=tasks.managerhttp") == 1

    dns.start()
    dns.set("tasks.managerhttp", [T1, T2])
    dns.set("tasks.dmzhttp", [T3])
    wait_until(lambda: not agent.status()["endpoints"]["managerhttp"]["stale"], 5,
               "discovery to recover by itself")


def test_unknown_or_missing_host_is_refused(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.managerhttp", [T1])
    agent = start_agent(manager_and_dmz(upstream_port)[:1])
    before = tasks["task1"].server.hits

    for host in ("evil.example.com", "managerhttp.evil.example.com", "127.0.0.1",
                 "xmanagerhttp"):
        status, body = agent.get(host)
        assert status == 404, (host, status, body)
        assert "no route for this host" in body
    # HTTP/1.1 without a Host, or an empty one: nginx refuses it itself
    assert agent.get(None)[0] == 400
    assert agent.get("")[0] == 400
    assert tasks["task1"].server.hits == before, "a refused request reached a task"


def test_forwarded_headers_from_clients_are_replaced(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    import json

    dns.set("tasks.managerhttp", [T1])
    agent = start_agent(manager_and_dmz(upstream_port)[:1])
    status, body = agent.get("managerhttp", "/headers", headers={
        "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "admin.internal"})
    seen = json.loads(body)
    assert status == 200
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-real-ip"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "managerhttp"
    assert seen["host"] == "managerhttp"


def test_configuration_nginx_rejects_is_rolled_back(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent, tmp_path: Path) -> None:
    # A user's template with a mistake that shows only once a second service has tasks.
    builtin = Path(__file__).resolve().parents[2] / "agent/gateway/templates/gateway.conf.j2"
    template = tmp_path / "custom.conf.j2"
    template.write_text(builtin.read_text() +
                        "{% if upstreams | length > 1 %}\nproxy_pass_typo on;\n{% endif %}\n")
    dns.set("tasks.managerhttp", [T1])
    agent = start_agent(manager_and_dmz(upstream_port), "--template", str(template))
    live = (agent.prefix / "conf.d" / "gateway.conf").read_text()

    dns.set("tasks.dmzhttp", [T3])
    wait_until(lambda: reloads(agent, "failure") >= 1, 5, "the reload to be refused")
    doc = agent.status()
    assert "nginx -t said" in doc["last_error"]
    assert "proxy_pass_typo" in doc["last_error"]
    assert (agent.prefix / "conf.d" / "gateway.conf").read_text() == live
    assert agent.get("managerhttp") == (200, "task1")
    assert agent.get("dmzhttp")[0] == 503  # still the old configuration
    assert agent.metrics()['gateway_config_last_reload_successful'] == 0
    assert not list((agent.prefix / "conf.d").glob(".*")), "temporary files were left behind"

    dns.set("tasks.dmzhttp", [])  # the fault clears: back to a configuration nginx accepts
    wait_until(lambda: agent.metrics()["gateway_config_last_reload_successful"] == 1, 10,
               "the agent to recover")


def test_nothing_changing_means_no_reload(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.managerhttp", [T1, T2])
    dns.set("tasks.dmzhttp", [T3])
    agent = start_agent(manager_and_dmz(upstream_port))
    before = agent.metrics()
    agent.wait_cycles(5)  # five cycles looked, and found nothing to do
    after = agent.metrics()
    assert after['gateway_reloads_total{result="success"}'] == \
        before['gateway_reloads_total{result="success"}']
    assert after['gateway_reconcile_cycles_total{result="ok"}'] >= \
        before['gateway_reconcile_cycles_total{result="ok"}'] + 5
    # the answers in a different order are the same endpoints
    dns.set("tasks.managerhttp", [T2, T1])
    agent.wait_cycles(3)
    assert reloads(agent) == after['gateway_reloads_total{result="success"}']


def test_burst_of_changes_is_coalesced(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.managerhttp", [T1])
    # with task addresses in the configuration (--upstream-mode static); by default nginx
    # follows tasks itself and a burst costs no reload at all (test_lossless.py)
    agent = start_agent(manager_and_dmz(upstream_port)[:1], "--poll-interval", "0.2",
                        "--upstream-mode", "static")
    before = reloads(agent)
    # a rolling update of four tasks seen as eight changes in four seconds
    for i in range(8):
        dns.set("tasks.managerhttp", TASK_ADDRESSES[: 1 + i % 4] if i % 2 else [T1, T2])
        time.sleep(0.5)
    dns.set("tasks.managerhttp", [T3, T4])
    wait_until(lambda: agent.backends_seen("managerhttp", 10) == {"task3", "task4"}, 5,
               "the last state of the burst to be served")
    done = reloads(agent) - before
    assert 1 <= done <= 4, f"{done} reloads for a burst of 9 changes over ~4.5 s"


def test_metrics_parse_and_count(dns: Dnsmasq, tasks: dict[str, Upstream],
                                 upstream_port: int, start_agent: StartAgent) -> None:
    dns.set("tasks.managerhttp", [T1, T2])
    dns.set("tasks.dmzhttp", [T3])
    agent = start_agent(manager_and_dmz(upstream_port))
    for _ in range(5):
        agent.get("managerhttp")
    wait_until(lambda: agent.metrics().get("nginx_http_requests_total", 0) >= 5, 5,
               "nginx's request counter")
    m = agent.metrics()
    assert m['gateway_upstream_endpoints{service="managerhttp"}'] == 2
    assert m['gateway_upstream_endpoints{service="dmzhttp"}'] == 1
    assert m["gateway_nginx_up"] == 1
    assert m["gateway_routes"] == 2
    assert m["gateway_config_last_reload_success_timestamp_seconds"] > time.time() - 60
    assert m["gateway_dns_lookup_duration_seconds_count"] > 0
    assert m["gateway_reconcile_duration_seconds_count"] > 0
    assert m['gateway_dns_lookups_total{result="ok"}'] > 0
    assert m["nginx_connections_active"] >= 1
    promtool = shutil.which("promtool")
    if promtool is None and CI:
        pytest.fail("promtool is missing under CI=true")
    if promtool:
        body = agent.admin("/metrics")[1]
        check = subprocess.run([promtool, "check", "metrics"], input=body.encode(),
                               capture_output=True)
        assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def test_admin_endpoints(dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
                         start_agent: StartAgent) -> None:
    from tests.support.gateway import http_get

    dns.set("tasks.managerhttp", [T1])
    agent = start_agent(manager_and_dmz(upstream_port)[:1])
    assert agent.admin("/healthz")[0] == 200
    assert agent.admin("/readyz") == (200, "ready\n")
    status, body, _ = http_get(agent.admin_port, "x", "/readyz", method="HEAD")
    assert (status, body) == (200, "")
    doc = agent.status()
    assert doc["ready"] is True
    assert doc["endpoints"]["managerhttp"]["addresses"] == [T1]
    assert doc["routes"][0]["service"] == "managerhttp"
    assert doc["last_reload"]["result"] == "success"
    # nothing on the admin port changes state
    assert http_get(agent.admin_port, "x", "/status", method="POST")[0] == 405
    assert http_get(agent.admin_port, "x", "/reload", method="POST")[0] == 404


def test_a_routes_file_change_is_applied_without_waiting_for_the_next_poll(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    """The loop wakes when the routes file changes (a stat every 0.2 s), as it does for the
    controller's routes: with a poll of 60 s, a change made after the first cycle serves long
    before the next poll would have read it."""
    dns.set("tasks.managerhttp", [T1])
    agent = start_agent(manager_and_dmz(upstream_port)[:1], "--poll-interval", "60")
    # the loop's first cycle is over (it would read the file): the next poll is a minute away
    wait_until(lambda: agent.cycles() >= 1, 10, "the loop's first cycle")
    assert agent.get("other.example.com")[0] == 404
    write_routes(agent.workdir / "routes.yaml", [
        {"hosts": ["managerhttp"], "service": "managerhttp", "port": upstream_port},
        {"hosts": ["other.example.com"], "service": "managerhttp", "port": upstream_port}])
    wait_until(lambda: agent.get("other.example.com") == (200, "task1"), 20,
               f"the added route to serve before the next poll; log:\n{agent.log_tail()}")
    assert agent.get("managerhttp") == (200, "task1")


def test_invalid_routes_change_is_refused_and_old_routes_keep_serving(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.managerhttp", [T1])
    agent = start_agent(manager_and_dmz(upstream_port)[:1])
    routes_file = agent.workdir / "routes.yaml"
    write_routes(routes_file, [
        {"hosts": ["managerhttp"], "service": "managerhttp", "port": upstream_port},
        {"hosts": ["evil.example.com; include /etc/passwd"], "service": "x", "port": 80},
    ])
    wait_until(lambda: agent.status()["routes_error"], 5, "the bad file to be refused")
    assert "routes[1].hosts[0]" in agent.status()["routes_error"]
    assert agent.get("managerhttp") == (200, "task1")
    assert "passwd" not in (agent.prefix / "conf.d" / "gateway.conf").read_text()

    write_routes(routes_file, [{"hosts": ["other.example.com"], "service": "managerhttp",
                                "port": upstream_port}])
    wait_until(lambda: agent.get("other.example.com") == (200, "task1"), 5,
               "the corrected file to be applied")
    # nginx's old workers may still take a request for a few ms after the new ones answer
    wait_until(lambda: agent.get("managerhttp")[0] == 404, 5, "the old route to be gone")
    assert agent.status()["routes_error"] is None


def test_invalid_routes_at_start_stop_the_agent_with_every_error(tmp_path: Path) -> None:
    routes = write_routes(tmp_path / "routes.yaml", [
        {"hosts": ["ok.example.com"], "service": "svc", "port": 70000},
        {"hosts": ["a b"], "service": "svc", "port": 80},
        {"hosts": ["x.example.com"], "service": "svc;", "port": 80, "extra": 1},
    ])
    proc = subprocess.run([sys.executable, "-m", "agent", "run", "--routes", str(routes),
                           "--nginx-prefix", str(tmp_path / "p")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    for expected in ("routes[0].port", "routes[1].hosts[0]: 'a b'", "routes[2].service",
                     "routes[2].extra: unknown field"):
        assert expected in proc.stderr
    assert not (tmp_path / "p" / "nginx.pid").exists()


def test_sigterm_lets_requests_in_flight_finish(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.managerhttp", [T1])
    agent = start_agent(manager_and_dmz(upstream_port)[:1])
    result: dict[str, object] = {}

    def slow() -> None:
        result["response"] = agent.get("managerhttp", "/slow?s=2", timeout=10)

    client = threading.Thread(target=slow)
    client.start()
    time.sleep(0.5)
    assert agent.stop(signal.SIGTERM) == 0
    client.join(10)
    assert result["response"] == (200, "task1")


def test_nginx_dying_ends_the_agent_with_an_error(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.managerhttp", [T1])
    agent = start_agent(manager_and_dmz(upstream_port)[:1])
    pid = agent.status()["nginx"]["pid"]
    import os

    os.kill(pid, signal.SIGKILL)
    assert agent.proc is not None
    assert agent.proc.wait(10) == 1
    assert "nginx_died" in agent.log_tail()
    # nginx leaves its workers running when the master is killed; nothing may keep serving
    # the old configuration once the task is gone
    wait_until(lambda: _refused(agent), 5, "the orphaned nginx workers to be gone")


def _refused(agent: Agent) -> bool:
    try:
        agent.get("managerhttp", timeout=1)
    except OSError:
        return True
    return False


def test_restart_while_dns_is_down_serves_saved_endpoints(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent, tmp_path: Path) -> None:
    dns.set("tasks.managerhttp", [T1, T2])
    state = tmp_path / "state"
    workdir = tmp_path / "gw"
    workdir.mkdir()
    agent = start_agent(manager_and_dmz(upstream_port)[:1], "--state-dir", str(state),
                        workdir=workdir)
    assert agent.stop() == 0
    dns.stop()

    again = start_agent(manager_and_dmz(upstream_port)[:1], "--state-dir", str(state),
                        wait_ready=False, workdir=workdir)
    wait_until(lambda: again.get("managerhttp")[0] == 200, 20,
               f"the restarted gateway to serve; log:\n{again.log_tail()}")
    assert again.backends_seen("managerhttp") == {"task1", "task2"}
    assert again.status()["endpoints"]["managerhttp"]["stale"] is True
    # nginx may answer a moment before the agent has verified the configuration it serves
    wait_until(lambda: again.admin("/readyz")[0] == 200, 10,
               "the gateway serving saved endpoints to be ready")
