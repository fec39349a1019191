"""8. Capacity: many open connections and bursts of new ones, the agent beside HAProxy and Caddy.

One gateway at a time, each with two workers or threads, in front of one echo task (the tests'
asyncio server: `ok` to a GET, an echo after a WebSocket handshake), the clients in several
processes (tests/support/load.py; this machine allows 20,000 files per process):

- WebSockets: N opened one after the other and held, then each echoes a message; the
  gateway's memory (PSS of all its processes) with them open, less before, per connection;
- idle kept-alive clients: M clients send one request each, stay idle, then a second one;
- bursts of new TLS connections: `h2load --h1 -n B -c B`, three times.

HAProxy and Caddy run at their defaults but for what the figures need: two threads, timeouts
long enough for an idle WebSocket, the task's address written in (discovery is not measured
here). HAProxy sizes its `maxconn` from its file limit; Caddy has no connection limit. HAProxy
sends the task the headers the agent sends it here (X-Forwarded-For/-Proto/-Host, X-Real-IP,
X-Client-Verify over HTTPS, a request id, a traceparent), so that the task reads as much behind
both; Caddy sends its own X-Forwarded-For/-Proto/-Host.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import gateways, net
from bench.dns import Dnsmasq
from bench.gateways import Gateway
from bench.options import Options
from bench.procs import BenchError, Procs, free_port
from bench.sysinfo import descendants, pss_kib

SERVICE = "echo"
TASK = net.upstream(1)

HAPROXY = """\
global
    nbthread 2
    pidfile {workdir}/haproxy-capacity.pid

defaults
    mode http
    timeout connect 5s
    timeout client 65s
    timeout server 65s
    timeout tunnel 30m
    timeout http-keep-alive 65s

frontend fe
    bind {address}:{port}
    bind {address}:{https} ssl crt {pem} alpn {alpn}
    # what the agent adds to each request (and its answer), so that the task reads as much
    option forwardfor
    unique-id-format %{{+X}}o\\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid
    http-request set-header X-Real-IP %[src]
    http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
    http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Client-Verify NONE if {{ ssl_fc }}
    http-request set-header X-Request-Id %[unique-id]
    http-request set-header traceparent 00-%[uuid,regsub(-,,g)]-%[uuid,regsub(-,,g),bytes(0,16)]-01
    http-after-response set-header X-Request-Id %[unique-id]
    default_backend be

backend be
    server task {task}:{task_port}
"""

CADDYFILE = """\
{{
    admin off
    auto_https off
}}

http://{host}:{port} {{
    bind {address}
    reverse_proxy {task}:{task_port}
}}

https://{host}:{https} {{
    bind {address}
    tls {crt} {key}
    reverse_proxy {task}:{task_port}
}}
"""

ROUTES = """\
routes:
  - hosts: [{host}]
    service: {service}
    port: {port}
    websocket: true
    read_timeout: 30m
    tls: {{}}
"""


def _memory_kib(gw: Gateway) -> int:
    """PSS of the gateway's processes: the program started and all it started."""
    return sum(pss_kib(pid) or 0 for proc in gw.procs for pid in (proc.pid, *descendants(proc.pid)))


def start_gateway(kind: str, procs: Procs, certs: Path, bundle: Path,
                  alpn: str = "http/1.1") -> tuple[Gateway, int]:
    """The gateway `kind` on a plain and an HTTPS port; (it, its HTTPS port). `alpn`: what
    HAProxy offers (the agent and Caddy offer h2 and http/1.1)."""
    https = free_port(net.GATEWAY)
    crt, key = certs / f"{net.HOST_HEADER}.crt", certs / f"{net.HOST_HEADER}.key"
    if kind == "agent":
        routes = procs.workdir / "routes.yaml"
        routes.write_text(ROUTES.format(host=net.HOST_HEADER, service=SERVICE,
                                        port=net.UPSTREAM_PORT))
        gw = gateways.start_agent(procs, net.DNS_MAIN, routes, label="agent", extra=[
            "--worker-processes", "2", "--https-listen", f"{net.GATEWAY}:{https}",
            "--certs-dir", str(certs), "--tls-ca-bundle", str(bundle)])
        return gw, https
    port = free_port(net.GATEWAY)
    if kind == "haproxy":
        pem = certs / "haproxy.pem"
        pem.write_bytes(crt.read_bytes() + key.read_bytes())
        cfg = procs.workdir / "haproxy-capacity.cfg"
        cfg.write_text(HAPROXY.format(workdir=procs.workdir, address=net.GATEWAY, port=port,
                                      https=https, pem=pem, task=TASK, alpn=alpn,
                                      task_port=net.UPSTREAM_PORT))
        proc = procs.start("haproxy", ["haproxy", "-db", "-f", str(cfg)])
        detail = "HAProxy, nbthread 2, maxconn from its file limit"
    else:
        home = procs.workdir / "caddy-home"
        home.mkdir(exist_ok=True)
        cfg = procs.workdir / "Caddyfile"
        cfg.write_text(CADDYFILE.format(host=net.HOST_HEADER, port=port, https=https,
                                        address=net.GATEWAY, crt=crt, key=key, task=TASK,
                                        task_port=net.UPSTREAM_PORT))
        proc = procs.start("caddy", ["caddy", "run", "--config", str(cfg), "--adapter",
                                     "caddyfile"],
                           env={"HOME": str(home), "XDG_DATA_HOME": str(home / "data"),
                                "XDG_CONFIG_HOME": str(home / "config"), "GOMAXPROCS": "2"})
        detail = "Caddy, GOMAXPROCS 2"
    gw = Gateway(kind, kind, net.GATEWAY, port, detail, [proc])
    deadline = time.monotonic() + 20
    while True:
        try:
            if gw.get(timeout=1.0)[0] == 200:
                break
        except OSError:
            pass
        gw.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"{kind} does not answer on {gw.url}")
        time.sleep(0.1)
    return gw, https


def _bursts(https: int, size: int, rounds: int) -> list[int]:
    failed = []
    for _ in range(rounds):
        run = subprocess.run(
            ["h2load", "--h1", "-n", str(size), "-c", str(size),
             f"--connect-to={net.GATEWAY}:{https}", f"https://{net.HOST_HEADER}:{https}/"],
            capture_output=True, text=True, timeout=300, check=False)
        found = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded",
                          run.stdout)
        if found is None:
            raise BenchError(f"h2load said: {run.stdout[-500:]} {run.stderr[-500:]}")
        failed.append(size - int(found.group(1)))
    return failed


def one(kind: str, opts: Options, workdir: Path, certs: Path, bundle: Path) -> dict[str, Any]:
    from tests.support.load import Clients

    with Procs(workdir) as procs:
        if kind == "agent":
            Dnsmasq(procs, net.DNS_MAIN).set({f"tasks.{SERVICE}": [TASK]},
                                             confirm=f"tasks.{SERVICE}")
        gw, https = start_gateway(kind, procs, certs, bundle)
        before = _memory_kib(gw)
        with Clients("ws", gw.port, opts.capacity_websockets, net.HOST_HEADER, processes=4,
                     address=net.GATEWAY) as clients:
            opened = clients.opened()
            held = _memory_kib(gw)
            echoed = clients.again()
        with Clients("idle", gw.port, opts.capacity_idle, net.HOST_HEADER, processes=4,
                     address=net.GATEWAY, first_source=70) as clients:
            first = clients.opened()
            second = clients.again()
        bursts = _bursts(https, opts.capacity_burst, opts.capacity_bursts)
        gw.check_alive()
    ok = opened.get("ok", 0)
    return {
        "detail": gw.detail,
        "websockets": {"opened": dict(opened), "echoed": dict(echoed)},
        "memory_before_mib": before / 1024, "memory_held_mib": held / 1024,
        "kib_per_websocket": (held - before) / ok if ok else None,
        "idle": {"first": dict(first), "second": dict(second)},
        "burst_failed": bursts,
    }


def run(opts: Options, workdir: Path) -> dict[str, Any]:
    from tests.support.load import EchoServer
    from tests.support.tlsca import TestCA

    certs = workdir / "certs"
    certs.mkdir()
    ca = TestCA()
    ca.issue(net.HOST_HEADER).write(certs, net.HOST_HEADER)
    bundle = ca.write_bundle(workdir / "roots.pem")
    echo = EchoServer(TASK, net.UPSTREAM_PORT)
    try:
        results = {}
        for kind in ("agent", "haproxy", "caddy"):
            sub = workdir / kind
            sub.mkdir()
            results[kind] = one(kind, opts, sub, certs, bundle)
    finally:
        echo.stop()
    agent = results["agent"]
    n, m, b = opts.capacity_websockets, opts.capacity_idle, opts.capacity_burst
    goals = [
        {"goal": f"{n} WebSockets held, each echoes",
         "measured": f"{agent['websockets']['echoed'].get('ok', 0)} echoed",
         "met": agent["websockets"]["echoed"] == {"ok": n}},
        {"goal": f"{m} idle kept-alive clients: no second request failed",
         "measured": f"{m - agent['idle']['second'].get('ok', 0)} failed",
         "met": agent["idle"]["second"] == {"ok": m}},
        {"goal": f"bursts of {b} new TLS connections: none failed (HAProxy: "
                 f"{sum(results['haproxy']['burst_failed'])})",
         "measured": f"{agent['burst_failed']} failed", "met": not any(agent["burst_failed"])},
    ]
    return {"params": {"websockets": n, "idle": m, "burst": b, "bursts": opts.capacity_bursts},
            "gateways": results, "goals": goals}
