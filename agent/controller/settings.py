"""The controller's settings (`gateway-agent controller`): one frozen object, from defaults,
GATEWAY_* environment variables and flags (core/settings.py)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.core import settings as core
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
    log_format: str = "text"
    log_level: str = "info"


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
    LOG_FORMAT,
    LOG_LEVEL,
)


def add_arguments(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    core.add_arguments(parser, OPTIONS, only)


def from_sources(args: argparse.Namespace,
                 environ: Mapping[str, str] | None = None) -> ControllerSettings:
    return core.from_sources(ControllerSettings, OPTIONS, args, environ)
