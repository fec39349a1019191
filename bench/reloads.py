"""3. Changes under load: task and route changes while wrk runs, clients keeping connections
alive; count non-2xx responses, socket errors and reloads.

Side by side, under the same load:

- agent (resolve, the default): 100 task changes (a task appearing in or leaving DNS), which
  nginx follows by itself, and 20 route changes (a second route added or removed), each a reload
  with keepalive_min_timeout keeping clients' idle connections usable;
- agent (--upstream-mode static): the same 100 task changes, each a reload (addresses are
  written into the configuration), with keepalive_min_timeout as well;
- the same static agent with a new connection per request (what a reload costs beyond
  kept-alive connections);
- the article's nginx: as many plain `nginx -s reload`s at the same pace.

The next change is made when the agent has counted the previous one (a reload, or a change it
saw nginx follow). The agent polls faster than its default here (`--poll-interval`,
`--reload-min-interval`) so that the changes fit in a couple of minutes: what is measured is
what a change does to traffic, not how soon it comes.
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


def _changes(gw: gateways.Gateway) -> float:
    """Reloads plus the task changes nginx followed without one."""
    samples = admin.metrics(gw)
    return sum(admin.reloads(samples).values()) + admin.value(
        samples, "gateway_endpoint_changes_followed_total")


def _wait_counted(gw: gateways.Gateway, before: float, timeout: float = 15.0) -> float | None:
    """Poll /metrics until the agent has counted one more change; return the new total."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        total = _changes(gw)
        if total > before:
            return total
        time.sleep(0.02)
    return None


def _wrk_row(result: wrk.WrkResult) -> dict[str, Any]:
    return {"requests": result.requests, "duration_s": result.duration_s, "rps": result.rps,
            "non2xx": result.non2xx, "socket_errors": result.socket_errors,
            "errors": result.errors, "latency_ms": result.latency_ms}


def agent_under_load(opts: Options, workdir: Path, mode: str, changes: int, what: str,
                     keepalive: bool = True) -> dict[str, Any]:
    """`changes` changes of `what` (tasks: a task joins or leaves; routes: a second route is
    added or removed) under wrk, with the agent in --upstream-mode `mode`."""
    tasks = [net.upstream(31), net.upstream(32)]
    extra = net.upstream(33)
    with Procs(workdir) as procs:
        dns = Dnsmasq(procs, net.DNS_MAIN)
        dns.set({f"tasks.{SERVICE}": tasks, "tasks.second": tasks}, confirm=f"tasks.{SERVICE}")
        gateways.start_upstreams(procs, [*tasks, extra])
        routes = workdir / "routes.yaml"
        _write_routes(routes, second=False)
        gw = gateways.start_agent(
            procs, net.DNS_MAIN, routes, poll_interval=opts.reload_poll_interval,
            extra=["--reload-min-interval", f"{opts.reload_min_interval:g}",
                   "--upstream-mode", mode])
        start = admin.reloads(admin.metrics(gw))
        followed0 = admin.value(admin.metrics(gw), "gateway_endpoint_changes_followed_total")
        total = _changes(gw)
        budget = changes * 16.0 + 30
        load = wrk.Background(gw.url, gw.host_header, budget, opts.threads, opts.connections,
                              workdir, headers=() if keepalive else ("Connection: close",))
        waits: list[float] = []
        missed = 0
        has_extra = has_second = False
        try:
            time.sleep(1.0)
            for _ in range(changes):
                gw.check_alive()
                t0 = time.monotonic()
                if what == "routes":
                    has_second = not has_second
                    _write_routes(routes, has_second)
                else:
                    has_extra = not has_extra
                    dns.set({f"tasks.{SERVICE}": [*tasks, extra] if has_extra else tasks,
                             "tasks.second": tasks})
                new_total = _wait_counted(gw, total)
                if new_total is None:
                    missed += 1
                else:
                    waits.append(time.monotonic() - t0)
                    total = new_total
                if mode == "resolve" and what == "tasks":
                    time.sleep(2.0)  # nginx re-resolves every 2 s: let it see each change
            time.sleep(1.0)
        finally:
            result = load.stop()
        samples = admin.metrics(gw)
        end = admin.reloads(samples)
        followed = admin.value(samples, "gateway_endpoint_changes_followed_total") - followed0
        failures = {k: v for k, v in samples.items()
                    if k[0] == "gateway_apply_failures_total" and v}
    connections = "clients keep connections alive" if keepalive else \
        "a new connection per request (Connection: close)"
    return {
        "label": f"agent ({mode}), {changes} {what} changes, {connections}",
        "detail": gw.detail, "mode": mode, "what": what, "changes": changes,
        "reloads": {k: end[k] - start[k] for k in end}, "followed_without_reload": followed,
        "changes_not_seen": missed,
        "apply_failures": {dict(k[1]).get("stage", "?"): v for k, v in failures.items()},
        "change_to_counted_s": stats.summary(waits) if waits else None,
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
    n, routes_n = opts.reload_changes, max(1, opts.reload_changes // 5)
    runs = {
        "resolve_tasks": ("resolve", n, "tasks", True),
        "resolve_routes": ("resolve", routes_n, "routes", True),
        "static_tasks": ("static", n, "tasks", True),
        "static_tasks_close": ("static", n, "tasks", False),
    }
    out: dict[str, Any] = {}
    for key, (mode, changes, what, keepalive) in runs.items():
        (workdir / key).mkdir()
        out[key] = agent_under_load(opts, workdir / key, mode, changes, what, keepalive)
    (workdir / "article-run").mkdir()
    article = article_under_load(opts, workdir / "article-run")

    def lost(r: dict[str, Any]) -> int:
        return int(r["wrk"]["non2xx"] + r["wrk"]["socket_errors"])

    def measured(r: dict[str, Any]) -> str:
        w = r["wrk"]
        return (f"{w['non2xx']} non-2xx, {w['socket_errors']} socket errors in "
                f"{w['requests']} requests, {int(r['reloads']['success'])} reloads")

    rt, rr, st = out["resolve_tasks"], out["resolve_routes"], out["static_tasks"]
    goals = [
        {"goal": f"{n} task changes under kept-alive load (default mode): zero failed requests",
         "measured": measured(rt), "met": lost(rt) == 0 and rt["changes_not_seen"] == 0},
        {"goal": "nginx reloads caused by task-only changes: 0",
         "measured": f"{int(rt['reloads']['success'])} reloads, "
                     f"{int(rt['followed_without_reload'])} changes followed without one",
         "met": rt["reloads"]["success"] == 0 and rt["followed_without_reload"] >= n},
        {"goal": f"{routes_n} route changes (each a reload) under kept-alive load: zero failed "
                 "requests",
         "measured": measured(rr), "met": lost(rr) == 0 and rr["changes_not_seen"] == 0},
        {"goal": f"{n} reloads (--upstream-mode static) under kept-alive load: zero failed "
                 "requests (keepalive_min_timeout)",
         "measured": measured(st), "met": lost(st) == 0 and st["changes_not_seen"] == 0},
    ]
    return {"params": {"changes": n, "route_changes": routes_n,
                       "poll_interval_s": opts.reload_poll_interval,
                       "reload_min_interval_s": opts.reload_min_interval,
                       "threads": opts.threads, "connections": opts.connections},
            **out, "article": article, "goals": goals}
