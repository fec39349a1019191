"""`gateway-agent`: run (the container's entrypoint), controller, check, render, keepalived."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from agent import __version__, logs, settings
from agent.routes import RoutesError, RouteTable


def _report(exc: RoutesError, suffix: str = "") -> int:
    """Every problem of a routes file, one per line; exit status 1."""
    print(f"{exc.source}: {len(exc.errors)} error(s){suffix}", file=sys.stderr)
    for err in exc.errors:
        print(f"  {err}", file=sys.stderr)
    return 1


def _routes_or_exit(s: settings.Settings) -> RouteTable | int:
    """The routes of --routes (for --zone), or the exit status after saying what is wrong."""
    from agent.tcp import load_for_gateway

    if s.routes is None:
        print("error: --routes FILE (or GATEWAY_ROUTES) is required", file=sys.stderr)
        return 2
    try:
        return load_for_gateway(s.routes, s).for_zone(s.zone)
    except RoutesError as exc:
        return _report(exc)


def cmd_run(args: argparse.Namespace) -> int:
    from agent import daemon

    s = settings.from_sources(args)
    logs.setup(s.log_format, s.log_level)
    if s.routes is None and s.routes_url is None:
        print("error: --routes FILE or --routes-url URL (or GATEWAY_ROUTES, GATEWAY_ROUTES_URL) "
              "is required", file=sys.stderr)
        return 2
    try:
        return asyncio.run(daemon.run(s))
    except RoutesError as exc:
        return _report(exc, "; not starting")


def cmd_controller(args: argparse.Namespace) -> int:
    from agent import controller

    s = settings.from_sources(args)
    logs.setup(s.log_format, s.log_level)
    return asyncio.run(controller.run(s))


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
    from agent.daemon import make_renderer
    from agent.discovery import Endpoints, sort_addresses
    from agent.render import RenderError

    s = settings.from_sources(args)
    table = _routes_or_exit(s)
    if isinstance(table, int):
        return table
    snapshot: dict[str, Endpoints] = {}
    if args.endpoints:
        try:
            doc = json.loads(Path(args.endpoints).read_text(encoding="utf-8"))
            if not isinstance(doc, dict):
                raise ValueError("expected an object {\"service\": [\"10.0.1.3\", ...]}")
            by_name = {t.name: t for t in table.targets}
            for name, addresses in doc.items():
                if not isinstance(addresses, list):
                    raise ValueError(f"{name}: expected a list of addresses")
                target = by_name.get(name)
                lookup = target.lookup_name if target else name
                ok = sort_addresses(addresses)
                snapshot[lookup] = Endpoints(ok, "ok" if ok else "none")
        except (OSError, ValueError) as exc:
            print(f"{args.endpoints}: {exc}", file=sys.stderr)
            return 1
    renderer = make_renderer(s)
    try:
        rendered = renderer.render(table, snapshot)
        sys.stdout.write(rendered.text)
        if rendered.stream:  # the second file: nginx.conf includes it in `stream {}`
            sys.stdout.write("\n# ---- the stream context (conf.d/stream.conf) ----\n")
            sys.stdout.write(rendered.stream)
    except RenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


# settings only `gateway-agent controller` reads; `run --help` does not list them
CONTROLLER_ONLY = ("controller_listen", "docker_url", "label_prefix", "resync_interval",
                   "new_service_wait", "zone_token_files", "acme_directory", "acme_email",
                   "acme_ca_bundle", "acme_state_dir", "acme_renew_before", "acme_retry_min")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway-agent", description=__doc__)
    p.add_argument("--version", action="version", version=f"gateway-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run nginx and keep its configuration in step with DNS")
    settings.add_arguments(run, only=[dest for dest in settings.DESTINATIONS
                                      if dest not in CONTROLLER_ONLY])
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate a routes file; exit 0 or 1 with every error")
    # (the ports: tcp routes must keep off the gateway's own)
    settings.add_arguments(check, only=("routes", "zone", "listen", "https_listen",
                                        "admin_listen", "status_listen"))
    check.set_defaults(func=cmd_check)

    render = sub.add_parser("render", help="print the configuration for a snapshot of endpoints")
    settings.add_arguments(render, only=("routes", "zone", "listen", "status_listen",
                                         "admin_listen",
                                         "trusted_proxies", "template", "nameserver",
                                         "upstream_mode", "https_listen",
                                         "https_redirect_port"))
    render.add_argument("--endpoints", metavar="FILE.json",
                        help='{"service": ["10.0.1.3", ...]} (default: no endpoints)')
    render.set_defaults(func=cmd_render)

    controller = sub.add_parser("controller", help="serve routes from swarm service labels to "
                                "the gateways (one replica, on a manager; docs/labels.md)")
    settings.add_arguments(controller, only=(*CONTROLLER_ONLY, "controller_token_file",
                                             "routes", "log_format", "log_level"))
    controller.set_defaults(func=cmd_controller)

    from agent.keepalived.cli import register

    register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except settings.SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
