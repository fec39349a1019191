"""REPORT.md from results.json: goals first, then one part per section, each with its table,
its plot and what it ran against. `write_docs` puts the same figures into docs/benchmarks.md."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import plots

DOCS_START = "<!-- bench:results:start -->"
DOCS_END = "<!-- bench:results:end -->"
# part 7's table in docs/keepalived.md
CLUSTER_START = "<!-- bench:cluster:start -->"
CLUSTER_END = "<!-- bench:cluster:end -->"
TITLES = {"datapath": "1. Data path", "convergence": "2. Convergence",
          "reloads": "3. Reloads under load", "failover": "4. Failover",
          "scale": "5. Scale and footprint", "check": "6. The health check",
          "cluster": "7. Failover on a multi-node swarm", "capacity": "8. Capacity",
          "tls": "9. TLS"}


def _n(x: float | None, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.{digits}f}"


def _s(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f} s"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return [*out, ""]


def _met(goal: dict[str, Any]) -> str:
    return {True: "met", False: "**not met**", None: "–"}[goal.get("met")]


def machine_lines(results: dict[str, Any]) -> list[str]:
    m = results.get("machine", {})
    v = m.get("versions", {})
    return [
        f"- Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
        f"{m.get('memory_gib', '?')} GiB, {m.get('os', '?')}, kernel {m.get('kernel', '?')}",
        f"- Software: nginx {v.get('nginx')}, HAProxy {v.get('haproxy')}, Caddy {v.get('caddy')}, "
        f"wrk {v.get('wrk')}, dnsmasq {v.get('dnsmasq')}, keepalived {v.get('keepalived')}, "
        f"Python {m.get('python')}",
        f"- Agent revision: {m.get('revision', '?')}; results updated {results.get('updated')}",
    ]


def goals_table(sections: dict[str, Any]) -> list[str]:
    rows = []
    for name, sec in sections.items():
        if "error" in sec:
            rows.append([TITLES.get(name, name), "(section failed)", sec["error"][:120], "–"])
        for g in sec.get("goals", []):
            rows.append([TITLES.get(name, name), g["goal"], g["measured"], _met(g)])
    return _table(["section", "goal", "measured", "verdict"], rows)


def _run_line(sec: dict[str, Any]) -> str:
    o = sec.get("options", {})
    revision = f" at revision {sec['revision']}" if sec.get("revision") else ""
    return (f"_Ran {sec.get('started')}{revision}, {sec.get('elapsed_s', 0):.0f} s"
            f"{' (--quick)' if o.get('quick') else ''}; other load on the machine before it: "
            f"{sec.get('machine_busy_before', 0) * 100:.0f}% of all cores busy, load average "
            f"{sec.get('loadavg_before', ['?'])[0]} -> {sec.get('loadavg_after', ['?'])[0]}._")


def datapath(sec: dict[str, Any]) -> list[str]:
    p = sec["params"]
    lines = [f"wrk -t{p['threads']} -c{p['connections']}, {p['duration_s']:g} s per measurement "
             f"after {p['warmup_s']:g} s of warm-up, {p['rounds']} interleaved rounds (the order "
             "rotates each round); two upstream nginx servers answering a fixed 200. CPU is "
             "what the gateway's own processes used per request (all of them, workers included); "
             "'main process' is the program started itself (the agent's Python process for the "
             "agent), in % of one core; 'upstream conns / 1000 req' counts the connections the "
             "upstreams accepted (1000: a new upstream connection for every request).",
             ""]
    rows = []
    for name, g in sec["gateways"].items():
        s = g["summary"]
        rows.append([f"{name}: {g['label']}", f"{_n(s['rps_median'])}",
                     f"{_n(s['rps_min'])} – {_n(s['rps_max'])}", _n(s["p50_ms"], 3),
                     _n(s["p99_ms"], 3), _n(s.get("cpu_us_per_request"), 1),
                     _n(s.get("main_process_cpu_percent"), 0),
                     _n(s.get("upstream_connections_per_1000"), 1), str(s["errors"])])
    lines += _table(["gateway", "req/s (median)", "req/s (min – max)", "p50 ms", "p99 ms",
                     "CPU µs/req", "main process CPU %", "upstream conns / 1000 req",
                     "errors"], rows)
    r = sec["ratios"]
    lines += [f"Ratios of medians: agent / article **{r['agent_vs_article']:.2f}x**, "
              f"agent / HAProxy **{r['agent_vs_haproxy']:.2f}x**, agent / Caddy "
              f"{r['agent_vs_caddy']:.2f}x, agent / no gateway {r['agent_vs_direct']:.2f}x "
              f"(HAProxy / no gateway {r['haproxy_vs_direct']:.2f}x), agent with 1 worker / "
              f"agent {r['agent_1w_vs_agent']:.2f}x, agent with per-route metrics (default) / "
              f"without (--access-log-metrics off) **{_n(r.get('metrics_on_vs_off'), 3)}**.", ""]
    costs = sec.get("costs", {})
    if costs:
        lines += ["What an option of the agent costs, measured apart: the agent with it on "
                  "(the default) and with it off, back to back, the order alternating from "
                  "one pair to the next (median, and the range, of the pairs):", ""]
        lines += _table(
            ["option", "pairs", "req/s on / off", "range", "CPU per request off / on"],
            [[{"json_log": "JSON access log (--access-log)",
               "metrics": "per-route metrics (--access-log-metrics)"}.get(what, what),
              str(len(c["rps_on_vs_off"])), _n(c["rps_ratio_median"], 3),
              f"{_n(min(c['rps_on_vs_off']), 2)} – {_n(max(c['rps_on_vs_off']), 2)}",
              _n(c["cpu_ratio_median"], 3)] for what, c in costs.items()])
    for name, g in sec["gateways"].items():
        rec = g.get("access_log_records")
        if rec:
            cpu = g["summary"].get("main_process_cpu_us_per_request")
            lines += [f"- {name}: access-log lines counted {_n(rec.get('ok'))}, malformed "
                      f"{_n(rec.get('malformed'))}; nginx had served about "
                      f"{_n(rec.get('nginx_requests'))} requests by the agent's last reading "
                      f"of its counters; the agent's own CPU {_n(cpu, 3)} µs per request."]
    lines += ["", "Configurations:", ""]
    lines += [f"- {name}: {g['detail']}" for name, g in sec["gateways"].items()]
    return [*lines, ""]


def convergence(sec: dict[str, Any]) -> list[str]:
    p = sec["params"]
    lines = [f"A client asks each gateway every {p['poll_every_s'] * 1000:g} ms which task "
             "answers. Times run from the moment the DNS server answers the new set. A removed "
             f"task counts as gone once it has not answered for {p['quiet_s']:g} s. "
             f"{p['changes_per_kind']} changes of each kind for the agent, HAProxy and Caddy "
             f"(the same changes for all); {p['article_changes']} for the article's nginx, "
             "timed at a random point of its 30 s cache.", ""]
    rows = []
    for name, s in sec["systems"].items():
        add, rem = s["add"] or {}, s["remove"] or {}
        errors = ", ".join(f"{k}: {v}" for k, v in s["errors"].items()) or "0"
        rows.append([f"{name}: {s['label']}", _s(add.get("median")), _s(add.get("p99")),
                     _s(rem.get("median")), _s(rem.get("p99")),
                     f"{add.get('n', 0)} + {rem.get('n', 0)}", str(s["timeouts"]), errors])
    lines += _table(["system", "add median", "add p99", "remove median", "remove p99",
                     "changes", "timed out", "failed requests during changes"], rows)
    return lines


def reloads(sec: dict[str, Any]) -> list[str]:
    p = sec["params"]
    lines = [f"Changes while wrk -t{p['threads']} -c{p['connections']} runs; agent with "
             f"--poll-interval {p['poll_interval_s']:g} --reload-min-interval "
             f"{p['reload_min_interval_s']:g}. Task changes are a task joining or leaving DNS; "
             "route changes an edit of the routes file (a second route added or removed). "
             "In the default mode (resolve) nginx follows tasks itself and reloads only for "
             "routes; static writes task addresses and reloads for each change. The article's "
             "nginx gets as many `nginx -s reload`s at the same pace. wrk's socket errors are "
             "mostly 'read' errors: a kept-alive connection closed by an old worker while a "
             "request was on it.", ""]
    rows = []
    for key in ("resolve_tasks", "resolve_routes", "static_tasks", "static_tasks_close",
                "agent", "agent_close", "article"):
        r = sec.get(key)
        if not r:
            continue
        w = r["wrk"]
        errs = ", ".join(f"{k} {v}" for k, v in w["errors"].items() if v) or "none"
        rows.append([r["label"], str(int(r["reloads"].get("success", 0))),
                     str(int(r.get("followed_without_reload", 0))), _n(w["requests"]),
                     _n(w["rps"]), str(w["non2xx"]), f"{w['socket_errors']} ({errs})",
                     _n(w["latency_ms"]["p99"], 2), _n(w["latency_ms"]["max"], 1)])
    lines += _table(["setup", "reloads", "followed w/o reload", "requests", "req/s",
                     "non-2xx", "socket errors", "p99 ms", "max ms"], rows)
    for key in ("resolve_tasks", "resolve_routes", "static_tasks"):
        r = sec.get(key, {})
        if r.get("change_to_counted_s"):
            c = r["change_to_counted_s"]
            lines += [f"{r['label']}: change to counted median {_s(c['median'])}, p99 "
                      f"{_s(c['p99'])}; changes not seen: {r['changes_not_seen']}; apply "
                      f"failures: {r['apply_failures'] or 'none'}.", ""]
    return lines


def failover(sec: dict[str, Any]) -> list[str]:
    if "skipped" in sec:
        return [f"Not measured: {sec['skipped']}.", ""]
    p = sec["params"]
    lines = [f"Three nodes in network namespaces, keepalived with the rendered configuration, "
             f"{p['trials']} trials per mode, measured with {p['meter']}: a client starts a "
             f"request to the VIP every {p['poll_every_s'] * 1000:g} ms on a new connection; "
             "the master's nginx is killed (SIGKILL, whole group). 'Lost' counts requests "
             "started after the kill that got no answer.", ""]
    rows = []
    for mode, m in sec["modes"].items():
        f, lost, c = m["failover"], m["lost"], m["check"]
        rows.append([mode, _s(f["median"]), _s(f["p99"]), _s(f["max"]),
                     f"{_n(lost['median'])} (worst {_n(lost['max'])})",
                     f"interval {c.get('interval')} s, watch {c.get('watch_interval')} s, "
                     f"fall {c.get('fall')}, weight {c.get('weight')}"])
    lines += _table(["mode", "median", "p99", "worst", "lost requests (median)", "check"], rows)
    return lines


def scale(sec: dict[str, Any]) -> list[str]:
    per = sec["params"].get("hosts_per_service", 1)
    lines = ["One agent at a time, default settings (1 s polling) but `--nginx-return-memory on`"
             " (a reload gives nginx's old configuration back); each route has a host of its "
             f"own, {per} route(s) on each service of 1 to 10 tasks (tasks exist in DNS only). "
             "'Cycle with a reload' is one resolve-render-validate-reload-verify cycle, as the "
             "agent logs it with its status line; 'change to routed' runs from the routes file "
             "written to nginx routing the added host (or refusing the removed one). Idle "
             "cycles and idle CPU come from a window with no changes and no scraping; CPU is "
             "the agent process alone.", ""]
    rows = []
    for s in sec["sizes"]:
        ch = s["change_cycle_s"] or {}
        routed = s.get("change_to_routed_s") or {}
        i = s["idle"]
        rows.append([str(s["routes"]), str(s.get("services", s["routes"])), str(s["tasks"]),
                     _s(s["ready_s"]), _s(ch.get("median")), _s(ch.get("max")),
                     _s(routed.get("median")), _s(routed.get("max")),
                     _s(s.get("idle_cycle_mean_s")),
                     f"{_n(s['agent_rss_mib'], 1)} ({_n(s.get('agent_peak_rss_mib'), 1)})",
                     _n(s["nginx_pss_mib"], 1),
                     _n(i["cpu_per_poll_ms"], 1), _n(i["cpu_percent_of_core"], 2)])
    lines += _table(["routes", "services", "tasks", "start to ready",
                     "cycle w/ reload (median)", "(worst)", "change to routed (median)",
                     "(worst)", "idle cycle (mean)", "agent RSS MiB (peak)", "nginx PSS MiB",
                     "CPU ms/poll", "idle CPU % core"], rows)
    refs = [s for s in sec["sizes"] if s.get("haproxy")]
    if refs:
        lines += ["The reference: HAProxy with the same hosts in a map, a backend per service "
                  "(`server-template` of 10 on its own DNS resolution, each name every second), "
                  "in the same run. 'Added by reload' runs from the map file written to the new "
                  "process routing the host (`-sf`); 'through the runtime API' from `add map` "
                  "on its socket (no reload).", ""]
        lines += _table(
            ["routes", "backends", "start to routing", "added by reload, to routing",
             "added through the runtime API", "PSS MiB after start", "after the reload",
             "DNS lookups/s (configured)"],
            [[str(s["routes"]), str(h["backends"]), _s(h["start_to_routing_s"]),
              _s(h["reload_to_routing_s"]), _s(h["runtime_api_to_routing_s"]),
              _n(h["pss_mib"], 1), _n(h["pss_after_reload_mib"], 1),
              _n(h["dns_queries_per_s"], 0)] for s in refs for h in [s["haproxy"]]])
    for s in sec["sizes"]:
        failed = {k: v for k, v in s.get("dns_lookups", {}).items()
                  if k not in ("ok", "nodata", "nxdomain")}
        if failed:
            lines += [f"- {s['routes']} routes: DNS lookups that failed during the run: "
                      + ", ".join(f"{k} {v:.0f}" for k, v in failed.items())
                      + f" of {sum(s['dns_lookups'].values()):.0f}; services stale at the end: "
                      f"{s.get('stale_services_at_end', 0):.0f}."]
    return [*lines, ""]


def healthcheck(sec: dict[str, Any]) -> list[str]:
    lines = [f"{sec['params']['runs']} runs of each, interleaved, each a new process timed "
             "from spawn to exit, against a running agent.", ""]
    rows = [[name, _n(v["median"] * 1000, 1), _n(v["p99"] * 1000, 1), _n(v["min"] * 1000, 1),
             _n(v["max"] * 1000, 1)] for name, v in sec["variants"].items()]
    lines += _table(["command", "median ms", "p99 ms", "min ms", "max ms"], rows)
    ratios = sec.get("ratios", {})
    if ratios:
        lines += ["gateway-check against a bare interpreter start, in the same run:", ""]
        lines += _table(["", "ratio of the medians", "median of the ratios per round"],
                        [[name, f"{r['of_medians']:.2f}x", f"{r['median_per_round']:.2f}x"]
                         for name, r in ratios.items()])
    return lines


def cluster(sec: dict[str, Any]) -> list[str]:
    if "skipped" in sec:
        return [f"Not measured: {sec['skipped']}.", ""]
    p = sec["params"]
    lines = [f"{p['nodes']} Docker-in-Docker swarm nodes on this machine (up in "
             f"{sec['up_s']:.0f} s), keepalived on the two gateway nodes with advert_int "
             f"{p['advert_int_s']:g} s and the gateway-check watcher, {p['trials']} trials per "
             f"kind, measured with {p['meter']}: a client container starts a request to the VIP "
             f"every {p['poll_every_s'] * 1000:g} ms on a new connection. Failover runs from "
             "the kill command to the first answer from the other node; the gap from the "
             "master's last answer to it. 'Lost' counts requests started after the kill that "
             "got no answer. 'VIP back' runs from the node's restart (once the swarm's gossip "
             "has dropped it) or the gateway's kill until the VIP is on it again (preempt, once "
             "its gateway answers); 'lost while back' counts the requests of that time that got "
             "no answer.", ""]
    return [*lines, *cluster_table(sec)]


def cluster_table(sec: dict[str, Any]) -> list[str]:
    """Part 7's figures as one table (docs/keepalived.md shows it too)."""
    rows = []
    names = {"node": "gateway node killed (docker kill)",
             "gateway": "its gateway container killed"}
    for kind, k in sec["kinds"].items():
        f, g, lost = k["failover"], k["gap"], k["lost"]
        row = [names.get(kind, kind), _s(f["median"]), _s(f["max"]), _s(g["median"]),
               f"{_n(lost['median'])} (worst {_n(lost['max'])})"]
        if "back" in k:
            b, lb = k["back"], k["lost_back"]
            row += [f"{b['median']:.1f} s (worst {b['max']:.1f} s)",
                    f"{_n(lb['median'])} (worst {_n(lb['max'])})"]
        else:
            row += ["–", "–"]
        rows.append(row)
    table = _table(["failure", "failover median", "worst", "gap median",
                    "lost requests (median)", "VIP back (median)", "lost while back"], rows)
    events = sec.get("events") or []
    if not events:
        return table
    return [*table, "", "The operator's events, once each, strict clients on the VIP "
            "(tests/support/lifecycle.py; keepalived without preemption):", "",
            *_table(["event", "failed requests", "longest answer", "VIP moved after",
                     "VIP back after", "a gateway task replaced"],
                    [[e.get("label", e["event"]), f"{e['failed']} of {e['requests']}",
                      _s(e["longest_s"]),
                      "–" if e["vip_moved_s"] is None else f"{e['vip_moved_s']:.1f} s",
                      "–" if e["vip_back_s"] is None else f"{e['vip_back_s']:.1f} s",
                      "yes" if e["gateway_replaced"] else "no"] for e in events])]


def capacity(sec: dict[str, Any]) -> list[str]:
    p = sec["params"]
    lines = [f"One gateway at a time, two workers or threads, one echo task. {p['websockets']} "
             f"WebSockets opened one after the other and held, then each echoes; "
             f"{p['idle']} kept-alive clients send a request, stay idle, send another; "
             f"{p['bursts']} bursts of {p['burst']} new TLS connections (`h2load --h1`). "
             "Memory: PSS of all the gateway's processes with the WebSockets open, less "
             "before, per WebSocket (each holds a client and a task connection).", ""]

    def counts(c: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"

    rows = [[name, counts(g["websockets"]["opened"]), counts(g["websockets"]["echoed"]),
             _n(g["kib_per_websocket"], 1), _n(g["memory_held_mib"], 0),
             counts(g["idle"]["second"]), ", ".join(map(str, g["burst_failed"]))]
            for name, g in sec["gateways"].items()]
    return [*lines, *_table(["gateway", "WebSockets opened", "echoed", "KiB per WebSocket",
                             "MiB held", "idle clients' second request", "burst failures"],
                            rows), ""]


def tls(sec: dict[str, Any]) -> list[str]:
    lines = ["One gateway at a time, two workers or threads, one echo task, HTTPS with an ECDSA "
             "P-256 and then an RSA 2048 certificate (h2load, 32 clients): new handshakes per "
             "second (HTTP/1.1, 1500 clients of one request each, no session resumption), "
             "kept-alive HTTP/1.1 and HTTP/2 (10 streams per connection) requests per "
             "second; sessions resumed of 5 (`openssl s_client -reconnect`, TLS 1.2); "
             "the ceiling is `openssl speed`'s signatures per second on one core (the "
             "gateways have two).", ""]
    rows = []
    for key, r in sec["keys"].items():
        ceiling = r["openssl_speed_sign_per_s"]
        haproxy = r["haproxy"]
        for name in ("agent", "haproxy", "caddy"):
            g = r[name]

            def ratio(figure: str, g: dict[str, Any] = g, haproxy: dict[str, Any] = haproxy,
                      ) -> str:
                return f"{g[figure] / haproxy[figure]:.2f}" if haproxy[figure] else "–"

            rows.append([key, name, _n(g["handshakes_per_s"]), ratio("handshakes_per_s"),
                         f"{g['handshakes_per_s'] / ceiling:.0%}",
                         _n(g["h1_keepalive_req_per_s"]), ratio("h1_keepalive_req_per_s"),
                         _n(g["h2_req_per_s"]), ratio("h2_req_per_s"),
                         f"{g['resumed_of_5']} of 5"])
        rows.append([key, "openssl speed (1 core)", _n(ceiling), "", "", "", "", "", "", ""])
    return [*lines, *_table(["key", "gateway", "handshakes/s", "/ HAProxy", "of openssl speed",
                             "HTTP/1.1 req/s", "/ HAProxy", "HTTP/2 req/s", "/ HAProxy",
                             "resumed"], rows), ""]


RENDER: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "datapath": datapath, "convergence": convergence, "reloads": reloads,
    "failover": failover, "scale": scale, "check": healthcheck, "cluster": cluster,
    "capacity": capacity, "tls": tls}


def body(results: dict[str, Any], images: dict[str, Path] | None = None,
         image_prefix: str = "") -> list[str]:
    sections = {k: results["sections"][k] for k in TITLES if k in results["sections"]}
    lines = [*machine_lines(results), "", "## Goals", "", *goals_table(sections)]
    for name, sec in sections.items():
        lines += [f"## {TITLES[name]}", "", _run_line(sec), ""]
        if "error" in sec:
            lines += [f"The section failed: `{sec['error']}`", ""]
            continue
        lines += RENDER[name](sec)
        if images and name in images:
            lines += [f"![{TITLES[name]}]({image_prefix}{images[name].name})", ""]
    return lines


def write(results: dict[str, Any], out: Path) -> Path:
    images: dict[str, Path] = {}
    for name, sec in results["sections"].items():
        if "error" not in sec and name in plots.ALL:
            made = plots.ALL[name](sec, out)
            if made is not None:
                images[name] = made
    lines = ["# swarm-gateway benchmarks", "",
             "Written by `python -m bench` (`make bench`); every raw figure is in "
             "`results.json`. Nothing here is a pass/fail test: goals are met or not met.", "",
             *body(results, images)]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def _parts(block: str) -> tuple[list[str], dict[str, list[str]]]:
    """A results block of docs/benchmarks.md: its goal rows by section title, and each part's
    lines (its `### N. Title` heading included) by title."""
    rows: dict[str, list[str]] = {}
    parts: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in block.splitlines():
        if line.startswith("### "):
            title = line.removeprefix("### ").strip()
            current = None if title == "Goals" else parts.setdefault(title, [])
        if current is not None:
            current.append(line)
        elif line.startswith("| ") and not line.startswith(("| section ", "|---")):
            rows.setdefault(line[2:].split(" | ", 1)[0], []).append(line)
    goal_rows = [row for title in TITLES.values() for row in rows.get(title, [])]
    return goal_rows, parts


def docs_block(results: dict[str, Any], previous: str = "") -> str:
    """The figures for docs/benchmarks.md: the parts in `results`, and the parts of `previous`
    (the block as the docs have it) that `results` does not have, each saying when it ran."""
    fresh = "\n".join(["", *body(results)]).replace("## ", "### ")
    head, _, _ = fresh.partition("\n### Goals")
    rows, parts = _parts(fresh)
    old_rows, old_parts = _parts(previous)
    ran = {TITLES[name] for name in results.get("sections", {}) if name in TITLES}
    kept = [title for title in old_parts if title not in ran]
    # goal rows and parts in the order of TITLES, the kept ones where they belong
    every = [t for t in TITLES.values() if t in ran or t in kept]
    by_title = {**{t: old_parts[t] for t in kept}, **parts}
    goal_rows = [row for t in every
                 for row in (rows if t in ran else old_rows)
                 if row[2:].startswith(f"{t} |")]
    lines = [head.strip(), ""]
    if kept:
        # where the kept parts ran: the earlier note's list, or the earlier run's own lines
        old_head = previous.partition("### Goals")[0]
        earlier = re.findall(r"^  - .*$", old_head, re.M) or [
            f"  {line}" for line in re.findall(r"^- (?:Machine|Software|Agent revision):.*$",
                                               old_head, re.M)]
        lines += [f"- Parts not in the last run keep their earlier figures ({', '.join(kept)}); "
                  "each part says when it ran. They ran on:", *earlier, ""]
    lines += ["### Goals", "", *_table(["section", "goal", "measured", "verdict"], [])[:2],
              *goal_rows, ""]
    for t in every:
        lines += [*by_title[t]]
    return "\n".join(lines).strip()


def write_docs(results: dict[str, Any], docs: Path) -> None:
    """Replace the part of docs/benchmarks.md between the markers with the latest figures,
    keeping the figures of parts that did not run; and the cluster part's table in
    docs/keepalived.md, between markers of its own, when it ran."""
    text = docs.read_text() if docs.exists() else f"# Benchmarks\n\n{DOCS_START}\n{DOCS_END}\n"
    if DOCS_START not in text or DOCS_END not in text:
        text = text.rstrip() + f"\n\n{DOCS_START}\n{DOCS_END}\n"
    pattern = re.compile(re.escape(DOCS_START) + "(.*?)" + re.escape(DOCS_END), re.S)
    found = pattern.search(text)
    figures = docs_block(results, found.group(1) if found else "")
    docs.write_text(pattern.sub(lambda _: f"{DOCS_START}\n{figures}\n\n{DOCS_END}", text))
    cluster_sec = results.get("sections", {}).get("cluster")
    keepalived = docs.parent / "keepalived.md"
    if cluster_sec and "error" not in cluster_sec and "skipped" not in cluster_sec \
            and keepalived.exists():
        text = keepalived.read_text()
        table = "\n".join([_run_line(cluster_sec), "", *cluster_table(cluster_sec)]).strip()
        marked = re.compile(re.escape(CLUSTER_START) + ".*?" + re.escape(CLUSTER_END), re.S)
        if marked.search(text):
            keepalived.write_text(marked.sub(
                lambda _: f"{CLUSTER_START}\n{table}\n\n{CLUSTER_END}", text))
