"""`gateway-agent run` (the container's entrypoint), `check` (a routes file) and `render` (the
configuration for a snapshot of endpoints)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent.core import logs
from agent.core.routes import RoutesError, RouteTable
from agent.gateway import settings

if TYPE_CHECKING:
    from agent.gateway.model import Endpoints


def _report(exc: RoutesError, suffix: str = "") -> int:
    """Every problem of a routes file, one per line; exit status 1."""
    print(f"{exc.source}: {len(exc.errors)} error(s){suffix}", file=sys.stderr)
    for err in exc.errors:
        print(f"  {err}", file=sys.stderr)
    return 1


def _routes_or_exit(s: settings.GatewaySettings) -> RouteTable | int:
    """The routes of --routes (for --zone), or the exit status after saying what is wrong."""
    from agent.gateway.drivers.ports import load_for_gateway

    if s.routes is None:
        print("error: --routes FILE (or GATEWAY_ROUTES) is required", file=sys.stderr)
        return 2
    try:
        return load_for_gateway(s.routes, s).for_zone(s.zone)
    except RoutesError as exc:
        return _report(exc)


def cmd_run(args: argparse.Namespace) -> int:
    from agent.gateway import daemon
    from agent.gateway.drivers.dnsserver import ResolverError

    s = settings.from_sources(args)
    logs.setup(s.log_format, s.log_level)
    if s.routes is None and s.routes_url is None:
        print("error: --routes FILE or --routes-url URL (or GATEWAY_ROUTES, GATEWAY_ROUTES_URL) "
              "is required", file=sys.stderr)
        return 2
    if s.otlp_endpoint is not None and not s.access_log_metrics:
        print("error: --otlp-endpoint needs --access-log-metrics on: spans are made of the "
              "lines nginx writes there", file=sys.stderr)
        return 2
    try:
        return asyncio.run(daemon.run(s))
    except RoutesError as exc:
        return _report(exc, "; not starting")
    except ResolverError as exc:  # --resolver-listen taken: nothing was started
        print(f"error: {exc.strerror}; not starting", file=sys.stderr)
        return 1


def cmd_check(args: argparse.Namespace) -> int:
    s = settings.from_sources(args)
    table = _routes_or_exit(s)
    if isinstance(table, int):
        return table
    hosts = {h for r in table.routes for h in r.hosts}
    tcp = f", {len(table.tcp)} tcp routes" if table.tcp else ""
    print(f"{s.routes}: ok, {len(table.routes)} routes{tcp}, {len(hosts)} host names, "
          f"{len(table.targets)} targets" + (f" (zone {s.zone})" if s.zone else ""))
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from agent.gateway.persist import read_snapshot
    from agent.gateway.pipeline import render_once
    from agent.gateway.plan.filters import RenderError

    s = settings.from_sources(args)
    table = _routes_or_exit(s)
    if isinstance(table, int):
        return table
    snapshot: dict[str, Endpoints] = {}
    if args.endpoints:
        try:
            snapshot = read_snapshot(Path(args.endpoints), table)
        except (OSError, ValueError) as exc:
            print(f"{args.endpoints}: {exc}", file=sys.stderr)
            return 1
    try:
        rendered = render_once(s, table, snapshot)
        sys.stdout.write(rendered.text)
        if rendered.stream:  # the second file: nginx.conf includes it in `stream {}`
            sys.stdout.write("\n# ---- the stream context (conf.d/stream.conf) ----\n")
            sys.stdout.write(rendered.stream)
    except RenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="run nginx and keep its configuration in step with DNS")
    settings.add_arguments(run)
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate a routes file; exit 0 or 1 with every error")
    # (the ports: tcp routes must keep off the gateway's own)
    settings.add_arguments(check, only=("routes", "zone", "listen", "https_listen",
                                        "admin_listen", "status_listen", "resolver_listen"))
    check.set_defaults(func=cmd_check)

    render = sub.add_parser("render", help="print the configuration for a snapshot of endpoints")
    settings.add_arguments(render, only=(
        "routes", "routes_url", "zone", "listen", "status_listen", "admin_listen",
        "trusted_proxies", "template", "nameserver", "upstream_mode", "https_listen",
        "https_redirect_port", "http3", "certs_dir", "route_files_dir", "tls_ca_bundle",
        "access_log_metrics", "nginx_prefix", "nginx_conf_dir", "resolver_listen", "state_dir",
        "admin_token_file", "controller_token_file", "access_log", "otlp_endpoint",
        "trace_sample_ratio"))
    render.add_argument("--endpoints", metavar="FILE.json",
                        help='{"service": ["10.0.1.3", ...]} (default: no endpoints)')
    render.set_defaults(func=cmd_render)
