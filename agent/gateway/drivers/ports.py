"""tcp routes against the gateway's own ports (--listen, --https-listen, the admin, status and
resolver ports), which are settings, not the routes file's; against ports another program holds
(a trial bind before nginx is asked to listen); and the tcp routes as /status shows them."""

from __future__ import annotations

import os
import socket
from collections.abc import Collection, Iterable, Mapping
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
        settings.resolver_listen.port: "the agent's DNS port for nginx (--resolver-listen)",
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


def load_for_gateway(path: Path, settings: Settings,
                     previous: RouteTable | None = None) -> RouteTable:
    """load_routes() (`previous`: the table last read from the file), and the tcp routes this
    gateway serves kept off its own ports: a RoutesError with every problem, as for any other
    error of the file."""
    table = load_routes(path, previous)
    errors = port_conflicts(table, reserved_ports(settings), settings.zone)
    if errors:
        raise RoutesError(str(path), errors)
    return table


def bind_error(address: str, port: int) -> str | None:
    """Why nginx could not listen on address:port now, in nginx's own words (`bind() to
    0.0.0.0:5432 failed (98: Address already in use)`), or None when it could.

    A trial bind as nginx's master makes it (SO_REUSEADDR; IPv6 only for an IPv6 address),
    closed at once without listening: nginx -t does not bind, and a reload whose port is
    taken keeps the old configuration, saying why only in nginx's error log."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    shown = f"[{address}]:{port}" if family == socket.AF_INET6 else f"{address}:{port}"
    with socket.socket(family, socket.SOCK_STREAM) as trial:
        trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            trial.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            trial.bind((address, port))
        except OSError as exc:
            code = exc.errno or 0
            return f"bind() to {shown} failed ({code}: {os.strerror(code)})"
    return None


def unbindable(table: RouteTable, address: str, held: Collection[int]) -> dict[int, str]:
    """The ports of `table`'s tcp routes that nginx could not listen on (port: why), leaving
    out `held`, those nginx listens on now (a trial bind there would fail on nginx itself)."""
    ports = sorted({r.listen for r in table.tcp} - set(held))
    return {port: why for port in ports if (why := bind_error(address, port)) is not None}


def without_ports(table: RouteTable, refused: Collection[int]) -> RouteTable:
    """`table` without the tcp routes on `refused` ports: the rest is applied without them."""
    if not refused:
        return table
    return RouteTable(table.routes, tuple(r for r in table.tcp if r.listen not in refused))


def table_rows(table: RouteTable, refused: Mapping[int, str] | None = None,
               ) -> list[dict[str, Any]]:
    """The tcp routes as /status shows them; a route on a port nginx cannot listen on says
    why (`refused`)."""
    refused = refused or {}
    return [{**r.model_dump(mode="json", exclude_none=True), "label": r.label,
             **({"refused": refused[r.listen]} if r.listen in refused else {})}
            for r in table.tcp]

