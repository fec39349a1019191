"""The things compared: upstream "tasks", and the gateways in front of them.

- upstream: a real nginx on its own loopback address answering 200 with that address as the body.
- article: nginx with the original article's configuration (`resolver ... valid=30s` and a
  variable in `proxy_pass`), inside the official nginx image's main configuration.
- agent: `gateway-agent run` with a private nginx (`--nginx-prefix`), at its defaults.
- haproxy: HAProxy's own DNS discovery (`resolvers` + `server-template`), `http-reuse always`,
  one thread.
- caddy: Caddy's `reverse_proxy` with dynamic A-record upstreams (its own DNS discovery).
- direct: no gateway; the client talks to one upstream.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import net
from bench.procs import (
    BenchError,
    Proc,
    Procs,
    free_port,
    http_get,
    run_quiet,
    tcp_open,
    wait_until,
)

# nginx's temporary files, inside a private prefix
TEMP_PATHS = " ".join(f"{kind}_temp_path {{prefix}}/{kind};"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))

# The official image's nginx.conf, less what does not matter here (user, mime types), and with
# the access log off as in the agent's nginx: the comparison is about proxying, not logging.
ARTICLE_CONF = """\
worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log notice;
events {{
    worker_connections 1024;
}}
http {{
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    keepalive_timeout 65;
    {{temp_paths}}
    # {reload_marker}

    # The article's default.conf, with this benchmark's names and addresses.
    server {{
        listen {listen};
        server_name {server_name};
        resolver {resolver} valid=30s;

        location ^~ / {{
            set $upstream_bench {service};
            proxy_cache off;
            proxy_pass http://$upstream_bench:{port}$request_uri;
        }}
    }}
}}
"""

UPSTREAM_CONF = """\
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    {{temp_paths}}
    server {{
        listen {address}:{port} backlog=4096;
        default_type text/plain;
        location / {{
            return 200 "{address}\\n";
        }}
        location = /bench-stub-status {{
            stub_status;
        }}
    }}
}}
"""

# HAProxy's own DNS discovery, as this benchmark configures it (here and in scale.py)
HAPROXY_RESOLVERS = """\
resolvers bench
    nameserver ns1 {resolver}:53
    accepted_payload_size 8192
    hold valid 10s
    timeout resolve 1s
    timeout retry 1s
"""

HAPROXY_CONF = """\
global
    nbthread 1
    maxconn 4096
    pidfile {workdir}/haproxy.pid

defaults
    mode http
    timeout connect 5s
    timeout client 65s
    timeout server 65s
    timeout http-keep-alive 65s
    http-reuse always

""" + HAPROXY_RESOLVERS + """
frontend fe
    bind {listen}
    use_backend be if {{ hdr(host) -i {server_name} }}

backend be
    balance roundrobin
    server-template task {slots} tasks.{service}:{port} resolvers bench init-addr none \
resolve-prefer ipv4
"""

CADDYFILE = """\
{{
    admin off
    auto_https off
}}

http://{server_name}:{listen_port} {{
    bind {listen_host}
    reverse_proxy {{
        dynamic a {{
            name tasks.{service}
            port {port}
            refresh 1s
            resolvers {resolver}:53
        }}
    }}
}}
"""

ROUTES_YAML = """\
routes:
  - hosts: [{server_name}]
    service: {service}
    port: {port}
"""


@dataclass
class Gateway:
    name: str
    label: str
    host: str
    port: int
    detail: str
    procs: list[Proc] = field(default_factory=list)
    host_header: str = net.HOST_HEADER
    admin: tuple[str, int] | None = None
    reload_command: list[str] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def check_alive(self) -> None:
        for proc in self.procs:
            proc.check_alive()

    def get(self, timeout: float = 2.0) -> tuple[int, str]:
        return http_get(self.host, self.port, "/", self.host_header, timeout)


def _prefix(procs: Procs, name: str, in_memory: bool = False) -> Path:
    """nginx's folder: in the working directory, or `in_memory` (Procs.memory_dir)."""
    if in_memory:
        prefix = procs.memory_dir(name)
    else:
        prefix = procs.workdir / name
        prefix.mkdir(parents=True, exist_ok=True)
    # nginx's workers drop to an unprivileged user when run as root: let them into the prefix.
    prefix.chmod(0o755)
    procs.workdir.chmod(0o755)
    return prefix


def _start_nginx(procs: Procs, name: str, conf_text: str, prefix: Path) -> Proc:
    conf = prefix / "nginx.conf"
    conf.write_text(conf_text.replace("{temp_paths}", TEMP_PATHS.format(prefix=prefix)))
    test = run_quiet(["nginx", "-t", "-q", "-p", str(prefix), "-e", str(prefix / "error.log"),
                      "-c", str(conf)])
    if test.returncode != 0:
        raise BenchError(f"nginx -t refused {conf}: {test.stderr.strip()}")
    return procs.start(name, ["nginx", "-p", str(prefix), "-e", str(prefix / "error.log"),
                              "-c", str(conf)])


def start_upstreams(procs: Procs, addresses: Sequence[str]) -> list[Proc]:
    started = []
    for address in addresses:
        name = "upstream-" + address.replace(".", "-")
        prefix = _prefix(procs, name)
        text = UPSTREAM_CONF.format(prefix=prefix, address=address, port=net.UPSTREAM_PORT)
        started.append(_start_nginx(procs, name, text, prefix))
    for address, proc in zip(addresses, started, strict=True):
        _wait_listening(proc, address, net.UPSTREAM_PORT)
    return started


def upstream_connections(address: str) -> int:
    """Connections an upstream nginx has accepted so far, not counting this reading's own."""
    status, text = http_get(address, net.UPSTREAM_PORT, "/bench-stub-status")
    if status != 200:
        raise BenchError(f"upstream {address} stub_status answered {status}")
    return int(text.splitlines()[2].split()[0]) - 1


def _wait_listening(proc: Proc, host: str, port: int) -> None:
    wait_until(lambda: proc.check_alive() and tcp_open(host, port), 10,
               f"{proc.name} listening on {host}:{port}")


def start_article(procs: Procs, resolver: str, service: str, name: str = "article",
                  workers: str = "auto") -> Gateway:
    prefix = _prefix(procs, name)
    port = free_port(net.GATEWAY)
    conf = ARTICLE_CONF.format(
        workers=workers, prefix=prefix, listen=f"{net.GATEWAY}:{port}",
        server_name=net.HOST_HEADER, resolver=resolver, service=service,
        port=net.UPSTREAM_PORT, reload_marker="generation 0")
    proc = _start_nginx(procs, name, conf, prefix)
    gw = Gateway(name, "article (nginx, resolver valid=30s)", net.GATEWAY, port,
                 f"nginx, worker_processes {workers}, `resolver valid=30s`, variable proxy_pass, "
                 "no upstream keepalive", [proc],
                 reload_command=["nginx", "-p", str(prefix), "-e", str(prefix / "error.log"),
                                 "-c", str(prefix / "nginx.conf"), "-s", "reload"])
    _wait_serving(gw)
    return gw


def start_haproxy(procs: Procs, resolver: str, service: str, slots: int = 10) -> Gateway:
    port = free_port(net.GATEWAY)
    cfg = procs.workdir / "haproxy.cfg"
    cfg.write_text(HAPROXY_CONF.format(
        workdir=procs.workdir, resolver=resolver, listen=f"{net.GATEWAY}:{port}",
        server_name=net.HOST_HEADER, slots=slots, service=service, port=net.UPSTREAM_PORT))
    proc = procs.start("haproxy", ["haproxy", "-db", "-f", str(cfg)])
    gw = Gateway("haproxy", "HAProxy (resolvers + server-template)", net.GATEWAY, port,
                 f"HAProxy, nbthread 1, `server-template {slots}`, `timeout resolve 1s`, "
                 "`http-reuse always`", [proc])
    _wait_serving(gw)
    return gw


def start_caddy(procs: Procs, resolver: str, service: str) -> Gateway:
    port = free_port(net.GATEWAY)
    home = procs.workdir / "caddy-home"
    home.mkdir(exist_ok=True)
    cfg = procs.workdir / "Caddyfile"
    cfg.write_text(CADDYFILE.format(
        server_name=net.HOST_HEADER, listen_port=port, listen_host=net.GATEWAY,
        service=service, port=net.UPSTREAM_PORT, resolver=resolver))
    env = {"HOME": str(home), "XDG_DATA_HOME": str(home / "data"),
           "XDG_CONFIG_HOME": str(home / "config")}
    proc = procs.start("caddy", ["caddy", "run", "--config", str(cfg), "--adapter", "caddyfile"],
                       env=env)
    gw = Gateway("caddy", "Caddy (reverse_proxy, dynamic a)", net.GATEWAY, port,
                 f"Caddy, GOMAXPROCS {os.cpu_count()}, `dynamic a` upstreams, `refresh 1s`",
                 [proc])
    _wait_serving(gw)
    return gw


def venv_program(name: str) -> str:
    """A console script of the project (gateway-agent, gateway-check), beside this Python."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise BenchError(f"{name} is not installed (scripts/setup.sh bench installs it)")
    return found


def agent_help() -> str:
    """`gateway-agent run --help`: which flags this version of the agent has."""
    return run_quiet([venv_program("gateway-agent"), "run", "--help"]).stdout


def write_routes(path: Path, service: str) -> Path:
    path.write_text(ROUTES_YAML.format(server_name=net.HOST_HEADER, service=service,
                                       port=net.UPSTREAM_PORT))
    return path


def start_agent(procs: Procs, resolver: str, routes: Path, name: str = "agent",
                poll_interval: float | None = None, extra: Sequence[str] = (),
                ready_timeout: float = 60.0, label: str | None = None,
                serve_check: bool = True) -> Gateway:
    """`gateway-agent run` with a private nginx; returns once /readyz answers 200. As in the
    gateway's stack, nginx's files (its logs among them) are in memory and the agent's standard
    output is a pipe that is read."""
    prefix = _prefix(procs, name, in_memory=True)
    port = free_port(net.GATEWAY)
    admin = (net.GATEWAY, free_port(net.GATEWAY))
    status_port = free_port(net.GATEWAY)
    argv = [venv_program("gateway-agent"), "run", "--routes", str(routes),
            "--nameserver", f"{resolver}:53", "--listen", f"{net.GATEWAY}:{port}",
            "--admin-listen", f"{admin[0]}:{admin[1]}",
            "--status-listen", f"{net.GATEWAY}:{status_port}", "--nginx-prefix", str(prefix)]
    if "--task-networks" in agent_help():  # the benchmarks' tasks are on loopback
        argv += ["--task-networks", "127.0.0.0/8"]
    if "--resolver-listen" in agent_help():  # a port of its own, beside the other gateways
        argv += ["--resolver-listen", f"{net.GATEWAY}:{free_port(net.GATEWAY)}"]
    if poll_interval is not None:
        argv += ["--poll-interval", f"{poll_interval:g}"]
    argv += list(extra)
    proc = procs.start(name, argv, read_stdout=True)
    settings = " ".join(extra) or "defaults"
    gw = Gateway(name, label or "agent (gateway-agent run)", net.GATEWAY, port,
                 f"gateway-agent, poll {poll_interval or 1:g}s, {settings}", [proc], admin=admin)
    wait_until(lambda: proc.check_alive() and http_get(*admin, "/readyz")[0] == 200,
               ready_timeout, f"{name} /readyz")
    if serve_check:
        _wait_serving(gw)
    return gw


def _wait_serving(gw: Gateway, timeout: float = 20.0) -> None:
    def serving() -> bool:
        gw.check_alive()
        return gw.get(timeout=1.0)[0] == 200

    wait_until(serving, timeout, f"{gw.name} answering 200 on {gw.url}", interval=0.05)


def direct(address: str) -> Gateway:
    return Gateway("direct", "no gateway (upstream directly)", address, net.UPSTREAM_PORT,
                   "wrk straight to one upstream nginx")
