"""tcp routes against the gateway's own ports (--listen, --https-listen, the admin and status
ports), which are settings, not the routes file's; and the tcp routes as /status shows them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from agent.core.routes import RoutesError, RouteTable, load_routes
from agent.core.tcp import TcpRoute
from agent.gateway.settings import GatewaySettings as Settings


def reserved_ports(settings: Settings) -> dict[int, str]:
    """The gateway's own TCP ports, which no tcp route may take."""
    https = ("the gateway's HTTPS port (--https-listen); TLS passthrough on the port where the "
             "gateway terminates TLS is not supported: give the tcp routes a port of their own "
             "(docs/configuration.md, TCP routes)")
    return {  # the later ones win when two settings name one port (nginx would refuse)
        settings.admin_listen.port: "the agent's admin port (--admin-listen)",
        settings.status_listen.port: "nginx's status port for the agent (--status-listen)",
        settings.https_listen.port: https,
        settings.listen.port: "the gateway's HTTP port (--listen)",
    }


def port_conflicts(table: RouteTable, reserved: Mapping[int, str],
                   zone: str | None = None) -> list[str]:
    """tcp routes (of `zone`, those a gateway of that zone serves) on a port the gateway holds
    itself; each error names the route's place in the file."""
    return [f"tcp[{i}].listen: port {route.listen} is {reserved[route.listen]}"
            for i, route in enumerate(table.tcp)
            if route.listen in reserved and (zone is None or route.zone == zone)]


def off_reserved(routes: Iterable[TcpRoute], reserved: Mapping[int, str],
                 ) -> tuple[tuple[TcpRoute, ...], list[str]]:
    """The controller's tcp routes that keep off the gateway's own ports, and an error naming
    each other one: it is left out alone (the controller does not know this gateway's ports)."""
    kept, errors = [], []
    for route in routes:
        if route.listen in reserved:
            errors.append(f"routes file (from the controller) tcp {route.label}: not served "
                          f"here: port {route.listen} is {reserved[route.listen]}")
        else:
            kept.append(route)
    return tuple(kept), errors


def load_for_gateway(path: Path, settings: Settings) -> RouteTable:
    """load_routes(), and the tcp routes this gateway serves kept off its own ports: a
    RoutesError with every problem, as for any other error of the file."""
    table = load_routes(path)
    errors = port_conflicts(table, reserved_ports(settings), settings.zone)
    if errors:
        raise RoutesError(str(path), errors)
    return table


def table_rows(table: RouteTable) -> list[dict[str, Any]]:
    """The tcp routes as /status shows them."""
    return [{**r.model_dump(mode="json", exclude_none=True), "label": r.label}
            for r in table.tcp]

