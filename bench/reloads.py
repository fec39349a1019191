"""3. Reloads under load: 100 configuration changes while wrk runs; count non-2xx responses and
socket errors.

Changes come as they do in a swarm: three in four are a task appearing in or leaving DNS, one in
four is an edit of the routes file (a second route added or removed). The next change is made when
the agent has counted the reload of the previous one. The agent polls faster than its default here
(`--poll-interval`, `--reload-min-interval`) so that 100 reloads fit in a couple of minutes: what is
measured is what a reload does to traffic, not how soon it comes.

For comparison, the article's nginx gets the same number of plain `nginx -s reload`s at the same
pace, under the same load.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from bench import admin, gateways, net, stats, wrk
from bench.dns import Dnsmasq
from bench.options import Options
from bench.procs import BenchError, Procs, run_quiet

SERVICE = "reload"
SECOND_ROUTE = """\
  - hosts: [second.example]
    service: second
    port: {port}
"""


def _write_routes(path: Path, second: bool) -> None:
    text = gateways.ROUTES_YAML.format(server_name=net.HOST_HEADER, service=SERVICE,
                                       port=net.UPSTREAM_PORT)
    if second:
        text += SECOND_ROUTE.format(port=net.UPSTREAM_PORT)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _wait_reload(gw: gateways.Gateway, before: float, timeout: float = 15.0) -> float | None:
    """Poll /metrics until the reload counter passes `before`; return the new total."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        total = sum(admin.reloads(admin.metrics(gw)).values())
        if total > before:
            return total
        time.sleep(0.02)
    return None


def _wrk_row(result: wrk.WrkResult) -> dict[str, Any]:
    return {"requests": result.requests, "duration_s": result.duration_s, "rps": result.rps,
            "non2xx": result.non2xx, "socket_errors": result.socket_errors,
            "errors": result.errors, "latency_ms": result.latency_ms}


def agent_under_load(opts: Options, workdir: Path, keepalive: bool = True) -> dict[str, Any]:
    tasks = [net.upstream(31), net.upstream(32)]
    extra = net.upstream(33)
    with Procs(workdir) as procs:
        dns = Dnsmasq(procs, net.DNS_MAIN)
        dns.set({f"tasks.{SERVICE}": tasks}, confirm=f"tasks.{SERVICE}")
        gateways.start_upstreams(procs, [*tasks, extra])
        routes = workdir / "routes.yaml"
        _write_routes(routes, second=False)
        gw = gateways.start_agent(
            procs, net.DNS_MAIN, routes, poll_interval=opts.reload_poll_interval,
            extra=["--reload-min-interval", f"{opts.reload_min_interval:g}"])
        start = admin.reloads(admin.metrics(gw))
        total = sum(start.values())
        budget = opts.reload_changes * 16.0 + 30
        load = wrk.Background(gw.url, gw.host_header, budget, opts.threads, opts.connections,
                              workdir, headers=() if keepalive else ("Connection: close",))
        waits: list[float] = []
        missed = 0
        has_extra = has_second = False
        try:
            time.sleep(1.0)
            for i in range(opts.reload_changes):
                gw.check_alive()
                t0 = time.monotonic()
                if i % 4 == 3:
                    has_second = not has_second
                    _write_routes(routes, has_second)
                else:
                    has_extra = not has_extra
                    dns.set({f"tasks.{SERVICE}": [*tasks, extra] if has_extra else tasks})
                new_total = _wait_reload(gw, total)
                if new_total is None:
                    missed += 1
                else:
                    waits.append(time.monotonic() - t0)
                    total = new_total
            time.sleep(1.0)
        finally:
            result = load.stop()
        end = admin.reloads(admin.metrics(gw))
        failures = {k: v for k, v in admin.metrics(gw).items()
                    if k[0] == "gateway_apply_failures_total" and v}
    label = "agent, clients keep connections alive" if keepalive else \
        "agent, a new connection per request (Connection: close)"
    return {
        "label": label, "detail": gw.detail, "changes": opts.reload_changes,
        "reloads": {k: end[k] - start[k] for k in end}, "changes_without_reload": missed,
        "apply_failures": {dict(k[1]).get("stage", "?"): v for k, v in failures.items()},
        "change_to_reload_s": stats.summary(waits) if waits else None,
        "wrk": _wrk_row(result),
    }


def article_under_load(opts: Options, workdir: Path) -> dict[str, Any]:
    tasks = [net.upstream(31), net.upstream(32)]
    with Procs(workdir) as procs:
        dns = Dnsmasq(procs, net.DNS_MAIN)
        dns.set({SERVICE: tasks}, confirm=SERVICE)
        gateways.start_upstreams(procs, tasks)
        gw = gateways.start_article(procs, net.DNS_MAIN, SERVICE)
        assert gw.reload_command is not None
        conf = workdir / "article" / "nginx.conf"
        budget = opts.reload_changes * (opts.reload_min_interval + 5) + 30
        load = wrk.Background(gw.url, gw.host_header, budget, opts.threads, opts.connections,
                              workdir)
        refused = 0
        try:
            time.sleep(1.0)
            for i in range(opts.reload_changes):
                gw.check_alive()
                text = conf.read_text()
                conf.write_text(text.replace(f"# generation {i}", f"# generation {i + 1}"))
                if run_quiet(gw.reload_command).returncode != 0:
                    refused += 1
                # a hand-run reload has nothing to wait on: pace it like the agent's reloads
                time.sleep(opts.reload_min_interval)
            time.sleep(1.0)
        finally:
            result = load.stop()
        if refused:
            raise BenchError(f"nginx -s reload failed {refused} times")
    return {"label": "article's nginx, `nginx -s reload` by hand", "detail": gw.detail,
            "changes": opts.reload_changes, "reloads": {"success": opts.reload_changes},
            "wrk": _wrk_row(result)}


def run(opts: Options, workdir: Path) -> dict[str, Any]:
    for sub in ("agent-run", "agent-close-run", "article-run"):
        (workdir / sub).mkdir()
    agent = agent_under_load(opts, workdir / "agent-run")
    agent_close = agent_under_load(opts, workdir / "agent-close-run", keepalive=False)
    article = article_under_load(opts, workdir / "article-run")
    w = agent["wrk"]
    clean = w["non2xx"] == 0 and w["socket_errors"] == 0
    goals = [{"goal": f"{opts.reload_changes} changes under load: zero non-2xx and zero socket "
                      "errors",
              "measured": f"{w['non2xx']} non-2xx, {w['socket_errors']} socket errors in "
                          f"{w['requests']} requests, {int(agent['reloads']['success'])} reloads",
              "met": clean and agent["changes_without_reload"] == 0}]
    c = agent_close["wrk"]
    goals.append({"goal": "the same with a new connection per request (what is lost beyond "
                          "kept-alive connections closed at a reload)",
                  "measured": f"{c['non2xx']} non-2xx, {c['socket_errors']} socket errors in "
                              f"{c['requests']} requests",
                  "met": c["non2xx"] == 0 and c["socket_errors"] == 0})
    return {"params": {"changes": opts.reload_changes,
                       "poll_interval_s": opts.reload_poll_interval,
                       "reload_min_interval_s": opts.reload_min_interval,
                       "threads": opts.threads, "connections": opts.connections},
            "agent": agent, "agent_close": agent_close, "article": article, "goals": goals}
