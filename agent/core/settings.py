"""Settings: defaults, then GATEWAY_* environment variables, then flags, into one frozen object.

Every flag has an environment variable: `--poll-interval` is `GATEWAY_POLL_INTERVAL`. A value that
does not parse is reported with the flag and the variable it came from.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "GATEWAY_"
DEFAULT_NAMESERVER = "127.0.0.11:53"


class SettingsError(ValueError):
    """A setting that does not parse; the message names the flag and its variable."""


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(value: str, default_host: str | None = None, default_port: int | None = None,
                    ) -> HostPort:
    """`HOST:PORT`, `[V6]:PORT`, `HOST` (with default_port) or `PORT` (with default_host)."""
    value = value.strip()
    host: str | None
    port_text: str | None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError(f"{value!r}: unclosed '['")
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{value!r}: expected ':PORT' after ']'")
        port_text = rest[1:] or None
    elif value.isdigit():
        host, port_text = default_host, value
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    elif value.count(":") > 1:  # a bare IPv6 address
        host, port_text = value, None
    else:
        host, port_text = value, None
    if not host:
        raise ValueError(f"{value!r}: no host")
    if port_text is None:
        if default_port is None:
            raise ValueError(f"{value!r}: no port")
        port = default_port
    else:
        if not port_text.isdigit():
            raise ValueError(f"{value!r}: port {port_text!r} is not a number")
        port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{value!r}: port {port} is out of range 1-65535")
    return HostPort(host, port)


def parse_ip_host_port(value: str, default_host: str | None = None,
                       default_port: int | None = None) -> HostPort:
    """Like parse_host_port, but the host must be an IP address (it goes into nginx `listen`)."""
    hp = parse_host_port(value, default_host, default_port)
    try:
        ipaddress.ip_address(hp.host)
    except ValueError:
        raise ValueError(f"{value!r}: {hp.host!r} is not an IP address") from None
    return hp


def parse_networks(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an address or network (CIDR)") from None
    return tuple(nets)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Docker's default address pools: overlays and swarm networks from 10.0.0.0/8
# (--default-addr-pool), bridges and docker_gwbridge from 172.16.0.0/12 and 192.168.0.0/16;
# and IPv6 unique local addresses, for overlays with IPv6.
DEFAULT_TASK_NETWORKS: tuple[Network, ...] = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                      "fc00::/7"))
LINK_LOCAL: tuple[Network, ...] = (ipaddress.ip_network("169.254.0.0/16"),
                                   ipaddress.ip_network("fe80::/10"))


def task_networks(value: str) -> tuple[Network, ...]:
    """The swarm's own networks: the only addresses a `tasks.` name may answer. Link-local is
    never one (cloud metadata answers there)."""
    nets = parse_networks(value)
    if not nets:
        raise ValueError("give at least one network (CIDR)")
    for net in nets:
        if any(net.version == ll.version and net.overlaps(ll) for ll in LINK_LOCAL):
            raise ValueError(f"{str(net)!r} overlaps link-local addresses (169.254.0.0/16, "
                             "fe80::/10: cloud metadata), which tasks never have")
    return nets


def worker_processes(value: str) -> str:
    if value != "auto" and not (value.isdigit() and 1 <= int(value) <= 1024):
        raise ValueError(f"{value!r} is not 'auto' or a number of processes")
    return value


def upstream_mode(value: str) -> str:
    if value not in ("resolve", "static"):
        raise ValueError(f"{value!r} is not resolve or static")
    return value


def zone_name(value: str) -> str:
    from agent.core.routes import ZONE_RE  # the routes model decides what a zone name may be

    if not ZONE_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid zone name")
    return value


def http_url(value: str) -> str:
    """The controller's routes URL: http(s)://HOST[:PORT]/PATH, nothing that needs quoting."""
    from urllib.parse import urlsplit

    text = value.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018  (raises ValueError for a port out of range)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment or \
            not text.isascii() or any(c.isspace() for c in text):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return text


def email(value: str) -> str:
    text = value.strip()
    if not re.fullmatch(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+", text):
        raise ValueError(f"{value!r} is not an email address")
    return text


def read_token(path: Path, flag: str = "--controller-token-file") -> str:
    """A token: one line of at least 16 printable characters (a docker secret)."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{flag}: cannot read {path}: {exc}") from None
    if len(token) < 16 or not token.isascii() or not token.isprintable() or " " in token:
        raise SettingsError(f"{flag}: {path}: the token must be one line of "
                            "at least 16 printable characters without spaces "
                            "(e.g. `openssl rand -hex 32`)")
    return token


def zone_token_files(value: str) -> tuple[tuple[str, Path], ...]:
    """`dmz=/run/secrets/token-dmz,edge=/run/secrets/token-edge`."""
    out = []
    for item in (part.strip() for part in value.split(",") if part.strip()):
        zone, eq, path = item.partition("=")
        if not eq or not path:
            raise ValueError(f"{item!r}: expected ZONE=FILE")
        out.append((zone_name(zone), Path(path)))
    return tuple(out)


def label_prefix(value: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}(?:\.[a-z][a-z0-9_-]{0,62})*", value):
        raise ValueError(f"{value!r} is not a label prefix (lowercase letters, digits, "
                         "'-', '_', dots between parts)")
    return value


def non_negative_float(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise ValueError(f"{value!r} must be 0 or more")
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError(f"{value!r} must be greater than 0")
    return number


def on_off(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("on", "true", "yes", "1"):
        return True
    if lowered in ("off", "false", "no", "0"):
        return False
    raise ValueError(f"{value!r} is not on or off")


def port_number(value: str) -> int:
    if not value.strip().isdigit() or not 1 <= int(value) <= 65535:
        raise ValueError(f"{value!r} is not a port number (1-65535)")
    return int(value)


def loopback_udp(value: str) -> HostPort:
    """ADDRESS:PORT on loopback for access-log records; port 0 picks a free port at start."""
    text = value.strip()
    any_port = text.endswith(":0")
    hp = parse_ip_host_port(text[:-1] + "1" if any_port else text)
    if not ipaddress.ip_address(hp.host).is_loopback:
        raise ValueError(f"{value!r}: records are not authenticated; use a loopback address")
    return HostPort(hp.host, 0) if any_port else hp


@dataclass(frozen=True)
class Settings:
    routes: Path | None = None
    routes_url: str | None = None  # the controller's /routes (agent/sources.py)
    controller_listen: HostPort = field(default_factory=lambda: HostPort("0.0.0.0", 9280))
    docker_url: str = "unix:///var/run/docker.sock"
    label_prefix: str = "gateway"
    resync_interval: float = 60.0
    new_service_wait: float = 10.0
    controller_token_file: Path | None = None  # shared by the controller and the gateways
    zone_token_files: tuple[tuple[str, Path], ...] = ()  # controller: a zone's own token
    acme_directory: str | None = None  # the ACME server's directory URL: ACME is on
    acme_email: str | None = None
    acme_ca_bundle: Path | None = None  # trust for the ACME server's own HTTPS (a test CA)
    acme_state_dir: Path = Path("/var/lib/gateway-controller")
    acme_renew_before: float = 30.0  # days before notAfter
    acme_retry_min: float = 300.0  # seconds; doubles after each failure, to 6 hours
    nameserver: HostPort = field(default_factory=lambda: parse_host_port(DEFAULT_NAMESERVER))
    listen: HostPort = field(default_factory=lambda: HostPort("0.0.0.0", 8080))
    https_listen: HostPort = field(default_factory=lambda: HostPort("0.0.0.0", 8443))
    https_redirect_port: int = 443
    certs_dir: Path = Path("/run/secrets")
    tls_ca_bundle: Path = Path("/etc/ssl/certs/ca-certificates.crt")
    admin_listen: HostPort = field(default_factory=lambda: HostPort("0.0.0.0", 9180))
    admin_token_file: Path | None = None  # /status and /metrics need it (a docker secret)
    status_listen: HostPort = field(default_factory=lambda: HostPort("127.0.0.1", 9181))
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
    log_format: str = "text"
    log_level: str = "info"
    access_log_metrics: bool = False
    upstream_mode: str = "resolve"  # resolve: nginx follows tasks itself; static: reload per change
    access_log_listen: HostPort = field(default_factory=lambda: HostPort("127.0.0.1", 0))
    vrrp_state_file: Path | None = None  # the keepalived notify hook's textfile, when mounted

    @property
    def routes_conf_path(self) -> Path:
        """Where the generated http-context configuration lives."""
        if self.nginx_prefix is not None:
            return self.nginx_prefix / "conf.d" / "gateway.conf"
        return self.nginx_conf_dir / "conf.d" / "default.conf"


# One row per setting: flag, destination, parser, help. Order is the order of `--help`.
Parser = Callable[[str], Any]
_OPTIONS: tuple[tuple[str, str, Parser, str], ...] = (
    ("--routes", "routes", Path, "routes YAML file (a docker config in a swarm)"),
    ("--routes-url", "routes_url", http_url,
     "the controller's routes URL, e.g. http://gateway-controller:9280/routes: routes from "
     "service labels, merged with the routes file's (docs/labels.md)"),
    ("--controller-listen", "controller_listen",
     lambda v: parse_ip_host_port(v, default_host="0.0.0.0"),
     "controller: ADDRESS:PORT of /routes, /metrics, /healthz, /readyz, /status (0.0.0.0:9280)"),
    ("--docker-url", "docker_url", str,
     "controller: the Docker API, e.g. tcp://docker-proxy:2375 for a socket proxy "
     "(unix:///var/run/docker.sock)"),
    ("--label-prefix", "label_prefix", label_prefix,
     "controller: the labels to read are PREFIX.hosts, PREFIX.port, ... (gateway)"),
    ("--resync-interval", "resync_interval", positive_float,
     "controller: seconds between two full lists of the services, besides events (60)"),
    ("--new-service-wait", "new_service_wait", non_negative_float,
     "controller: how long the route of a new service waits for its first running task before "
     "it is served anyway; 0: at once (10)"),
    ("--controller-token-file", "controller_token_file", Path,
     "a file (a docker secret) holding the token the gateways show the controller; needed "
     "for ACME, whose private keys the controller sends to the gateways only"),
    ("--zone-token-files", "zone_token_files", zone_token_files,
     "controller: ZONE=FILE,...: a token that gets only that zone's routes (and its ACME "
     "certificates), for the gateways of that zone (--zone); the token of "
     "--controller-token-file gets every zone"),
    ("--acme-directory", "acme_directory", http_url,
     "controller: an ACME server's directory URL; turns ACME on for routes with `tls: acme` "
     "(docs/acme.md: Let's Encrypt staging and production)"),
    ("--acme-email", "acme_email", email,
     "controller: the ACME account's contact address, for the CA's notices"),
    ("--acme-ca-bundle", "acme_ca_bundle", Path,
     "controller: CA certificates to trust for the ACME server's HTTPS (default: the "
     "system's)"),
    ("--acme-state-dir", "acme_state_dir", Path,
     "controller: where the ACME account key and the certificates are kept (a volume; "
     "/var/lib/gateway-controller)"),
    ("--acme-renew-before", "acme_renew_before", positive_float,
     "controller: renew a certificate this many days before it expires; one whose lifetime "
     "is under twice that, when a third of its lifetime is left (30)"),
    ("--acme-retry-min", "acme_retry_min", positive_float,
     "controller: seconds before the first retry of a failed order; doubles up to 6 hours "
     "(300)"),
    ("--nameserver", "nameserver", lambda v: parse_host_port(v, default_port=53),
     f"DNS server HOST[:PORT] to resolve tasks.<service> (default {DEFAULT_NAMESERVER})"),
    ("--listen", "listen", lambda v: parse_ip_host_port(v, default_host="0.0.0.0"),
     "[ADDRESS:]PORT nginx serves routes on (default 8080)"),
    ("--https-listen", "https_listen", lambda v: parse_ip_host_port(v, default_host="0.0.0.0"),
     "[ADDRESS:]PORT nginx serves HTTPS on, when a route has `tls` (default 8443)"),
    ("--https-redirect-port", "https_redirect_port", port_number,
     "the port clients reach HTTPS on (the published port): HTTP redirects point there (443)"),
    ("--certs-dir", "certs_dir", Path,
     "directory of the certificates and keys routes name (/run/secrets: docker secrets)"),
    ("--tls-ca-bundle", "tls_ca_bundle", Path,
     "root certificates a certificate chain must lead to, unless it ends in a root itself "
     "(/etc/ssl/certs/ca-certificates.crt)"),
    ("--admin-listen", "admin_listen", lambda v: parse_ip_host_port(v, default_host="0.0.0.0"),
     "ADDRESS:PORT of /metrics, /healthz, /readyz, /status (default 0.0.0.0:9180)"),
    ("--admin-token-file", "admin_token_file", Path,
     "a file (a docker secret) holding the token /status and /metrics need (Authorization: "
     "Bearer); /healthz and /readyz stay open. Without it, bind --admin-listen to an address "
     "only monitoring and keepalived reach"),
    ("--status-listen", "status_listen", lambda v: parse_ip_host_port(v, default_host="127.0.0.1"),
     "loopback ADDRESS:PORT of nginx's stub_status, for the agent only (default 127.0.0.1:9181)"),
    ("--poll-interval", "poll_interval", positive_float, "seconds between discovery rounds (1)"),
    ("--dns-timeout", "dns_timeout", positive_float, "seconds one DNS lookup may take (0.5)"),
    ("--dns-lookups-per-second", "dns_lookups_per_second", positive_float,
     "at most this many of the agent's own lookups a second: with more targets than fit a "
     "poll interval, each is looked up in turn (nginx follows tasks by itself; the agent's "
     "lookups give /status, readiness and a service's 503 at no task) (200)"),
    ("--dns-control-name", "dns_control_name", str,
     "a name the nameserver always answers itself; while it answers, a failed lookup of "
     "another name means no tasks. 'auto': the gateway's own reverse name when the nameserver "
     "is Docker's 127.0.0.11; 'none': off (auto)"),
    ("--task-networks", "task_networks", task_networks,
     "comma-separated CIDRs of the swarm's networks: the only addresses accepted from DNS for "
     "a service's tasks.<service>; others (loopback, link-local, public) are refused and "
     "counted (10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7: Docker's address pools)"),
    ("--reload-min-interval", "reload_min_interval", non_negative_float,
     "seconds between two reloads; changes inside it are coalesced into one (2)"),
    ("--zone", "zone", zone_name, "render only the routes of this zone"),
    ("--nginx-prefix", "nginx_prefix", Path,
     "run a private nginx under DIR (own nginx.conf, pid, logs, temp paths)"),
    ("--nginx-binary", "nginx_binary", str, "the nginx executable (nginx)"),
    ("--nginx-conf-dir", "nginx_conf_dir", Path,
     "without --nginx-prefix: nginx's configuration directory (/etc/nginx)"),
    ("--template", "template", Path, "a Jinja2 template to use instead of the built-in one"),
    ("--state-dir", "state_dir", Path,
     "keep the endpoints behind the last applied configuration here (a volume), to serve "
     "them at once after a restart while discovery is down"),
    ("--trusted-proxies", "trusted_proxies", parse_networks,
     "comma-separated CIDRs whose X-Forwarded-* headers are kept (default: none)"),
    ("--worker-processes", "worker_processes", worker_processes, "nginx worker_processes (auto)"),
    ("--log-format", "log_format", str, "text or json"),
    ("--log-level", "log_level", str, "debug, info, warning or error"),
    ("--upstream-mode", "upstream_mode", upstream_mode,
     "resolve: nginx resolves tasks.<service> itself (`server ... resolve`) and a change of "
     "tasks needs no reload; static: the agent writes task addresses and reloads (resolve)"),
    ("--access-log-metrics", "access_log_metrics", on_off,
     "on or off: per-route request metrics from nginx's access log, sent to the agent (off)"),
    ("--access-log-listen", "access_log_listen", loopback_udp,
     "loopback ADDRESS:PORT (UDP) nginx sends access-log records to; port 0 = a free port "
     "picked at start (127.0.0.1:0)"),
    ("--vrrp-state-file", "vrrp_state_file", Path,
     "the file `gateway-agent keepalived notify --textfile` writes on this node (mounted into "
     "the container): its VRRP state is shown in /status and on the dashboard (default: none)"),
)


DESTINATIONS = tuple(dest for _, dest, _, _ in _OPTIONS)


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def add_arguments(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    """Add the setting flags (all, or those whose destination is in `only`)."""
    for flag, dest, _, help_text in _OPTIONS:
        if only is None or dest in only:
            parser.add_argument(flag, dest=dest, default=None, metavar=dest.upper(),
                                help=f"{help_text} [{env_name(flag)}]")


def from_sources(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults < environment < flags. Raises SettingsError listing every bad value."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    errors: list[str] = []
    for flag, dest, parse, _ in _OPTIONS:
        raw = getattr(args, dest, None)
        source = flag
        if raw is None and env_name(flag) in environ and environ[env_name(flag)] != "":
            raw, source = environ[env_name(flag)], env_name(flag)
        if raw is None:
            continue
        try:
            values[dest] = parse(raw) if isinstance(raw, str) else raw
        except ValueError as exc:
            errors.append(f"{source}: {exc}")
    if values.get("log_format", "text") not in ("text", "json"):
        errors.append(f"--log-format: {values['log_format']!r} is not text or json")
    if values.get("log_level", "info") not in ("debug", "info", "warning", "error"):
        errors.append(f"--log-level: {values['log_level']!r} is not debug/info/warning/error")
    if errors:
        raise SettingsError("; ".join(errors))
    return Settings(**values)
