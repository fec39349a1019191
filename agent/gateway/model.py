"""The gateway's values: what discovery found, the certificates and files to serve, what was
rendered. Plain frozen data, no I/O library (tests/unit/test_layout.py): the plan (plan/) is
made from these, the drivers (drivers/) fill them in, the status view (observe/) shows them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent.core.routes import FileKind

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

Kind = FileKind  # agent/core/routes.py: what RouteTable.named_files finds


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


# -- what a cycle did (reconciler.py; put into words by observe/state.py only) ----------------

OutcomeKind = Literal[
    "started",  # nginx started with the first configuration
    "no_change",  # the configuration serving is the one wanted, and so are the tasks
    "followed",  # tasks changed, and nginx follows them without a reload (upstream `resolve`)
    "pending",  # a change waits for --reload-min-interval (coalescing)
    "retry_pending",  # this configuration was refused; it is tried again after a backoff
    "reloaded",
    "refused",  # nginx (or a step of applying) refused the configuration; the old one serves
    "failed",  # the cycle itself failed
]
NoteKind = Literal["routes_file", "tcp_port", "certificate", "password_file", "error_page",
                   "ca_file"]


@dataclass(frozen=True)
class Change:
    """What differs between what nginx serves and what it is given now."""

    endpoints: tuple[tuple[str, int, int], ...] = ()  # (lookup name, added, removed), sorted
    routes: tuple[int, int] | None = None  # the number of routes before and after
    tcp: tuple[int, int] | None = None


@dataclass(frozen=True)
class Note:
    """Something refused alone while the rest serves: its kind and what was refused."""

    kind: NoteKind
    items: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    change: Change | None = None
    notes: tuple[Note, ...] = ()
    error: str = ""  # refused, failed: what went wrong
    wait: float = 0.0  # pending, retry_pending: seconds until the next try
    saved: tuple[str, ...] = ()  # started: the names served from endpoints saved by a last run

    @property
    def quiet(self) -> bool:
        """A cycle that only waited: nothing was applied nor followed."""
        return self.kind in ("no_change", "pending", "retry_pending")
