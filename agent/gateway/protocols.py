"""What the reconciler needs of its drivers, as typed protocols: the real ones (drivers/) and
the tests' fakes (tests/unit/gateway/fakes.py) both fit them, and mypy checks that they do."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Protocol

from agent.core.routes import RouteTable
from agent.gateway.model import Endpoints, FilesPlan, Snapshot, TlsPlan
from agent.gateway.observe.metrics import StubStatus


class NginxDriver(Protocol):
    """Applies a configuration (validate, replace, reload, verify, roll back: drivers/nginx.py)."""

    @property
    def generation(self) -> str | None: ...  # what nginx serves now, as verified

    @property
    def running(self) -> bool: ...

    async def apply(self, text: str, generation: str, stream: str = "") -> None: ...

    async def start(self) -> None: ...

    async def wait_serving(self, generation: str, within: float = 10.0) -> None: ...

    async def stub_status(self) -> StubStatus | None: ...


class Discoverer(Protocol):
    """Looks names up (drivers/discovery.py): one round, every name given."""

    async def resolve(self, names: Iterable[str], previous: Snapshot,
                      screened: Collection[str] = ()) -> Mapping[str, Endpoints]: ...


class RoutesSource(Protocol):
    """The routes to serve (drivers/routes.py: the file, merged with the controller's)."""

    table: RouteTable
    error: str | None  # why the routes file's last version was refused
    pending: str | None  # why the gateway has no routes yet

    @property
    def url(self) -> str | None: ...  # the controller's, where ACME challenges go

    def load_initial(self) -> None: ...

    def refresh(self) -> None: ...

    # the routes file's stamp when it changed since it was read, else None (a stat, no read)
    def changed(self) -> object | None: ...


class CertificateStore(Protocol):
    """drivers/tls.py: the certificates to serve, and the copies nginx no longer needs."""

    def plan(self, table: RouteTable) -> TlsPlan | None: ...

    def applied(self, plan: TlsPlan | None) -> None: ...


class FileStore(Protocol):
    """drivers/routefiles.py: the files routes name."""

    def plan(self, table: RouteTable) -> FilesPlan | None: ...

    def applied(self, plan: FilesPlan | None) -> None: ...


class LookupServer(Protocol):
    """drivers/dnsserver.py: answers nginx's own lookups."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...
