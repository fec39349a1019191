"""2. Convergence: a task appears in or disappears from DNS; how long until the first request
reaches the new task, and until no request reaches the removed one?

A client polls each gateway (one request every few milliseconds on a kept-alive connection) and
records which task answered. Each change is timed from the moment the DNS server answers the new
set. Two loops run side by side, each with its own DNS server and tasks:

- the agent (by default nginx resolves tasks itself; and with --upstream-mode static, where the
  agent writes addresses and reloads), HAProxy and Caddy see the same changes,
  spaced by a random pause, so each change falls at a random point of each poll cycle;
- the article's nginx caches an answer for 30 s (`valid=30s`) and re-resolves on the first request
  after that: its changes come after a random pause of 0 to 30 s, so that they fall at a random
  point of its cache period (a fixed pause would always measure the same point).
"""

from __future__ import annotations

import contextlib
import http.client
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import gateways, net, stats
from bench.dns import Dnsmasq
from bench.gateways import Gateway
from bench.options import Options
from bench.procs import BenchError, Procs

POLL_EVERY = 0.005  # seconds between two requests of one poller
QUIET = 1.5  # a removed task counts as gone after this long without answering...
QUIET_REQUESTS = 50  # ...and at least this many answers from the others


class Poller(threading.Thread):
    """Requests one gateway in a loop and records (time, status, body) until stopped."""

    def __init__(self, gw: Gateway, max_seconds: float) -> None:
        super().__init__(name=f"poll-{gw.name}", daemon=True)
        self.gw = gw
        self.samples: list[tuple[float, int, str]] = []
        self.halt = threading.Event()
        self.deadline = time.monotonic() + max_seconds

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.halt.is_set() and time.monotonic() < self.deadline:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.gw.host, self.gw.port, timeout=2)
                conn.request("GET", "/", headers={"Host": self.gw.host_header})
                resp = conn.getresponse()
                body = sys.intern(resp.read().decode(errors="replace").strip())
                self.samples.append((time.monotonic(), resp.status, body))
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                self.samples.append((time.monotonic(), 0, type(exc).__name__))
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(POLL_EVERY)
        if conn is not None:
            conn.close()


@dataclass
class Watch:
    """Scans one poller's new samples after a change, incrementally."""

    poller: Poller
    t0: float
    task: str
    kind: str  # "add" or "remove"
    pos: int = 0
    first_seen: float | None = None
    last_seen: float | None = None
    after_last: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    done_at: float | None = None

    def scan(self, now: float) -> float | None:
        """The convergence time once known, else None."""
        samples = self.poller.samples
        end = len(samples)
        for t, status, who in samples[self.pos:end]:
            if t < self.t0:
                continue
            if status != 200:
                key = who if status == 0 else f"HTTP {status}"
                self.errors[key] = self.errors.get(key, 0) + 1
            if who == self.task:
                self.first_seen = self.first_seen or t
                self.last_seen = t
                self.after_last = 0
            else:
                self.after_last += 1
        self.pos = end
        if self.kind == "add":
            return None if self.first_seen is None else self.first_seen - self.t0
        ref = self.last_seen if self.last_seen is not None else self.t0
        if now - ref >= QUIET and self.after_last >= QUIET_REQUESTS:
            return ref - self.t0
        return None


@dataclass
class Loop:
    """One DNS server, one service, the gateways that watch it, and their measurements."""

    dns: Dnsmasq
    service: str
    base: list[str]
    extra: str
    pollers: dict[str, Poller]
    timeout: float
    pause: Callable[[], float]
    halt: threading.Event
    results: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    timeouts: dict[str, int] = field(default_factory=dict)
    errors: dict[str, dict[str, int]] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)

    def records(self, tasks: Sequence[str]) -> dict[str, list[str]]:
        return {f"tasks.{self.service}": list(tasks), self.service: list(tasks)}

    def change(self, kind: str) -> None:
        tasks = [*self.base, self.extra] if kind == "add" else self.base
        for p in self.pollers.values():
            p.samples = []  # only what comes after this change matters; keeps memory flat
        t0 = self.dns.set(self.records(tasks), confirm=f"tasks.{self.service}")
        watches = {name: Watch(p, t0, self.extra, kind) for name, p in self.pollers.items()}
        found: dict[str, float] = {}
        while (len(found) < len(watches) and time.monotonic() < t0 + self.timeout
               and not self.halt.is_set()):
            time.sleep(0.02)
            now = time.monotonic()
            for name, w in watches.items():
                if name not in found:
                    value = w.scan(now)
                    if value is not None:
                        found[name] = value
        row: dict[str, Any] = {"kind": kind, "t0": t0}
        for name, w in watches.items():
            w.scan(time.monotonic())
            by_kind = self.results.setdefault(name, {"add": [], "remove": []})
            mine = self.errors.setdefault(name, {})
            for key, count in w.errors.items():
                mine[key] = mine.get(key, 0) + count
            if name in found:
                by_kind[kind].append(found[name])
            else:
                self.timeouts[name] = self.timeouts.get(name, 0) + 1
            row[name] = found.get(name)
        self.log.append(row)

    def run(self, changes: int, stop_after: float) -> None:
        """`changes` changes, alternating add and remove, each after a random pause."""
        for i in range(changes):
            if time.monotonic() > stop_after or self.halt.wait(self.pause()):
                break
            for p in self.pollers.values():
                if not p.is_alive():
                    raise BenchError(f"poller {p.name} stopped")
                p.gw.check_alive()
            self.change("add" if i % 2 == 0 else "remove")


def _start_pollers(gws: Sequence[Gateway], seconds: float) -> dict[str, Poller]:
    pollers = {gw.name: Poller(gw, seconds) for gw in gws}
    for p in pollers.values():
        p.start()
    return pollers


def run(opts: Options, workdir: Path) -> dict[str, Any]:
    main_tasks = [net.upstream(11), net.upstream(12)]
    main_extra = net.upstream(13)
    art_tasks = [net.upstream(21), net.upstream(22)]
    art_extra = net.upstream(23)
    # the worst case: every change takes its whole timeout
    budget = max(2 * opts.changes * 20.0, opts.article_changes * 80.0) + 60.0
    with Procs(workdir) as procs:
        dns_main = Dnsmasq(procs, net.DNS_MAIN, name="dnsmasq-main")
        dns_art = Dnsmasq(procs, net.DNS_ARTICLE, name="dnsmasq-article")
        dns_main.set({"tasks.conv": main_tasks, "conv": main_tasks}, confirm="tasks.conv")
        dns_art.set({"tasks.conva": art_tasks, "conva": art_tasks}, confirm="tasks.conva")
        gateways.start_upstreams(procs, [*main_tasks, main_extra, *art_tasks, art_extra])
        routes = gateways.write_routes(workdir / "routes.yaml", "conv")
        gws = [
            gateways.start_agent(procs, net.DNS_MAIN, routes),
            gateways.start_agent(procs, net.DNS_MAIN, routes, name="agent-static",
                                 extra=["--upstream-mode", "static"],
                                 label="agent, --upstream-mode static (a reload per change)"),
            gateways.start_haproxy(procs, net.DNS_MAIN, "conv"),
            gateways.start_caddy(procs, net.DNS_MAIN, "conv"),
        ]
        article = gateways.start_article(procs, net.DNS_ARTICLE, "conva")
        pollers = _start_pollers([*gws, article], budget)
        halt = threading.Event()
        side: threading.Thread | None = None
        try:
            main = Loop(dns_main, "conv", main_tasks, main_extra,
                        {n: p for n, p in pollers.items() if n != "article"}, timeout=15.0,
                        pause=lambda: random.uniform(1.0, 2.0), halt=halt)
            art = Loop(dns_art, "conva", art_tasks, art_extra, {"article": pollers["article"]},
                       timeout=45.0, pause=lambda: random.uniform(0.0, 30.0), halt=halt)
            stop_after = time.monotonic() + budget
            failure: list[BaseException] = []

            def article_loop() -> None:
                try:
                    art.run(opts.article_changes, stop_after)
                except BaseException as exc:  # reported by the main thread
                    failure.append(exc)

            side = threading.Thread(target=article_loop, name="article-loop", daemon=True)
            side.start()
            main.run(2 * opts.changes, stop_after)
            side.join(timeout=max(0.0, stop_after - time.monotonic()) + 5)
            if failure:
                raise failure[0]
            if side.is_alive():
                raise BenchError("the article's convergence loop did not finish in time")
        finally:
            halt.set()  # the article's loop stops too if the main one failed
            if side is not None:
                side.join(timeout=10)
            for p in pollers.values():
                p.halt.set()
            for p in pollers.values():
                with contextlib.suppress(RuntimeError):
                    p.join(timeout=5)
        labels = {gw.name: gw.label for gw in [*gws, article]}
        details = {gw.name: gw.detail for gw in [*gws, article]}
    systems: dict[str, Any] = {}
    for loop in (main, art):
        for name, by_kind in loop.results.items():
            systems[name] = {
                "label": labels[name], "detail": details[name],
                "add_s": by_kind["add"], "remove_s": by_kind["remove"],
                "add": stats.summary(by_kind["add"]) if by_kind["add"] else None,
                "remove": stats.summary(by_kind["remove"]) if by_kind["remove"] else None,
                "timeouts": loop.timeouts.get(name, 0), "errors": loop.errors.get(name, {}),
            }
    agent = systems.get("agent", {})
    haproxy = systems.get("haproxy", {})
    goals = []
    for kind in ("add", "remove"):
        a, h = agent.get(kind), haproxy.get(kind)
        goals.append({
            "goal": f"agent p99 ({'task added' if kind == 'add' else 'task removed'}) at most "
                    "HAProxy's in the same run",
            "measured": "not measured" if not a or not h else
            f"agent p99 {a['p99']:.3f} s, HAProxy p99 {h['p99']:.3f} s",
            "met": None if not a or not h else bool(a["p99"] <= h["p99"]
                                                     and not agent["timeouts"])})
    errors = sum(agent.get("errors", {}).values()) if agent else None
    goals.append({"goal": "no failed request at the agent during the changes",
                  "measured": "not measured" if errors is None else f"{errors} failed",
                  "met": None if errors is None else errors == 0})
    return {"params": {"changes_per_kind": opts.changes, "article_changes": opts.article_changes,
                       "poll_every_s": POLL_EVERY, "quiet_s": QUIET},
            "systems": systems, "log": main.log + art.log, "goals": goals}
