"""TLS at the edge beyond the server certificate, as the http context writes it (docs/tls.md):
client certificates a route's hosts ask for (`tls.client_ca`) and TLS to its tasks
(`upstream_tls`). No I/O: the CA files are the checked copies of drivers/routefiles.py.

A client certificate is asked for in the handshake (`ssl_verify_client optional` on the HTTPS
server of the hosts) and required, when the route says so, by each location: a request without a
verified certificate gets 403, also over plain HTTP, where there is never one. A CA file that was
never good locks the route (503): a route that asks for a certificate is never open."""

from __future__ import annotations

from dataclasses import dataclass

from agent.core.routes import Route
from agent.gateway.model import FilesPlan
from agent.gateway.plan.naming import digest


@dataclass(frozen=True)
class ClientCerts:
    """What a location does with client certificates."""

    mode: str  # required | optional
    ca: str | None  # the checked CA file nginx reads; None: never good (the route answers 503)


@dataclass(frozen=True)
class UpstreamTlsPlan:
    """HTTPS to the tasks: verified against `ca` for `server_name`, or not verified."""

    verify: bool
    ca: str | None  # None with verify: the CA file was never good (the route answers 503)
    server_name: str


def _copy(files: FilesPlan | None, name: str) -> str | None:
    path = files.path(name, "ca") if files is not None else None
    return str(path) if path is not None else None


def client_certs(route: Route, files: FilesPlan | None) -> ClientCerts | None:
    if route.tls is None or route.tls.client_ca is None or route.tls.client_mode is None:
        return None
    return ClientCerts(route.tls.client_mode, _copy(files, route.tls.client_ca))


def upstream_tls(route: Route, files: FilesPlan | None) -> UpstreamTlsPlan | None:
    u = route.upstream_tls
    if u is None or not route.proxies:
        return None
    return UpstreamTlsPlan(u.verify, _copy(files, u.ca) if u.ca is not None else None,
                           u.server_name or route.target.name)


def tls_pool(route: Route, choice: str) -> str:
    """How the route's upstream chooses a task (`choice`), told apart by its TLS to the tasks:
    nginx keeps connections to the tasks per upstream, and a connection verified for one
    server_name (or not verified) must never serve a route that asks for another."""
    u = route.upstream_tls
    if u is None:
        return choice
    name = digest(repr((u.verify, u.ca, u.server_name)), 6)
    return ("" if choice == "round_robin" else choice + "_") + f"tls_{name}"


def ca_locked(client: ClientCerts | None, tls: UpstreamTlsPlan | None) -> bool:
    """A CA file the location needs was never good: it answers 503 rather than go unchecked."""
    return (client is not None and client.ca is None) or \
        (tls is not None and tls.verify and tls.ca is None)
