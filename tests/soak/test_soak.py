"""The soak: a gateway under continuous requests for ten minutes while its service's tasks change
every few seconds and its nameserver disappears for minutes. `make soak` runs it; `make test` does
not (marker `soak`).

Tasks are replaced the hard way: a task leaves DNS and stops listening at the same moment, so
nginx meets a refused connection until its next reload and must retry another task. No request
may fail. The agent's memory (VmRSS) and open file descriptors are sampled from /proc and must
stay flat. SOAK_SECONDS changes the length (600 by default).
"""

from __future__ import annotations

import http.client
import os
import random
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.support import free_port, wait_until
from tests.support.gateway import Agent, Dnsmasq, Upstream, http_get

pytestmark = pytest.mark.soak

SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
CHANGE_EVERY = 3.0  # seconds between two task changes
SLOTS = [f"127.0.30.{i}" for i in range(1, 9)]  # where tasks may run
OUTAGE = (0.4, 0.65)  # the nameserver is gone for this part of the run (2.5 minutes of 10)
MiB = 1024 * 1024
PAUSE = 0.004  # between two requests of one client: a steady load, not all the machine's CPU


@dataclass
class Sample:
    at: float
    rss: int  # bytes
    fds: int


@dataclass
class Clients:
    """Users: some open a connection per request, some keep theirs open between requests."""

    agent: Agent
    host: str
    stop: threading.Event = field(default_factory=threading.Event)
    answers: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    # a kept-alive connection nginx closed as an old worker finished (after a reload): clients
    # retry such a request on a new connection, as HTTP clients do for idempotent requests
    retried_on_closed_keepalive: int = 0
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _record(self, status: int, body: str, started: float) -> None:
        with self.lock:
            self.answers[status] += 1
            self.latencies.append(time.monotonic() - started)
            if status != 200 or not body.startswith("task"):
                self.failures.append(f"{time.strftime('%X')} {status} {body[:80]!r}")

    def fresh(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                status, body, _ = http_get(self.agent.port, self.host, timeout=10)
            except OSError as exc:
                with self.lock:
                    self.failures.append(f"{time.strftime('%X')} {exc!r}")
                continue
            self._record(status, body, started)
            time.sleep(PAUSE)

    def kept_alive(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.stop.is_set():
            started = time.monotonic()
            reused = conn is not None
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.agent.port, timeout=10)
            try:
                conn.request("GET", "/", headers={"Host": self.host})
                resp = conn.getresponse()
                body = resp.read().decode(errors="replace")
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                conn = None
                if reused:
                    with self.lock:
                        self.retried_on_closed_keepalive += 1
                    continue
                with self.lock:
                    self.failures.append(f"{time.strftime('%X')} {exc!r}")
                continue
            except OSError as exc:
                conn.close()
                conn = None
                with self.lock:
                    self.failures.append(f"{time.strftime('%X')} {exc!r}")
                continue
            self._record(resp.status, body, started)
            time.sleep(PAUSE)
            if resp.will_close:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()


def sample(pid: int) -> Sample:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) * 1024 for line in status.splitlines()
               if line.startswith("VmRSS:"))
    return Sample(time.monotonic(), rss, len(os.listdir(f"/proc/{pid}/fd")))


def test_ten_minutes_of_requests_while_tasks_change_and_dns_goes_away(tmp_path: Path) -> None:
    soak_dir = tmp_path
    port = free_port(SLOTS[0])
    dns = Dnsmasq(soak_dir)
    dns.start()
    running: dict[str, Upstream] = {}
    agent: Agent | None = None
    clients: Clients | None = None
    threads: list[threading.Thread] = []
    rng = random.Random(6)
    try:
        for address in SLOTS[:3]:
            running[address] = Upstream(f"task{SLOTS.index(address) + 1}", address, port)
        dns.set("tasks.web", sorted(running))
        routes = soak_dir / "routes.yaml"
        routes.write_text(yaml.safe_dump({"routes": [
            {"hosts": ["web"], "service": "web", "port": port}]}))
        agent = Agent(soak_dir, routes, dns.nameserver,
                      extra=["--poll-interval", "1", "--state-dir", str(soak_dir / "state")])
        agent.start()
        assert agent.proc is not None
        pid = agent.proc.pid

        clients = Clients(agent, "web")
        threads = [threading.Thread(target=clients.fresh, daemon=True) for _ in range(2)] + [
            threading.Thread(target=clients.kept_alive, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()

        samples = [sample(pid)]
        start = time.monotonic()
        next_change = start + CHANGE_EVERY
        next_sample = start + 5
        changes = 0
        dns_down: tuple[float, float] | None = None
        readiness_seen: Counter[int] = Counter()
        while (now := time.monotonic()) < start + SECONDS:
            progress = (now - start) / SECONDS
            if OUTAGE[0] <= progress < OUTAGE[1]:
                if dns_down is None:
                    dns.stop()
                    dns_down = (now, now)
            elif dns_down is not None and dns_down[0] == dns_down[1]:
                dns.start()
                dns.set("tasks.web", sorted(running))
                dns_down = (dns_down[0], now)
            if now >= next_change:
                next_change += CHANGE_EVERY
                if not (dns_down is not None and dns_down[0] == dns_down[1]):
                    changes += 1
                    change_tasks(dns, running, port, rng)
            if now >= next_sample:
                next_sample += 5
                samples.append(sample(pid))
                readiness_seen[agent.admin("/readyz")[0]] += 1
            time.sleep(0.05)
        clients.stop.set()
        for t in threads:
            t.join(15)
        samples.append(sample(pid))
        elapsed = time.monotonic() - start
        metrics = agent.metrics()
        reloads_ok = metrics['gateway_reloads_total{result="success"}']
        reloads_failed = metrics['gateway_reloads_total{result="failure"}']
        status = agent.status()
        workers = len(Path(f"/proc/{status['nginx']['pid']}/task/{status['nginx']['pid']}"
                           "/children").read_text().split())
        requests = sum(clients.answers.values())
        latencies = sorted(clients.latencies)

        def window(first: float, last: float) -> list[Sample]:
            return [s for s in samples if first <= s.at - start <= last]

        # after a minute of warming up (caches, the first reloads), against the last minute
        warm = window(60, 120) or samples[:3]
        end = window(elapsed - 60, elapsed + 1) or samples[-3:]
        rss_warm = statistics.median(s.rss for s in warm)
        rss_end = statistics.median(s.rss for s in end)
        # a sample taken mid-cycle counts the lookups' and nginx's sockets: compare medians
        fds_warm = statistics.median(s.fds for s in warm)
        fds_end = statistics.median(s.fds for s in end)
        report = (
            f"soak: {elapsed:.0f}s, {requests} requests ({requests / elapsed:.0f}/s), "
            f"{len(clients.failures)} failed, {clients.retried_on_closed_keepalive} retried on "
            f"a kept-alive connection nginx closed; latency p50 "
            f"{latencies[len(latencies) // 2] * 1000:.1f} ms, p99 "
            f"{latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms, max "
            f"{latencies[-1] * 1000:.0f} ms\n"
            f"soak: {changes} task changes, reloads "
            f"{reloads_ok:.0f} ok / {reloads_failed:.0f} failed, DNS gone "
            f"{(dns_down[1] - dns_down[0]) if dns_down else 0:.0f}s, /readyz seen "
            f"{dict(readiness_seen)}, nginx workers at the end {workers}\n"
            f"soak: agent RSS start {samples[0].rss / MiB:.1f} MiB, after warm-up "
            f"{rss_warm / MiB:.1f}, end {rss_end / MiB:.1f}, max "
            f"{max(s.rss for s in samples) / MiB:.1f}; open fds start {samples[0].fds}, "
            f"after warm-up {fds_warm:.0f}, end {fds_end:.0f}, max {max(s.fds for s in samples)}")
        report += "\nsoak: fds every 5 s " + " ".join(str(s.fds) for s in samples)
        report += "\nsoak: RSS MiB every 5 s " + " ".join(f"{s.rss / MiB:.1f}" for s in samples)
        print(report, file=sys.stderr)
        (soak_dir / "report.txt").write_text(report + "\n")

        assert clients.failures == [], clients.failures[:20]
        assert requests > SECONDS * 20
        assert reloads_failed == 0
        assert changes >= SECONDS / CHANGE_EVERY * 0.6
        assert rss_end - rss_warm < 8 * MiB, "the agent's memory grows"
        assert fds_end <= fds_warm + 2, "the agent leaks file descriptors"
        assert workers == 1, "old nginx workers were left behind"
        wait_until(agent.ready, 40, "the agent to be ready at the end")
    finally:
        if clients is not None:
            clients.stop.set()
        for t in threads:
            t.join(15)
        if agent is not None:
            agent.stop()
        for upstream in running.values():
            upstream.stop()
        dns.stop()


def change_tasks(dns: Dnsmasq, running: dict[str, Upstream], port: int,
                 rng: random.Random) -> None:
    """One step of a rolling update or a scaling: a task starts, or stops, or both; between two
    and four run. A stopping task leaves DNS and stops listening at the same moment."""
    free = [a for a in SLOTS if a not in running]
    action = rng.choice(["replace", "replace", "up", "down"])
    if (action == "up" and len(running) >= 4) or (action == "down" and len(running) <= 2):
        action = "replace"
    if action in ("replace", "up"):
        address = rng.choice(free)
        running[address] = Upstream(f"task{SLOTS.index(address) + 1}", address, port)
    gone = None
    if action in ("replace", "down"):
        gone = running.pop(rng.choice(sorted(running)))
    dns.set("tasks.web", sorted(running))
    if gone is not None:
        gone.stop()
