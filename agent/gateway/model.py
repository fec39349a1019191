"""The gateway's values: what discovery found, the certificates and files to serve, what was
rendered. Plain frozen data, no I/O library (tests/unit/test_layout.py): the plan (plan/) is
made from these, the drivers (drivers/) fill them in, the status view (observe/) shows them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

# -- discovery (drivers/discovery.py) --------------------------------------------------------

EndpointState = Literal["ok", "none", "unknown"]

@dataclass(frozen=True)
class Endpoints:
    """What is known of one lookup name."""

    addresses: tuple[str, ...] = ()
    # ok: addresses are the running tasks; none: no running task; unknown: never answered yet.
    state: EndpointState = "unknown"
    stale: bool = False  # the last lookup failed; addresses are the last known ones
    error: str | None = None
    since: float = field(default=0.0, compare=False)  # when these addresses were first seen
    refused: tuple[str, ...] = ()  # answered, but not addresses of the swarm's networks


Snapshot = Mapping[str, Endpoints]


# -- certificates (drivers/tls.py) -----------------------------------------------------------


@dataclass(frozen=True, order=True)
class CertFiles:
    """A certificate and its key: two file names in --certs-dir, or, for `tls: acme`, in the
    directory where the gateway keeps what the controller's ACME client sent it."""

    certificate: str
    key: str
    acme: bool = False


@dataclass(frozen=True)
class Served:
    """A certificate that passed validation, as nginx reads it (paths of the agent's copies)."""

    digest: str
    name: str  # the certificate file's name, for humans
    chain: Path
    key: Path
    names: tuple[str, ...]  # its subjectAltName DNS names
    not_after: float  # Unix time
    stapling: bool  # the leaf names an OCSP responder and its issuer is known
    trusted: Path | None  # issuers up to the root, to verify OCSP answers (None: no verify)


@dataclass(frozen=True)
class HostTls:
    """What HTTPS does for one host name."""

    host: str
    source: CertFiles
    redirect: bool
    hsts: int
    served: Served | None  # None: no certificate to serve (the handshake is refused)
    error: str | None  # the problem with the files as they are now; None: they are in use


@dataclass(frozen=True)
class TlsPlan:
    """Every host of a route with `tls`, sorted: an input of rendering (so it is hashable)."""

    hosts: tuple[HostTls, ...]

    @property
    def stapling(self) -> bool:
        return any(h.served is not None and h.served.stapling for h in self.hosts)

    @property
    def errors(self) -> tuple[HostTls, ...]:
        return tuple(h for h in self.hosts if h.error is not None)


# -- the files routes name (drivers/routefiles.py) -------------------------------------------

Kind = Literal["htpasswd", "page"]


@dataclass(frozen=True)
class RouteFile:
    name: str  # the file in --route-files-dir
    path: Path | None  # the checked copy nginx reads (the last good one); None: never good
    error: str | None  # why the current file is refused, naming the routes that name it
    kind: Kind = "htpasswd"


@dataclass(frozen=True)
class FilesPlan:
    files: tuple[RouteFile, ...]

    def path(self, name: str, kind: Kind = "htpasswd") -> Path | None:
        return next((f.path for f in self.files if f.name == name and f.kind == kind), None)

    @property
    def errors(self) -> tuple[RouteFile, ...]:
        return tuple(f for f in self.files if f.error is not None)


# -- what the plan made (plan/desired.py) ----------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    text: str
    generation: str  # a digest of the configuration, served by nginx to prove it is live
    # the names nginx looks up itself (upstreams `resolve`, both contexts)
    resolving: frozenset[str] = frozenset()
    stream: str = ""  # the stream context (tcp routes: gateway/stream.py); '' when there is none
