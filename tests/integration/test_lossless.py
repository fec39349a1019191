"""No request lost while tasks come and go and routes change, with clients that keep connections
alive: real nginx, real dnsmasq, real upstreams on loopback.

The clients are strict: one failed send or read on a kept-alive connection is a failure, nothing
is retried (browsers retry an idempotent request once; a POST they do not). Between requests
they pause a little, so that connections are sometimes idle when nginx reloads: an old worker
that closed idle connections at once would have them fail.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.conftest import TASK_ADDRESSES, write_routes
from tests.support import wait_until
from tests.support.gateway import Agent, Dnsmasq, Upstream

T1, T2, T3, T4 = TASK_ADDRESSES[:4]
StartAgent = Callable[..., Agent]
CLIENTS = 8


@dataclass
class Load:
    """Kept-alive clients sending GETs and POSTs until stopped; every outcome counted."""

    port: int
    host: str
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    seen: Counter[str] = field(default_factory=Counter)
    connections: int = 0  # opened, the first included: the server closing one costs one
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, n: int) -> None:
        rng = random.Random(n)
        conn: http.client.HTTPConnection | None = None
        while not self.stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                with self.lock:
                    self.connections += 1
            post = rng.random() < 0.3
            try:
                if post:
                    conn.request("POST", "/order", body=b"x" * rng.randint(1, 4096),
                                 headers={"Host": self.host})
                else:
                    conn.request("GET", "/", headers={"Host": self.host})
                resp = conn.getresponse()
                body = resp.read().decode()
                closing = resp.will_close
            except (OSError, http.client.HTTPException) as exc:
                with self.lock:
                    self.failures.append(f"{'POST' if post else 'GET'}: {exc!r}")
                conn.close()
                conn = None
                continue
            with self.lock:
                if resp.status == 200:
                    self.ok += 1
                    self.seen[body] += 1
                else:
                    self.failures.append(f"{resp.status}: {body[:80]}")
            if closing:  # "Connection: close": the server asked; the next request reconnects
                conn.close()
                conn = None
            # mostly back to back, sometimes idle for a while (as a browser between clicks)
            time.sleep(rng.choice((0.0, 0.0, 0.001, 0.01, 0.2)))
        if conn is not None:
            conn.close()


@contextmanager
def load(port: int, host: str) -> Iterator[Load]:
    state = Load(port, host)
    threads = [threading.Thread(target=state.client, args=(n,), daemon=True)
               for n in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        yield state
    finally:
        state.stop.set()
        for t in threads:
            t.join(15)


def counter(agent: Agent, name: str) -> float:
    return agent.metrics().get(name, 0.0)


def test_tasks_coming_and_going_lose_no_request_and_reload_nothing(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.shop", [T1, T2])
    agent = start_agent([{"hosts": ["shop"], "service": "shop", "port": upstream_port}])
    reloads = counter(agent, 'gateway_reloads_total{result="success"}')
    followed = counter(agent, "gateway_endpoint_changes_followed_total")
    steps = [[T1, T2, T3], [T2, T3], [T2, T3, T4], [T3, T4], [T1, T4], [T1, T2]] * 2
    with load(agent.port, "shop") as traffic:
        for addresses in steps:
            dns.set("tasks.shop", addresses)
            names = {f"task{TASK_ADDRESSES.index(a) + 1}" for a in addresses}
            # nginx follows by itself: the new set answers, and only it
            wait_until(lambda want=names: answering(traffic) == want, 15,
                       f"exactly {sorted(names)} to answer", interval=0.1)
    assert traffic.failures == [], traffic.failures[:10]
    assert traffic.ok > 1000, f"only {traffic.ok} requests were answered"
    # the agent saw every change (so a reload could have happened) and reloaded for none
    assert counter(agent, "gateway_endpoint_changes_followed_total") - followed >= len(steps)
    assert counter(agent, 'gateway_reloads_total{result="success"}') == reloads
    assert agent.status()["status"].startswith(("followed without reload", "no change"))


def answering(traffic: Load, seconds: float = 0.3) -> set[str]:
    """The tasks that answered the load during the next `seconds`."""
    before = Counter(traffic.seen)
    time.sleep(seconds)
    return {n for n, c in traffic.seen.items() if c > before[n]}


def test_route_changes_and_reloads_under_load_lose_no_request(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent, tmp_path: Path) -> None:
    dns.set("tasks.shop", [T1, T2])
    dns.set("tasks.blog", [T3])
    shop = {"hosts": ["shop"], "service": "shop", "port": upstream_port}
    agent = start_agent([shop], "--reload-min-interval", "0")
    routes_file = agent.workdir / "routes.yaml"
    reloads = counter(agent, 'gateway_reloads_total{result="success"}')
    changes = 20
    with load(agent.port, "shop") as traffic:
        for i in range(changes):
            extra = [{"hosts": [f"blog{i}"], "service": "blog", "port": upstream_port}]
            write_routes(routes_file, [shop, *extra])
            wait_until(lambda i=i: agent.get(f"blog{i}")[0] == 200, 15,
                       f"route {i} to be served")
            time.sleep(0.3)  # the clients' connections to the old workers go idle, or not
    done = counter(agent, 'gateway_reloads_total{result="success"}') - reloads
    assert done >= changes, f"{done} reloads for {changes} route changes"
    assert traffic.failures == [], traffic.failures[:10]
    assert traffic.ok > 1000, f"only {traffic.ok} requests were answered"
    # the old workers did close the connections, after a request answered with Connection: close
    assert traffic.connections > CLIENTS
