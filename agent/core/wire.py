"""The routes document, as the controller serves it and the gateways (and their saved copies)
read it: `{"version": V, "routes": [{"source": S, "route": {...}}], "tcp": [{...}],
"errors": [...], "certificates": [{"host": H, "chain": PEM, "key": PEM}]}`.

`routes` holds the routes file's routes (source `routes file`, first) and the labelled
services' (`service NAME`); `tcp` the routes file's tcp routes (core/tcp.py): a gateway without
a routes file of its own serves the controller's (gateway/source.py).

Both programs trust this module and nothing of each other: the controller writes items with
route_item(), a gateway reads a document with parse_document(), which validates every route
again with the routes model, so a controller cannot make a gateway render anything the routes
file could not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from agent.core.errors import place
from agent.core.fields import HOST_RE
from agent.core.merge import FILE_SOURCE
from agent.core.routes import Route, RouteError, parse_route
from agent.core.tcp import TcpRoute, parse_tcp_item, refusals

SOURCE_RE = re.compile(r"[ -~]{1,200}")  # printable ASCII: shown in logs and /status only
_ERROR_MAX = 500
# the document a gateway takes from the controller (10,000 routes and a thousand certificates
# are about 10 MiB): a reader stops there and refuses it
MAX_DOCUMENT = 32 * 1024 * 1024
_PEM_MAX = 64 * 1024  # a chain of a few certificates is a few KiB


@dataclass(frozen=True)
class Certificate:
    """A certificate the controller's ACME client obtained, as PEM text: the controller keeps
    it with its dates (controller/acme.py: Issued); a gateway checks it like any certificate
    (gateway/tls.py) once written where it reads `tls: acme` certificates."""

    host: str
    chain: str  # PEM: the certificate, then its issuers
    key: str = field(repr=False)  # PEM (PKCS#8)

    def item(self) -> dict[str, str]:
        """As the routes document carries it."""
        return {"host": self.host, "chain": self.chain, "key": self.key}


@dataclass(frozen=True)
class Received:
    """A controller's answer, checked: its routes (source, route), the errors to show, and the
    ACME certificates for the hosts of its routes."""

    version: str
    routes: tuple[tuple[str, Route], ...]
    errors: tuple[str, ...]
    certificates: tuple[Certificate, ...] = ()
    tcp: tuple[TcpRoute, ...] = ()  # the routes file's tcp routes


def _text(value: object, limit: int) -> str | None:
    if not isinstance(value, str):
        return None
    shown = value.encode("ascii", "backslashreplace").decode()
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def parse_document(doc: Any) -> Received:
    """Check the controller's JSON: a bad document is refused whole (ValueError); a bad route
    in it is refused alone, as the routes file would refuse it."""
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object")
    version, items, reported = doc.get("version"), doc.get("routes"), doc.get("errors", [])
    if not isinstance(version, str) or not SOURCE_RE.fullmatch(version):
        raise ValueError("'version' is missing or not a short string")
    if not isinstance(items, list) or not isinstance(reported, list):
        raise ValueError("'routes' and 'errors' must be lists")
    routes: list[tuple[str, Route]] = []
    errors = [e for e in (_text(r, _ERROR_MAX) for r in reported) if e is not None]
    for i, item in enumerate(items):
        source = item.get("source") if isinstance(item, dict) else None
        if not isinstance(source, str) or not SOURCE_RE.fullmatch(source):
            source = f"controller routes[{i}]"
        shown = f"{source} (controller routes[{i}])" if source == FILE_SOURCE else source
        route = item.get("route") if isinstance(item, dict) else None
        try:
            parsed = parse_route(route)
        except RouteError as exc:
            errors.append(f"{shown}: refused by the gateway: " + "; ".join(
                f"{place(('route', *loc))}: {msg}" for loc, msg in exc.problems))
            continue
        routes.append((source, parsed))
    tcp = _tcp(doc.get("tcp", []), errors)  # adds to `errors`
    certificates = _certificates(doc.get("certificates", []), errors)  # adds to `errors`
    return Received(version, tuple(routes), tuple(errors), certificates, tcp)


def _tcp(items: Any, errors: list[str]) -> tuple[TcpRoute, ...]:
    """The routes file's tcp routes, each validated by the model of the file; a bad one is
    refused alone, and so is one that conflicts with an earlier one (core/tcp.py: refusals)."""
    if not isinstance(items, list):
        raise ValueError("'tcp' must be a list")
    good: list[tuple[int, TcpRoute]] = []
    for i, item in enumerate(items):
        try:
            good.append((i, parse_tcp_item(item)))
        except RouteError as exc:
            errors.append(f"controller tcp[{i}]: refused by the gateway: " + "; ".join(
                f"{place(loc)}: {msg}" for loc, msg in exc.problems))
    refused = refusals([r for _, r in good], [i for i, _ in good])
    for _, error in refused:
        errors.append(f"controller tcp: refused by the gateway: {error}")
    dropped = {k for k, _ in refused}
    return tuple(r for k, (_, r) in enumerate(good) if k not in dropped)


def valid_until(cert: Certificate) -> float:
    """The notAfter of the certificate's first block (0 when it does not parse)."""
    try:
        return x509.load_pem_x509_certificate(cert.chain.encode()).not_valid_after_utc.timestamp()
    except ValueError:
        return 0.0


def _certificates(items: Any, errors: list[str]) -> tuple[Certificate, ...]:
    """`[{"host": H, "chain": PEM, "key": PEM}]`; an item that is not that is refused alone.
    The host becomes a file name: a host name, or a wildcard (`*.shop.example.com.crt`: the
    `*` is a plain character there, which nothing expands), never a path."""
    if not isinstance(items, list):
        raise ValueError("'certificates' must be a list")
    out: dict[str, Certificate] = {}
    for i, item in enumerate(items):
        host = item.get("host") if isinstance(item, dict) else None
        chain = item.get("chain") if isinstance(item, dict) else None
        key = item.get("key") if isinstance(item, dict) else None
        if not isinstance(host, str) or not HOST_RE.fullmatch(host) or len(host) > 253 \
                or host in out:
            errors.append(f"controller certificates[{i}]: refused by the gateway: the host is "
                          "not a host name, or comes twice")
        elif not all(isinstance(v, str) and v.isascii() and len(v) <= _PEM_MAX and
                     "-----BEGIN " in v for v in (chain, key)):
            errors.append(f"controller certificates[{i}] ({host}): refused by the gateway: "
                          "'chain' and 'key' must be PEM text")
        else:
            assert isinstance(chain, str)
            assert isinstance(key, str)
            out[host] = Certificate(host, chain, key)
    return tuple(out[h] for h in sorted(out))


def route_item(source: str, route: Route) -> dict[str, Any]:
    """One route as the controller serves it and the gateway saves it."""
    return {"source": source, "route": route.model_dump(mode="json", exclude_none=True)}


def tcp_item(route: TcpRoute) -> dict[str, Any]:
    """One tcp route as the controller serves it and the gateway saves it."""
    return route.model_dump(mode="json", exclude_none=True)
