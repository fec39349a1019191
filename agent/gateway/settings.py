"""The gateway's settings (`gateway-agent run`, `check`, `render`): one frozen object, from
defaults, GATEWAY_* environment variables and flags (core/settings.py)."""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.core import settings as core
from agent.core.settings import (
    CONTROLLER_TOKEN_FILE,
    DEFAULT_NAMESERVER,
    DEFAULT_TASK_NETWORKS,
    LOG_FORMAT,
    LOG_LEVEL,
    ROUTES,
    HostPort,
    Network,
    Option,
    http_url,
    non_negative_float,
    on_off,
    parse_host_port,
    parse_ip_host_port,
    parse_networks,
    port_number,
    positive_float,
    task_networks,
    upstream_mode,
    worker_processes,
    zone_name,
)
from agent.gateway.drivers.capacity import open_files
from agent.gateway.drivers.logfile import ROTATE_SIZE
from agent.gateway.plan.observe import access_log_option
from agent.gateway.plan.traces import sample_ratio


@dataclass(frozen=True)
class GatewaySettings:
    routes: Path | None = None
    routes_url: str | None = None  # the controller's /routes (gateway/source.py)
    controller_token_file: Path | None = None  # shared by the controller and the gateways
    nameserver: HostPort = field(default_factory=lambda: parse_host_port(DEFAULT_NAMESERVER))
    listen: HostPort = field(default_factory=lambda: HostPort("0.0.0.0", 8080))
    https_listen: HostPort = field(default_factory=lambda: HostPort("0.0.0.0", 8443))
    https_redirect_port: int = 443
    http3: bool = True  # HTTP/3 (QUIC, UDP) on the HTTPS port too (docs/tls.md)
    certs_dir: Path = Path("/run/secrets")
    # the files routes name (error pages, htpasswd files): never the secrets of --certs-dir
    route_files_dir: Path = Path("/etc/gateway/files")
    tls_ca_bundle: Path = Path("/etc/ssl/certs/ca-certificates.crt")
    admin_listen: HostPort = field(default_factory=lambda: HostPort("0.0.0.0", 9180))
    admin_token_file: Path | None = None  # /status and /metrics need it (a docker secret)
    status_listen: HostPort = field(default_factory=lambda: HostPort("127.0.0.1", 9181))
    # nginx's resolver: the agent answers nginx's lookups here (gateway/dnsserver.py)
    resolver_listen: HostPort = field(default_factory=lambda: HostPort("127.0.0.1", 9182))
    poll_interval: float = 1.0
    dns_timeout: float = 0.5
    dns_lookups_per_second: float = 200.0
    dns_control_name: str = "auto"
    reload_min_interval: float = 2.0
    zone: str | None = None
    nginx_prefix: Path | None = None
    nginx_binary: str = "nginx"
    nginx_conf_dir: Path = Path("/etc/nginx")
    template: Path | None = None
    state_dir: Path | None = None
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    task_networks: tuple[Network, ...] = DEFAULT_TASK_NETWORKS
    worker_processes: str = "auto"
    # glibc maps nginx's 16 KB pool blocks alone: a reload gives the old configuration's memory
    # back, for an mmap per gzipped answer (agent/gateway/drivers/nginx.py, MMAP_THRESHOLD)
    nginx_return_memory: bool = False
    open_files: str = "auto"  # per nginx worker; auto: the hard limit (agent/gateway/capacity.py)
    log_format: str = "text"
    log_level: str = "info"
    access_log_metrics: bool = True
    upstream_mode: str = "resolve"  # resolve: nginx follows tasks itself; static: reload per change
    access_log_rotate_size: int = ROTATE_SIZE  # bytes; the access-log file is rotated past it
    vrrp_state_file: Path | None = None  # the keepalived notify hook's textfile, when mounted
    drain_delay: float = 5.0  # seconds nginx keeps serving after SIGTERM (agent/gateway/drain.py)
    access_log: str = "stdout"  # the JSON access log: stdout, off or a file (plan/observe.py)
    otlp_endpoint: str | None = None  # OpenTelemetry spans over OTLP/HTTP (observe/spans.py)
    trace_sample_ratio: float = 1.0  # of the traces starting here (plan/traces.py)


def rotate_size(value: str) -> int:
    if not value.strip().isdigit() or int(value) < 4096:
        raise ValueError(f"{value!r} is not a size in bytes of at least 4096")
    return int(value)


def loopback_host_port(value: str) -> HostPort:
    """[ADDRESS:]PORT on a loopback address: a port only this host's nginx may ask."""
    hp = parse_ip_host_port(value, default_host="127.0.0.1")
    if not ipaddress.ip_address(hp.host).is_loopback:
        raise ValueError(f"{value!r}: {hp.host} is not a loopback address")
    return hp


# One row per setting. Order is the order of `--help`.
OPTIONS: tuple[Option, ...] = (
    ROUTES,
    Option("--routes-url", "routes_url", http_url,
           "the controller's routes URL, e.g. http://gateway-controller:9280/routes: routes from"
           " service labels, merged with the routes file's (docs/labels.md)"),
    CONTROLLER_TOKEN_FILE,
    Option("--nameserver", "nameserver", lambda v: parse_host_port(v, default_port=53),
           f"DNS server HOST[:PORT] to resolve tasks.<service> (default {DEFAULT_NAMESERVER})"),
    Option("--listen", "listen", lambda v: parse_ip_host_port(v, default_host="0.0.0.0"),
           "[ADDRESS:]PORT nginx serves routes on (default 8080)"),
    Option("--https-listen", "https_listen",
           lambda v: parse_ip_host_port(v, default_host="0.0.0.0"),
           "[ADDRESS:]PORT nginx serves HTTPS on, when a route has `tls` (default 8443)"),
    Option("--https-redirect-port", "https_redirect_port", port_number,
           "the port clients reach HTTPS on (the published port): HTTP redirects point there "
           "(443)"),
    Option("--http3", "http3", on_off,
           "on or off: HTTP/3 (QUIC) on the HTTPS port's UDP side too, advertised to clients "
           "with Alt-Svc on --https-redirect-port; publish that UDP port (on)"),
    Option("--certs-dir", "certs_dir", Path,
           "directory of the certificates and keys routes name (/run/secrets: docker secrets)"),
    Option("--route-files-dir", "route_files_dir", Path,
           "directory of the files routes name: error pages (NAME.html), htpasswd files "
           "(NAME.htpasswd) and CA files (NAME.pem), which labels may name too; never "
           "--certs-dir, whose secrets no route reads (/etc/gateway/files: docker configs or "
           "secrets mounted there)"),
    Option("--tls-ca-bundle", "tls_ca_bundle", Path,
           "root certificates a certificate chain must lead to, unless it ends in a root itself "
           "(/etc/ssl/certs/ca-certificates.crt)"),
    Option("--admin-listen", "admin_listen",
           lambda v: parse_ip_host_port(v, default_host="0.0.0.0"),
           "ADDRESS:PORT of /metrics, /healthz, /readyz, /status (default 0.0.0.0:9180)"),
    Option("--admin-token-file", "admin_token_file", Path,
           "a file (a docker secret) holding the token /status and /metrics need (Authorization:"
           " Bearer); /healthz and /readyz stay open. Without it, bind --admin-listen to an "
           "address only monitoring and keepalived reach"),
    Option("--status-listen", "status_listen",
           lambda v: parse_ip_host_port(v, default_host="127.0.0.1"),
           "loopback ADDRESS:PORT of nginx's stub_status, for the agent only (default "
           "127.0.0.1:9181)"),
    Option("--resolver-listen", "resolver_listen", loopback_host_port,
           "loopback ADDRESS:PORT where the agent answers nginx's own DNS lookups (UDP and TCP):"
           " upstream names from its discovery, only addresses of --task-networks; other names "
           "are passed on to --nameserver (default 127.0.0.1:9182)"),
    Option("--poll-interval", "poll_interval", positive_float,
           "seconds between discovery rounds; a changed routes file starts one at once (1)"),
    Option("--dns-timeout", "dns_timeout", positive_float,
           "seconds one DNS lookup may take (0.5)"),
    Option("--dns-lookups-per-second", "dns_lookups_per_second", positive_float,
           "at most this many of the agent's own lookups a second: with more targets than fit a "
           "poll interval, each is looked up in turn (nginx follows tasks by itself; the agent's"
           " lookups give /status, readiness and a service's 503 at no task) (200)"),
    Option("--dns-control-name", "dns_control_name", str,
           "a name the nameserver always answers itself; while it answers, a failed lookup of "
           "another name means no tasks. 'auto': the gateway's own reverse name when the "
           "nameserver is Docker's 127.0.0.11; 'none': off (auto)"),
    Option("--task-networks", "task_networks", task_networks,
           "comma-separated CIDRs of the swarm's networks: the only addresses accepted from DNS "
           "for a service's tasks.<service>; others (loopback, link-local, public) are refused "
           "and counted (10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7: Docker's address "
           "pools)"),
    Option("--reload-min-interval", "reload_min_interval", non_negative_float,
           "seconds between two reloads; changes inside it are coalesced into one (2)"),
    Option("--zone", "zone", zone_name,
           "render only the routes of this zone"),
    Option("--nginx-prefix", "nginx_prefix", Path,
           "run a private nginx under DIR (own nginx.conf, pid, logs, temp paths)"),
    Option("--nginx-binary", "nginx_binary", str,
           "the nginx executable (nginx)"),
    Option("--nginx-conf-dir", "nginx_conf_dir", Path,
           "without --nginx-prefix: nginx's configuration directory (/etc/nginx)"),
    Option("--template", "template", Path,
           "a Jinja2 template to use instead of the built-in one"),
    Option("--state-dir", "state_dir", Path,
           "keep the endpoints behind the last applied configuration here (a volume), to serve "
           "them at once after a restart while discovery is down"),
    Option("--trusted-proxies", "trusted_proxies", parse_networks,
           "comma-separated CIDRs whose X-Forwarded-* headers are kept (default: none)"),
    Option("--worker-processes", "worker_processes", worker_processes,
           "nginx worker_processes (auto)"),
    Option("--nginx-return-memory", "nginx_return_memory", on_off,
           "on or off: nginx gives a reload's old configuration back to the system (worth it "
           "at thousands of hosts; each gzipped answer then costs a memory mapping) (off)"),
    Option("--open-files", "open_files", open_files,
           "open files per nginx worker (worker_rlimit_nofile; worker_connections is this less "
           "a reserve of an eighth, at most 4096): 'auto' raises the limit to the hard one the "
           "container gives (ulimits nofile), at most 65536 (auto)"),
    LOG_FORMAT,
    LOG_LEVEL,
    Option("--upstream-mode", "upstream_mode", upstream_mode,
           "resolve: nginx resolves tasks.<service> itself (`server ... resolve`) and a change "
           "of tasks needs no reload; static: the agent writes task addresses and reloads "
           "(resolve)"),
    Option("--access-log-metrics", "access_log_metrics", on_off,
           "on or off: per-route request metrics from nginx's access log, written to a file "
           "the agent reads (on)"),
    Option("--access-log-rotate-size", "access_log_rotate_size", rotate_size,
           f"BYTES: the access-log file is rotated once it is larger ({ROTATE_SIZE})"),
    Option("--vrrp-state-file", "vrrp_state_file", Path,
           "the file `gateway-agent keepalived notify --textfile` writes on this node (mounted "
           "into the container): its VRRP state is shown in /status and on the dashboard, and "
           "a drain ends as soon as this node holds no VIP (default: none)"),
    Option("--drain-delay", "drain_delay", non_negative_float,
           "seconds nginx keeps serving after SIGTERM while /readyz says draining, so that "
           "keepalived moves the VIP (or a load balancer its traffic) first; with "
           "--vrrp-state-file the drain ends once this node holds no VIP, at most this long (5)"),
    Option("--access-log", "access_log", access_log_option,
           "stdout, off or an absolute FILE: where nginx writes one JSON line per request (route,"
           " service, task, status, timings, request and trace ids; docs/logs.md) (stdout)"),
    Option("--otlp-endpoint", "otlp_endpoint", http_url,
           "an OTLP/HTTP traces URL, e.g. http://otel-collector:4318/v1/traces: one "
           "OpenTelemetry span per request is sent there, made of the access-log lines the "
           "agent reads (needs --access-log-metrics on; docs/logs.md) (default: none, off)"),
    Option("--trace-sample-ratio", "trace_sample_ratio", sample_ratio,
           "0 to 1: the share of the traces starting at the gateway that are sampled; a "
           "client's traceparent keeps its own sampled flag (parent-based) (1)"),
)


def add_arguments(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    core.add_arguments(parser, OPTIONS, only)


def from_sources(args: argparse.Namespace,
                 environ: Mapping[str, str] | None = None) -> GatewaySettings:
    return core.from_sources(GatewaySettings, OPTIONS, args, environ)
