"""The controller's settings (`gateway-agent controller`): one frozen object, from defaults,
GATEWAY_* environment variables and flags (core/settings.py)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.core import settings as core
from agent.core.fields import DNS_NAME_RE
from agent.core.settings import (
    CONTROLLER_TOKEN_FILE,
    LOG_FORMAT,
    LOG_LEVEL,
    ROUTES,
    HostPort,
    Option,
    email,
    http_url,
    label_prefix,
    non_negative_float,
    parse_host_port,
    parse_ip_host_port,
    positive_float,
    zone_token_files,
)


@dataclass(frozen=True)
class ControllerSettings:
    routes: Path | None = None
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
    acme_challenge: str = "http-01"  # for hosts that are not wildcards (those are dns-01)
    acme_dns_provider: str | None = None  # rfc2136 or lexicon:NAME: DNS-01 is possible
    acme_dns_server: HostPort | None = None  # rfc2136: the primary; lexicon: where to check
    acme_dns_tsig_key_file: Path | None = None  # rfc2136 (a swarm secret)
    acme_dns_credentials_file: Path | None = None  # lexicon: the provider's options (a secret)
    acme_dns_zone: tuple[str, ...] = ()  # the zones the records go in (default: SOA lookup)
    acme_dns_propagation_timeout: float = 120.0  # seconds to wait for the TXT to show
    log_format: str = "text"
    log_level: str = "info"


def acme_challenge(value: str) -> str:
    if value not in ("http-01", "dns-01"):
        raise ValueError(f"{value!r} is not http-01 or dns-01")
    return value


def dns_provider(value: str) -> str:
    kind, colon, name = value.partition(":")
    if value == "rfc2136" or (kind == "lexicon" and colon and re.fullmatch(r"[a-z0-9_]+", name)):
        return value
    raise ValueError(f"{value!r} is not rfc2136 or lexicon:NAME (a dns-lexicon provider, "
                     "e.g. lexicon:cloudflare)")


def dns_zones(value: str) -> tuple[str, ...]:
    zones = tuple(z.strip().rstrip(".").lower() for z in value.split(",") if z.strip())
    bad = [z for z in zones if not DNS_NAME_RE.fullmatch(z)]
    if bad or not zones:
        raise ValueError(f"{value!r}: expected DNS zone names, comma-separated")
    return zones


OPTIONS: tuple[Option, ...] = (
    ROUTES,
    Option("--controller-listen", "controller_listen",
           lambda v: parse_ip_host_port(v, default_host="0.0.0.0"),
           "ADDRESS:PORT of /routes, /metrics, /healthz, /readyz, /status (0.0.0.0:9280)"),
    Option("--docker-url", "docker_url", str,
           "the Docker API, e.g. tcp://docker-proxy:2375 for a socket proxy "
           "(unix:///var/run/docker.sock)"),
    Option("--label-prefix", "label_prefix", label_prefix,
           "the labels to read are PREFIX.hosts, PREFIX.port, ... (gateway)"),
    Option("--resync-interval", "resync_interval", positive_float,
           "seconds between two full lists of the services, besides events (60)"),
    Option("--new-service-wait", "new_service_wait", non_negative_float,
           "how long the route of a new service waits for its first running task before it is "
           "served anyway; 0: at once (10)"),
    CONTROLLER_TOKEN_FILE,
    Option("--zone-token-files", "zone_token_files", zone_token_files,
           "ZONE=FILE,...: a token that gets only that zone's routes (and its ACME "
           "certificates), for the gateways of that zone (--zone); the token of "
           "--controller-token-file gets every zone"),
    Option("--acme-directory", "acme_directory", http_url,
           "an ACME server's directory URL; turns ACME on for routes with `tls: acme` "
           "(docs/acme.md: Let's Encrypt staging and production)"),
    Option("--acme-email", "acme_email", email,
           "the ACME account's contact address, for the CA's notices"),
    Option("--acme-ca-bundle", "acme_ca_bundle", Path,
           "CA certificates to trust for the ACME server's HTTPS (default: the system's)"),
    Option("--acme-state-dir", "acme_state_dir", Path,
           "where the ACME account key and the certificates are kept (a volume; "
           "/var/lib/gateway-controller)"),
    Option("--acme-renew-before", "acme_renew_before", positive_float,
           "renew a certificate this many days before it expires; one whose lifetime is under "
           "twice that, when a third of its lifetime is left (30)"),
    Option("--acme-retry-min", "acme_retry_min", positive_float,
           "seconds before the first retry of a failed order; doubles up to 6 hours (300)"),
    Option("--acme-challenge", "acme_challenge", acme_challenge,
           "http-01 or dns-01: how hosts that are not wildcards are validated; wildcards are "
           "always dns-01 (http-01)"),
    Option("--acme-dns-provider", "acme_dns_provider", dns_provider,
           "rfc2136 (dynamic updates, TSIG) or lexicon:NAME (a DNS provider's API through "
           "dns-lexicon, e.g. lexicon:cloudflare): turns DNS-01 on (docs/acme.md)"),
    Option("--acme-dns-server", "acme_dns_server",
           lambda v: parse_host_port(v, default_port=53),
           "HOST[:PORT]: rfc2136: the primary server taking the updates; lexicon: the server "
           "the TXT records are checked on (default: the zone's NS)"),
    Option("--acme-dns-tsig-key-file", "acme_dns_tsig_key_file", Path,
           "rfc2136: the TSIG key in BIND's format, as tsig-keygen writes it (a swarm secret)"),
    Option("--acme-dns-credentials-file", "acme_dns_credentials_file", Path,
           "lexicon: the provider's options, one name=value a line, e.g. auth_token=... "
           "(a swarm secret)"),
    Option("--acme-dns-zone", "acme_dns_zone", dns_zones,
           "ZONE,...: the zones the TXT records go in (default: the zone the DNS answers for "
           "each name)"),
    Option("--acme-dns-propagation-timeout", "acme_dns_propagation_timeout", positive_float,
           "seconds to wait for every authoritative server to show a TXT record before the CA "
           "is told to look (120)"),
    LOG_FORMAT,
    LOG_LEVEL,
)


def add_arguments(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    core.add_arguments(parser, OPTIONS, only)


def from_sources(args: argparse.Namespace,
                 environ: Mapping[str, str] | None = None) -> ControllerSettings:
    return core.from_sources(ControllerSettings, OPTIONS, args, environ)
