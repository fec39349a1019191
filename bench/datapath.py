"""1. Data path: the same two upstreams behind each gateway, wrk with the same threads and
connections for all, interleaved rounds (the order rotates each round), medians and ratios."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench import admin, gateways, net, stats, wrk
from bench.dns import Dnsmasq
from bench.gateways import Gateway
from bench.options import Options
from bench.procs import BenchError, Procs
from bench.sysinfo import process_cpu, tree_cpu

SERVICE = "svc"
TASKS = [net.upstream(1), net.upstream(2)]


def _spread_ok(gw: Gateway, samples: int = 20) -> list[str]:
    seen = sorted({gw.get()[1].strip() for _ in range(samples)})
    return seen


def start_all(procs: Procs) -> list[Gateway]:
    dns = Dnsmasq(procs, net.DNS_MAIN)
    tasks = TASKS
    # the article proxies to the service name, the others look up tasks.<service>: in this
    # benchmark both answer the two task addresses (there is no service VIP on loopback)
    dns.set({f"tasks.{SERVICE}": tasks, SERVICE: tasks}, confirm=f"tasks.{SERVICE}")
    gateways.start_upstreams(procs, tasks)
    routes = gateways.write_routes(procs.workdir / "routes.yaml", SERVICE)
    started = [
        gateways.start_article(procs, net.DNS_MAIN, SERVICE),
        gateways.start_agent(procs, net.DNS_MAIN, routes,
                             label="agent (gateway-agent run, per-route metrics on: default)"),
        gateways.start_agent(procs, net.DNS_MAIN, routes, name="agent-1w",
                             extra=["--worker-processes", "1"],
                             label="agent, worker_processes 1"),
    ]
    if "--access-log-metrics" in gateways.agent_help():
        # per-route metrics from nginx's access-log file cost something per request: how
        # much? agent (on, the default) and agent-nolog (off) run in the same rounds
        started.append(gateways.start_agent(
            procs, net.DNS_MAIN, routes, name="agent-nolog",
            extra=["--access-log-metrics", "off"], label="agent, --access-log-metrics off"))
    if "--access-log " in gateways.agent_help():
        # the JSON access log (on by default, to the agent's standard output: a file here):
        # agent (on) and agent-nojson (off, per-route metrics on) run in the same rounds
        started.append(gateways.start_agent(
            procs, net.DNS_MAIN, routes, name="agent-nojson",
            extra=["--access-log", "off"], label="agent, --access-log off"))
    return [*started,
            gateways.start_haproxy(procs, net.DNS_MAIN, SERVICE),
            gateways.start_caddy(procs, net.DNS_MAIN, SERVICE),
            gateways.direct(tasks[0])]


def measure(gw: Gateway, opts: Options, workdir: Path, upstreams: list[str]) -> dict[str, Any]:
    gw.check_alive()
    if opts.warmup > 0:
        wrk.run(gw.url, gw.host_header, opts.warmup, opts.threads, opts.connections, workdir)
    pids = [p.pid for p in gw.procs]
    cpu0 = sum(tree_cpu(p) for p in pids)
    main0 = sum(process_cpu(p).total for p in pids)
    conns0 = sum(gateways.upstream_connections(a) for a in upstreams)
    result = wrk.run(gw.url, gw.host_header, opts.duration, opts.threads, opts.connections,
                     workdir)
    cpu1 = sum(tree_cpu(p) for p in pids)
    main1 = sum(process_cpu(p).total for p in pids)
    conns1 = sum(gateways.upstream_connections(a) for a in upstreams)
    row = result.as_dict()
    # connections the upstreams accepted per 1000 requests: ~0 when the gateway keeps its
    # upstream connections alive, 1000 when it opens one per request
    row["upstream_connections_per_1000"] = (conns1 - conns0) / max(result.requests, 1) * 1000
    if pids:
        row["gateway_cpu_s"] = cpu1 - cpu0
        row["gateway_cpu_us_per_request"] = (cpu1 - cpu0) / max(result.requests, 1) * 1e6
        # the process we started itself: the agent (Python) for the agent, nginx's master
        # (nearly idle) for the article, the whole proxy for HAProxy and Caddy
        row["main_process_cpu_s"] = main1 - main0
        row["main_process_cpu_us_per_request"] = (main1 - main0) / max(result.requests, 1) * 1e6
    return row


# what an option costs: the agent with it on (the default) against the agent with it off
COSTS = {"json_log": ("agent", "agent-nojson"), "metrics": ("agent", "agent-nolog")}


def paired(on: Gateway, off: Gateway, opts: Options, workdir: Path) -> dict[str, Any]:
    """`on` and `off` measured back to back, `opts.cost_pairs` times, in the order on-off,
    off-on, ... (a drift of the machine's load within a pair counts once each way): requests/s
    on / off and CPU per request off / on for each pair, and their medians. The interleaved
    rounds put seven other gateways between the two; on this shared machine the load moved
    more in that time than a log line costs."""
    rps, cpu = [], []
    for k in range(opts.cost_pairs):
        row = {}
        for gw in ((on, off) if k % 2 == 0 else (off, on)):
            row[gw.name] = measure(gw, opts, workdir, TASKS)
        a, b = row[on.name], row[off.name]
        rps.append(stats.ratio(a["rps"], b["rps"]))
        cpu.append(stats.ratio(b["gateway_cpu_us_per_request"],
                               a["gateway_cpu_us_per_request"]))
    return {"on": on.name, "off": off.name, "rps_on_vs_off": rps, "cpu_off_vs_on": cpu,
            "rps_ratio_median": stats.median(rps), "cpu_ratio_median": stats.median(cpu)}


def _access_log_records(gw: Gateway) -> dict[str, float]:
    """What the agent made of nginx's access-log records over the whole run (if it reads them):
    counted, dropped by the kernel because the agent fell behind, ..."""
    samples = admin.metrics(gw)
    out = {dict(k[1]).get("result", "?"): v for k, v in samples.items()
           if k[0] == "gateway_access_log_records_total"}
    if out:
        out["nginx_requests"] = admin.value(samples, "nginx_http_requests_total")
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    rps = [r["rps"] for r in rows]
    out: dict[str, Any] = {
        "rps_median": stats.median(rps), "rps_min": min(rps), "rps_max": max(rps),
        "rps_spread": stats.spread(rps),
        "p50_ms": stats.median([r["latency_ms"]["p50"] for r in rows]),
        "p99_ms": stats.median([r["latency_ms"]["p99"] for r in rows]),
        "mean_ms": stats.median([r["latency_ms"]["mean"] for r in rows]),
        "errors": sum(sum(r["errors"].values()) for r in rows),
        "upstream_connections_per_1000": stats.median(
            [r["upstream_connections_per_1000"] for r in rows]),
    }
    cpu = [r["gateway_cpu_us_per_request"] for r in rows if "gateway_cpu_us_per_request" in r]
    if cpu:
        out["cpu_us_per_request"] = stats.median(cpu)
        out["main_process_cpu_percent"] = stats.median(
            [r["main_process_cpu_s"] / r["duration_s"] * 100 for r in rows])
        out["main_process_cpu_us_per_request"] = stats.median(
            [r["main_process_cpu_us_per_request"] for r in rows])
    return out


def run(opts: Options, workdir: Path) -> dict[str, Any]:
    with Procs(workdir) as procs:
        gws = start_all(procs)
        spread = {gw.name: _spread_ok(gw) for gw in gws}
        for gw in gws:
            if gw.name != "direct" and len(spread[gw.name]) < 2:
                raise BenchError(f"{gw.name} reached only {spread[gw.name]} in 20 requests")
        rows: dict[str, list[dict[str, Any]]] = {gw.name: [] for gw in gws}
        for rnd in range(opts.rounds):
            k = rnd % len(gws)
            for gw in gws[k:] + gws[:k]:
                rows[gw.name].append(measure(gw, opts, workdir, TASKS) | {"round": rnd})
        by_name = {gw.name: gw for gw in gws}
        costs = {what: paired(by_name[on], by_name[off], opts, workdir)
                 for what, (on, off) in COSTS.items() if on in by_name and off in by_name}
        info: dict[str, dict[str, Any]] = {
            gw.name: {"label": gw.label, "detail": gw.detail, "reached": spread[gw.name]}
            for gw in gws}
        for gw in gws:
            if gw.admin is not None:
                info[gw.name]["access_log_records"] = _access_log_records(gw)
    results: dict[str, dict[str, Any]] = {
        name: {**info[name], "rounds": r, "summary": summarize(r)}
               for name, r in rows.items()}
    med = {name: g["summary"]["rps_median"] for name, g in results.items()}
    ratios = {
        "agent_vs_article": stats.ratio(med["agent"], med["article"]),
        "agent_vs_haproxy": stats.ratio(med["agent"], med["haproxy"]),
        "agent_vs_caddy": stats.ratio(med["agent"], med["caddy"]),
        "agent_vs_direct": stats.ratio(med["agent"], med["direct"]),
        "agent_1w_vs_agent": stats.ratio(med["agent-1w"], med["agent"]),
        "agent_nolog_vs_agent": stats.ratio(med.get("agent-nolog", math.nan), med["agent"]),
        "haproxy_vs_direct": stats.ratio(med["haproxy"], med["direct"]),
        # the same figure the other way round, as the goal is written: metrics on / off
        "metrics_on_vs_off": stats.ratio(med["agent"], med.get("agent-nolog", math.nan)),
        # the JSON access log's line, the metrics on in both
        "json_log_on_vs_off": stats.ratio(med["agent"], med.get("agent-nojson", math.nan)),
    }
    # the agent's own CPU per request (its process only; nginx is apart), with the metrics
    # on, and what they add over the same agent with them off
    agent_cpu = results["agent"]["summary"].get("main_process_cpu_us_per_request", math.nan)
    nolog_cpu = results.get("agent-nolog", {}).get("summary", {}).get(
        "main_process_cpu_us_per_request", math.nan)
    records = results["agent"].get("access_log_records") or {}
    sent = sum(r["requests"] for r in rows["agent"])
    goals = [
        {"goal": "agent >= 3.5x the article's configuration (requests/s)",
         "measured": f"{ratios['agent_vs_article']:.2f}x",
         "met": ratios["agent_vs_article"] >= 3.5},
        {"goal": "agent at least as fast as HAProxy (requests/s)",
         "measured": f"{ratios['agent_vs_haproxy']:.2f}x",
         "met": ratios["agent_vs_haproxy"] >= 1.0},
        {"goal": "agent as close to no gateway as a proxy hop allows",
         "measured": f"{ratios['agent_vs_direct']:.2f}x of direct "
                     f"(HAProxy {ratios['haproxy_vs_direct']:.2f}x)",
         "met": None},
        *([_cost_goal(costs["metrics"], "per-route metrics", "the JSON log on in both",
                      0.97)] if "metrics" in costs else []),
        *([_cost_goal(costs["json_log"], "the JSON access log", "the metrics on in both",
                      None)] if "json_log" in costs else []),
        {"goal": "agent CPU per request with per-route metrics on < 0.2 µs (its Python process "
                 "alone: DNS polling, the metrics, the JSON log's copy to stdout)",
         "measured": f"{agent_cpu:.3f} µs (metrics off: {nolog_cpu:.3f} µs)",
         "met": agent_cpu < 0.2},
        {"goal": "no access-log line lost: counted >= requests wrk got answered",
         "measured": f"counted {records.get('ok', math.nan):,.0f}, wrk {sent:,.0f} "
                     f"(plus warm-ups), nginx {records.get('nginx_requests', math.nan):,.0f}",
         "met": records.get("ok", -1) >= sent},
    ]
    return {
        "params": {"duration_s": opts.duration, "warmup_s": opts.warmup, "rounds": opts.rounds,
                   "threads": opts.threads, "connections": opts.connections,
                   "upstreams": TASKS},
        "gateways": results, "ratios": ratios, "costs": costs, "goals": goals,
    }


def _cost_goal(cost: dict[str, Any], what: str, other: str,
               least: float | None) -> dict[str, Any]:
    """The goal of an option's cost: requests/s on / off at `least`, or a figure said (None):
    the JSON line is the one nginx formats and writes per request, its price told, not hidden
    (docs/logs.md)."""
    pairs = cost["rps_on_vs_off"]
    ratio = cost["rps_ratio_median"]
    goal = (f"requests/s with {what} on / off >= {least}" if least is not None
            else f"what {what} costs: requests/s on / off")
    return {"goal": f"{goal}, {other} (median of {len(pairs)} back-to-back pairs)",
            "measured": f"{ratio:.3f} (pairs {min(pairs):.2f} – {max(pairs):.2f}); CPU per "
                        f"request off / on {cost['cpu_ratio_median']:.3f}",
            "met": ratio >= least if least is not None else None}
