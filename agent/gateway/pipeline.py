"""The pipeline, assembled once: the planner a gateway with these settings uses, and the inputs
it is given (the routes, the endpoints, and what the certificate and file stores make of the
routes). `run` (reconciler.py) and `render` (cli.py) both come through here."""

from __future__ import annotations

import tempfile
from pathlib import Path

from agent.core.routes import RouteTable
from agent.gateway.drivers.capacity import listen_backlog
from agent.gateway.drivers.logfile import JSON_FILE_NAME, log_path
from agent.gateway.drivers.routefiles import for_gateway
from agent.gateway.drivers.tls import Certificates
from agent.gateway.model import Rendered, Snapshot
from agent.gateway.plan.desired import Inputs, Planner, acme_target
from agent.gateway.plan.observe import log_plan
from agent.gateway.plan.stream import StreamRenderer
from agent.gateway.protocols import CertificateStore, FileStore
from agent.gateway.settings import GatewaySettings


def planner_for(settings: GatewaySettings, access_log: str | None = None) -> Planner:
    """The planner `run` uses; `gateway-agent render` prints what it would serve."""
    resolve = settings.upstream_mode == "resolve"
    resolver = str(settings.resolver_listen)  # the agent's own (drivers/dnsserver.py)
    return Planner(listen=str(settings.listen), status_listen=str(settings.status_listen),
                   trusted_proxies=[str(n) for n in settings.trusted_proxies],
                   template=settings.template, access_log=access_log,
                   https_listen=str(settings.https_listen),
                   https_redirect_port=settings.https_redirect_port, http3=settings.http3,
                   resolver=resolver, resolve=resolve, own_resolver=True,
                   backlog=listen_backlog(),
                   logs=log_plan(settings.access_log, relay_file_of(settings),
                                 trace=tracing(settings), sample=settings.trace_sample_ratio),
                   stream=StreamRenderer(address=settings.listen.host, resolver=resolver,
                                         resolve=resolve, own_resolver=True,
                                         access_log=access_log))


def tracing(settings: GatewaySettings) -> bool:
    """Whether spans are made: an --otlp-endpoint, and the access-log file they come from."""
    return settings.otlp_endpoint is not None and settings.access_log_metrics


def access_log_of(settings: GatewaySettings) -> str | None:
    """The access-log file nginx writes for the agent (--access-log-metrics), or None."""
    return str(log_path(settings.nginx_prefix, settings.nginx_conf_dir)) \
        if settings.access_log_metrics else None


def relay_file_of(settings: GatewaySettings) -> str:
    """The file nginx writes the JSON access log to for `--access-log stdout`: the agent copies
    it to its standard output (drivers/logfile.py)."""
    return str(log_path(settings.nginx_prefix, settings.nginx_conf_dir, JSON_FILE_NAME))


def gather(table: RouteTable, snapshot: Snapshot, *, certificates: CertificateStore | None,
           route_files: FileStore | None, routes_url: str | None) -> Inputs:
    """The inputs of the plan: the certificates and the files of these routes as their stores
    have them now, and the controller for ACME challenges."""
    return Inputs(table, snapshot,
                  tls=certificates.plan(table) if certificates is not None else None,
                  acme=acme_target(routes_url, table),
                  files=route_files.plan(table) if route_files is not None else None)


def render_once(settings: GatewaySettings, table: RouteTable, snapshot: Snapshot) -> Rendered:
    """What `run` would serve for this snapshot: the HTTPS servers of the certificates in
    --certs-dir that pass the checks, the files routes name (from --route-files-dir, refused as
    `run` refuses them, each refusal logged as `run` logs it), the ACME challenges' location,
    the access log. The checked copies go to a temporary folder (`run` keeps its own store)."""
    with tempfile.TemporaryDirectory(prefix="gateway-render-") as tmp:
        inputs = gather(table, snapshot,
                        certificates=Certificates(settings.certs_dir, Path(tmp, "tls"),
                                                  settings.tls_ca_bundle),
                        route_files=for_gateway(settings, Path(tmp, "files")),
                        routes_url=settings.routes_url)
        return planner_for(settings, access_log_of(settings)).desired(inputs)
