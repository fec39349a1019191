"""5. Scale and footprint: 10, 100 and 1000 routes with 1 to 10 tasks each.

Each route has a host of its own; `--hosts-per-service` puts that many routes on each service
(1 by default; 10 is the platform of issue 26: 10,000 hosts on 1,000 services).

For each size: the time from starting the agent to /readyz (the first full cycle plus nginx's
start), the duration of cycles that change something (resolve, render, nginx -t, reload, verify)
as the agent logs it with each status line, the time from a route added to the routes file until
nginx routes its host (it answers 502 instead of 404: the tasks exist in DNS only), and until a
route removed answers 404 again, the mean duration of idle cycles from the agent's own
`gateway_reconcile_duration_seconds` over a window with no changes, the agent's memory, and its
CPU per poll in that window (no scraping inside it).

The tasks only exist in DNS: nginx -t and a reload do not connect to upstreams.

The reference (issue 26): HAProxy with the same hosts in a map (`use_backend` by the Host
header, a backend per service with `server-template` on HAProxy's own DNS resolution): the time
from its start until it routes a sampled host, the time from a host added to its map file with
a reload (a new process taking over with `-sf`) and through its runtime API (`add map`, no
reload) until it routes that host, and its memory (PSS) after the start and after the reload.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import admin, gateways, net, stats
from bench.dns import Dnsmasq
from bench.options import Options
from bench.procs import BenchError, Procs, free_port, http_get, wait_until
from bench.sysinfo import descendants, process_cpu, pss_kib, status_kib

HIST = "gateway_reconcile_duration_seconds"


def _tasks_for(i: int) -> int:
    return i % 10 + 1


def _services(n: int, per_service: int) -> int:
    return -(-n // per_service)


def _write_routes(path: Path, n: int, extra: bool = False, per_service: int = 1) -> None:
    lines = ["routes:"]
    for i in range(n):
        lines += [f"  - hosts: [h{i}.example]", f"    service: s{i // per_service}",
                  f"    port: {net.UPSTREAM_PORT}"]
    if extra:
        lines += ["  - hosts: [extra.example]", "    service: s0",
                  f"    port: {net.UPSTREAM_PORT}"]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def _records(n: int) -> tuple[dict[str, list[str]], int]:
    """DNS records of `n` services, 1 to 10 tasks each; and how many tasks in all."""
    records: dict[str, list[str]] = {}
    k = 0
    for i in range(n):
        records[f"tasks.s{i}"] = [net.scale_task(k + j) for j in range(_tasks_for(i))]
        k += _tasks_for(i)
    return records, k


def _hist(samples: admin.Samples) -> tuple[float, float]:
    return admin.value(samples, f"{HIST}_count"), admin.value(samples, f"{HIST}_sum")


RELOADED = re.compile(r"cycle status=[\"']reloaded[^\n]*? seconds=([0-9.]+)")


def _extra_status(gw: gateways.Gateway) -> int:
    try:
        return http_get(gw.host, gw.port, "/", "extra.example", timeout=5.0)[0]
    except OSError:
        return 0


def _cycles(gw: gateways.Gateway, routes: Path, n: int, changes: int, per_service: int,
            settle: float = 2.5) -> tuple[list[float], int, list[float]]:
    """Make `changes` route changes one at a time (a route added, then removed again; one more
    when `changes` is odd, so that the file ends as it began, without a write that changes
    nothing, which the agent would read again within the idle window after); return
    (durations of the cycles that reloaded, changes that brought no reload, seconds from each
    change written to nginx routing by it). Each duration is the one the agent logs with its
    status line ("cycle status='reloaded: ...' seconds=..."); `settle` keeps changes further
    apart than the agent's minimum interval between reloads, so that none waits to be
    coalesced. (A change of tasks reloads nothing: nginx follows them.)"""
    log = gw.procs[0].log
    durations: list[float] = []
    serving: list[float] = []
    missed = 0
    for c in range(changes + changes % 2):  # the last one removes the route again
        offset = log.stat().st_size
        added = c % 2 == 0
        written = time.monotonic()
        _write_routes(routes, n, extra=added, per_service=per_service)
        deadline = written + 60.0
        found = None
        routed: float | None = None
        while (found is None or routed is None) and time.monotonic() < deadline:
            if routed is None and (_extra_status(gw) != 404) == added:
                routed = time.monotonic() - written
                continue
            time.sleep(0.05)
            gw.check_alive()
            with open(log, "rb") as f:
                f.seek(offset)
                found = found or RELOADED.search(f.read().decode(errors="replace"))
        if found is None:
            missed += 1
        else:
            durations.append(float(found.group(1)))
        if routed is not None:
            serving.append(routed)
        time.sleep(settle)
    return durations, missed, serving


def one_size(n: int, opts: Options, workdir: Path) -> dict[str, Any]:
    per_service = opts.hosts_per_service
    records, used = _records(_services(n, per_service))
    with Procs(workdir) as procs:
        dns = Dnsmasq(procs, net.DNS_MAIN)
        dns.set(records, confirm="tasks.s0")
        routes = workdir / "routes.yaml"
        _write_routes(routes, n, per_service=per_service)
        t0 = time.monotonic()
        # as docs/operations.md advises at thousands of hosts
        gw = gateways.start_agent(procs, net.DNS_MAIN, routes, ready_timeout=300.0,
                                  serve_check=False, extra=["--nginx-return-memory", "on"])
        ready_s = time.monotonic() - t0
        changed, missed, serving = _cycles(gw, routes, n, opts.scale_cycles, per_service)
        pid = gw.procs[0].pid
        time.sleep(1.0)  # let the last scrape's work settle
        m0 = admin.metrics(gw)
        cpu0 = process_cpu(pid)
        cpu0_children = process_cpu(pid, children=True)
        w0 = time.monotonic()
        time.sleep(opts.idle_seconds)
        cpu1 = process_cpu(pid)
        cpu1_children = process_cpu(pid, children=True)
        window = time.monotonic() - w0
        m1 = admin.metrics(gw)
        polls = _hist(m1)[0] - _hist(m0)[0]
        idle_cycle = (_hist(m1)[1] - _hist(m0)[1]) / polls if polls else None
        reloads_idle = sum(admin.reloads(m1).values()) - sum(admin.reloads(m0).values())
        lookups = {dict(k[1])["result"]: v for k, v in m1.items()
                   if k[0] == "gateway_dns_lookups_total" and v}
        stale = sum(v for k, v in m1.items() if k[0] == "gateway_upstream_endpoints_stale")
        nginx_pids = descendants(pid)  # nginx runs in a session of its own
        rss = status_kib(pid, "VmRSS")
        hwm = status_kib(pid, "VmHWM")
        nginx_pss = sum(pss_kib(p) or 0 for p in nginx_pids)
        if rss is None:
            raise BenchError("the agent's memory could not be read")
    cpu_s = cpu1.total - cpu0.total
    return {
        "routes": n, "services": _services(n, per_service), "tasks": used, "ready_s": ready_s,
        "change_cycle_s": stats.summary(changed) if changed else None,
        "change_to_routed_s": stats.summary(serving) if serving else None,
        "changes_to_routed": serving,
        "change_cycles": changed, "idle_cycle_mean_s": idle_cycle,
        "changes_without_reload": missed,
        "dns_lookups": lookups, "stale_services_at_end": stale,
        "agent_rss_mib": rss / 1024, "agent_peak_rss_mib": (hwm or 0) / 1024,
        "nginx_pss_mib": nginx_pss / 1024, "nginx_processes": len(nginx_pids),
        "idle": {"window_s": window, "polls": polls, "reloads": reloads_idle,
                 "cpu_s": cpu_s, "cpu_s_with_children": cpu1_children.total - cpu0_children.total,
                 "cpu_per_poll_ms": cpu_s / polls * 1000 if polls else None,
                 "cpu_percent_of_core": cpu_s / window * 100},
    }


HAPROXY_MAP = """\
global
    nbthread 2
    stats socket {workdir}/haproxy-scale.sock mode 600 level admin

defaults
    mode http
    # the tasks exist in DNS only: a routed host answers 503 at once, without a retry's wait
    retries 0
    timeout connect 5s
    timeout client 65s
    timeout server 65s

""" + gateways.HAPROXY_RESOLVERS + """
frontend fe
    bind {listen}
    use_backend %[req.hdr(host),lower,field(1,:),map({hosts},unrouted)]

backend unrouted
    http-request return status 404
"""

HAPROXY_BACKEND = """\
backend s{i}
    server-template t 10 tasks.s{i}:{port} resolvers bench init-addr none resolve-prefer ipv4
"""


def _haproxy_routes(port: int, host: str) -> bool:
    """HAProxy routes `host` (a connection refused meanwhile: wait_until tries again)."""
    return http_get(net.GATEWAY, port, "/", host, timeout=5.0)[0] != 404


def _seconds_until(probe: Callable[[], bool], within: float, what: str) -> float:
    """How long wait_until waited for `probe`."""
    started = time.monotonic()
    wait_until(probe, within, what)
    return time.monotonic() - started


def haproxy_reference(n: int, per_service: int, workdir: Path) -> dict[str, Any]:
    """HAProxy with the same hosts in a map (the module's text); DNS as the agent's run had."""
    services = _services(n, per_service)
    hosts = workdir / "hosts.map"
    hosts.write_text("".join(f"h{i}.example s{i // per_service}\n" for i in range(n)))
    port = free_port(net.GATEWAY)
    cfg = workdir / "haproxy-scale.cfg"
    cfg.write_text(HAPROXY_MAP.format(workdir=workdir, resolver=net.DNS_MAIN, hosts=hosts,
                                      listen=f"{net.GATEWAY}:{port}") + "".join(
        HAPROXY_BACKEND.format(i=i, port=net.UPSTREAM_PORT) for i in range(services)))
    records, _ = _records(services)
    sample = f"h{n - 1}.example"
    with Procs(workdir) as procs:
        dns = Dnsmasq(procs, net.DNS_MAIN)
        dns.set(records, confirm="tasks.s0")
        first = procs.start("haproxy", ["haproxy", "-db", "-f", str(cfg)])
        start_s = _seconds_until(lambda: _haproxy_routes(port, sample), 120,
                                 "HAProxy to route a host")
        time.sleep(3.0)
        pss_start = pss_kib(first.pid) or 0
        # a host added by a reload: a new process reads the map and takes over (-sf)
        with hosts.open("a") as f:
            f.write("added.example s0\n")
        written = time.monotonic()
        second = procs.start("haproxy-reloaded", ["haproxy", "-db", "-f", str(cfg),
                                                  "-sf", str(first.pid)])
        wait_until(lambda: _haproxy_routes(port, "added.example"), 120,
                   "HAProxy to route the host added by a reload")
        reload_s = time.monotonic() - written
        wait_until(lambda: not first.alive(), 60, "HAProxy's old process to go")
        time.sleep(3.0)
        pss_reloaded = pss_kib(second.pid) or 0
        # a host added through the runtime API: no reload
        written = time.monotonic()
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(workdir / "haproxy-scale.sock"))
            sock.sendall(f"add map {hosts} api.example s0\n".encode())
            answer = sock.recv(4096).decode(errors="replace").strip()
        if answer:
            raise BenchError(f"HAProxy's runtime API refused `add map`: {answer}")
        wait_until(lambda: _haproxy_routes(port, "api.example"), 30,
                   "HAProxy to route the host added through its API")
        api_s = time.monotonic() - written
    return {"start_to_routing_s": start_s, "reload_to_routing_s": reload_s,
            "runtime_api_to_routing_s": api_s, "pss_mib": pss_start / 1024,
            "pss_after_reload_mib": pss_reloaded / 1024, "backends": services,
            "dns_queries_per_s": services / 1.0}


def _platform_goals(size: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Issue 26's goals at 10,000 hosts (on 1,000 services with --hosts-per-service 10)."""
    if size is None:
        return [{"goal": "10,000 hosts: the platform's goals (issue 26)",
                 "measured": "not measured (10000 not among --routes)", "met": None}]
    routed = size["change_to_routed_s"]
    ref = size.get("haproxy") or {}
    where = f"10,000 hosts on {size['services']:,} services"
    return [
        {"goal": f"{where}: a route added serves within 3 s (median)",
         "measured": "no change measured" if routed is None else
         f"{routed['median']:.2f} s (HAProxy by reload {ref.get('reload_to_routing_s', 0):.2f}"
         f" s, through its runtime API {ref.get('runtime_api_to_routing_s', 0):.3f} s)",
         "met": None if routed is None else routed["median"] < 3.0},
        {"goal": f"{where}: nginx's memory, all processes, under 250 MB",
         "measured": f"{size['nginx_pss_mib']:.0f} MiB (HAProxy {ref.get('pss_mib', 0):.0f} MiB)",
         "met": size["nginx_pss_mib"] * 1.048576 < 250},
        {"goal": f"{where}: agent RSS under 120 MB",
         "measured": f"{size['agent_rss_mib']:.0f} MiB",
         "met": size["agent_rss_mib"] * 1.048576 < 120},
        {"goal": f"{where}: idle CPU under 2% of a core",
         "measured": f"{size['idle']['cpu_percent_of_core']:.2f}%",
         "met": size["idle"]["cpu_percent_of_core"] < 2.0},
    ]


def run(opts: Options, workdir: Path) -> dict[str, Any]:
    sizes = []
    for n in opts.route_counts:
        sub = workdir / f"routes-{n}"
        sub.mkdir()
        size = one_size(n, opts, sub)
        ref = sub / "haproxy"
        ref.mkdir()
        size["haproxy"] = haproxy_reference(n, opts.hosts_per_service, ref)
        sizes.append(size)
    goals: list[dict[str, Any]] = []
    big = next((s for s in sizes if s["routes"] == 1000), None)
    if big is None:
        goals.append({"goal": "1000 routes: cycle < 1 s, RSS < 60 MB, idle CPU < 2% at 1 s",
                      "measured": "not measured (1000 not among --routes)", "met": None})
    else:
        cycle = big["change_cycle_s"]["median"] if big["change_cycle_s"] else None
        goals += [
            {"goal": "1000 routes: a full cycle with a reload under 1 s (median)",
             "measured": "no cycle measured" if cycle is None else f"{cycle:.3f} s",
             "met": None if cycle is None else cycle < 1.0},
            {"goal": "1000 routes: agent RSS under 60 MB",
             "measured": f"{big['agent_rss_mib']:.1f} MiB",
             "met": big["agent_rss_mib"] * 1.048576 < 60},
            {"goal": "1000 routes: idle CPU under 2% of a core at 1 s polling",
             "measured": f"{big['idle']['cpu_percent_of_core']:.2f}%",
             "met": big["idle"]["cpu_percent_of_core"] < 2.0},
        ]
    goals += _platform_goals(next((s for s in sizes if s["routes"] == 10_000), None))
    return {"params": {"route_counts": list(opts.route_counts), "tasks_per_service": "1-10",
                       "hosts_per_service": opts.hosts_per_service,
                       "cycles_per_size": opts.scale_cycles, "idle_s": opts.idle_seconds,
                       "poll_interval_s": 1.0},
            "sizes": sizes, "goals": goals}
