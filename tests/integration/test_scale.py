"""Ten thousand hosts through the real agent and nginx: ready means every sampled host is
answered by its own task, and a route added later serves while the others keep serving (no 502
while the new workers look their upstreams up: nginx carries resolved addresses over a reload
in the one shared zone, agent/gateway/plan/scale.py). With more services than the agent looks
up in a cycle, nginx asks for each name only as often as the agent looks it up. After the
reload nginx holds one configuration, not two (--nginx-return-memory, agent/gateway/drivers/
nginx.py). The hosts of a service share one server block, and each counts under its own
route (plan/scale.py)."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable

from tests.integration.conftest import TASK_ADDRESSES, write_routes
from tests.support import wait_until
from tests.support.gateway import Agent, Dnsmasq, Upstream

HOSTS = 10_000
SERVICES = 100
SAMPLE = 40
# 20 lookups a second at the tests' 0.5 s poll: 10 of the 100 services a cycle, each again
# every 5 s, so nginx keeps an answer up to 4-5 s instead of asking every second
PER_SECOND = 20


def _routes(extra: bool, port: int) -> list[dict[str, object]]:
    routes: list[dict[str, object]] = [
        {"hosts": [f"h{i}.example"], "service": f"s{i % SERVICES}", "port": port}
        for i in range(HOSTS)]
    if extra:
        routes.append({"hosts": ["added.example"], "service": "s7", "port": port})
    return routes


def _task_of(service: int) -> str:
    """Service s<k> runs on task (k mod 8) + 1: 'task1' ... 'task8' answer."""
    return f"task{service % len(TASK_ADDRESSES) + 1}"


def test_ten_thousand_hosts_ready_means_serving_and_a_route_change_applies(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: Callable[..., Agent]) -> None:
    for k in range(SERVICES - 1):  # all at once, then one set() that waits for the answers
        dns.records[f"tasks.s{k}"] = [TASK_ADDRESSES[k % len(TASK_ADDRESSES)]]
    last = SERVICES - 1
    dns.set(f"tasks.s{last}", [TASK_ADDRESSES[last % len(TASK_ADDRESSES)]])
    agent = start_agent(_routes(False, upstream_port), "--dns-lookups-per-second",
                        str(PER_SECOND), "--nginx-return-memory", "on", wait_ready=False)
    wait_until(agent.ready, 90, f"the agent to be ready; log:\n{agent.log_tail()}")
    sample = random.Random(26).sample(range(HOSTS), SAMPLE)
    # ready: every sampled host answered by its own service's task at once, no 502
    for i in sample:
        assert agent.get(f"h{i}.example") == (200, _task_of(i % SERVICES)), i
    assert agent.get("added.example")[0] == 404

    # nginx asks the agent for its 100 names as often as the agent looks them up (each every
    # 5 s), not every second: about 20 queries a second, where a TTL of 0 would make 100
    answered = 'gateway_resolver_queries_total{result="answered"}'
    time.sleep(1.0)  # past the first answers (TTL 0: every name was new)
    before, started = agent.metrics()[answered], time.monotonic()
    time.sleep(4.0)
    rate = (agent.metrics()[answered] - before) / (time.monotonic() - started)
    assert 5 < rate < 50, f"nginx asked the agent {rate:.0f} times a second for 100 names"

    status, body = agent.admin("/metrics")
    assert status == 200, status
    # the hosts of a service share one server block (plan/scale.py): each sampled host's
    # request counted under its own route
    lines = [f'gateway_http_requests_total{{route="h{i}.example/",status_class="2xx"}} 1.0'
             for i in sample]
    assert all(line in body for line in lines), [ln for ln in lines if ln not in body][:3]

    started_rss = agent.nginx_master_rss_kib()
    # written whole, then moved into place: the agent never reads half a file
    routes = agent.workdir / "routes.yaml"
    os.replace(write_routes(routes.with_suffix(".tmp"), _routes(True, upstream_port)), routes)
    seen: set[int] = set()

    def added_serves() -> bool:
        status, body = agent.get("added.example")
        seen.add(status)
        return (status, body) == (200, _task_of(7))

    wait_until(added_serves, 60, f"the added route to serve; log:\n{agent.log_tail()}")
    assert seen <= {404, 200}, f"the added route answered {sorted(seen)} before it served"
    # after the reload, the other hosts still go to their own tasks
    for i in sample:
        assert agent.get(f"h{i}.example") == (200, _task_of(i % SERVICES)), i
    # nginx's master freed the old configuration for the system to take back: without that
    # (glibc keeps a freed block below the new configuration's) it held both, 1.9 times as much
    rss = agent.nginx_master_rss_kib()
    assert rss < 1.3 * started_rss, f"nginx's master: {started_rss} KiB, {rss} after the reload"
    # the hashes (server names; the maps of the JSON log, a key per route) were sized from the
    # routes: nginx never warned that it could not build one at the size it was given
    log = agent.log_file.read_text(errors="replace")
    assert "could not build" not in log, [ln for ln in log.splitlines() if "could not" in ln][:2]
