"""The one set of fakes the gateway's unit tests drive the reconciler with, each typed against
the protocol it stands in for (agent/gateway/protocols.py: mypy checks that they fit). A fake
only where the real thing cannot show the fault or needs a process: the real planner renders."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from agent.core.routes import RouteTable
from agent.gateway.drivers.nginx import ApplyError
from agent.gateway.model import Endpoints, Snapshot
from agent.gateway.observe.metrics import StubStatus
from agent.gateway.protocols import Discoverer, NginxDriver, RoutesSource


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeNginx:
    """Records each apply (at which time, which generation) and refuses the configurations
    `refuse` says no to, as nginx -t would; what it serves changes only on a good apply."""

    def __init__(self, clock: Callable[[], float] = lambda: 0.0,
                 refuse: Callable[[str], bool] = lambda text: False) -> None:
        self.clock = clock
        self.refuse = refuse
        self.generation: str | None = None
        self.text: str | None = None
        self.running = True
        self.attempts: list[tuple[float, str]] = []
        self.stub_status_asked = 0

    async def apply(self, text: str, generation: str, stream: str = "") -> None:
        self.attempts.append((self.clock(), generation))
        if self.refuse(text):
            raise ApplyError("validate", "nginx -t said: invalid upstream")
        self.generation, self.text = generation, text

    async def start(self) -> None:
        pass

    async def wait_serving(self, generation: str, within: float = 10.0) -> None:
        assert generation == self.generation

    async def stub_status(self) -> StubStatus | None:
        self.stub_status_asked += 1
        return None


class FakeDiscovery:
    """Answers each name with the addresses in `tasks` (default: one task, 10.0.0.2), and
    records which names each round asked."""

    def __init__(self) -> None:
        self.tasks: dict[str, tuple[str, ...]] = {}
        self.rounds: list[list[str]] = []

    async def resolve(self, names: Iterable[str], previous: Snapshot,
                      screened: Collection[str] = ()) -> dict[str, Endpoints]:
        asked = sorted(names)
        self.rounds.append(asked)
        return {n: Endpoints(self.tasks.get(n, ("10.0.0.2",)), "ok", since=len(self.rounds))
                for n in asked}


class FakeRoutes:
    """Routes as a test sets them (`table`), as if the routes file said so."""

    def __init__(self, table: RouteTable, url: str | None = None) -> None:
        self.table = table
        self.error: str | None = None
        self.pending: str | None = None
        self.stamp: object | None = None  # changed(): the routes file changed, and how
        self._url = url

    @property
    def url(self) -> str | None:
        return self._url

    def load_initial(self) -> None:
        pass

    def changed(self) -> object | None:
        return self.stamp  # a test sets what the file's stamp looks like

    def refresh(self) -> None:
        pass


def _fits(nginx: FakeNginx, discovery: FakeDiscovery, routes: FakeRoutes,
          ) -> tuple[NginxDriver, Discoverer, RoutesSource]:
    return nginx, discovery, routes  # mypy: the fakes fit the protocols
