"""The reconciler's discovery budget, driven with a fake discovery (the real one is tested
against dnsmasq in tests/integration/test_discovery.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from agent.discovery import Endpoints, Snapshot
from agent.metrics import Metrics
from agent.reconciler import Reconciler, State
from agent.routes import parse_routes
from agent.settings import Settings


class FakeDiscovery:
    """Answers every name with one address and records which names each round asked."""

    def __init__(self) -> None:
        self.rounds: list[list[str]] = []

    async def resolve(self, names: Iterable[str], previous: Snapshot,
                      screened: Iterable[str] = ()) -> dict[str, Endpoints]:
        asked = sorted(names)
        self.rounds.append(asked)
        return {n: Endpoints(("10.0.0.2",), "ok", since=len(self.rounds)) for n in asked}


def reconciler(services: int, per_second: float) -> tuple[Reconciler, FakeDiscovery]:
    table = parse_routes({"routes": [{"hosts": [f"s{i}.example"], "service": f"s{i}",
                                      "port": 80} for i in range(services)]}, "test")
    state = State(routes=table)
    discovery = FakeDiscovery()
    settings = Settings(poll_interval=1.0, dns_lookups_per_second=per_second)
    r = Reconciler(settings, cast(Any, None), cast(Any, discovery), cast(Any, None), Metrics(),
                   state)
    return r, discovery


async def test_targets_within_the_budget_are_all_looked_up_every_cycle() -> None:
    r, discovery = reconciler(50, per_second=200)
    for _ in range(3):
        await r.discover()
    assert [len(names) for names in discovery.rounds] == [50, 50, 50]


async def test_more_targets_than_the_budget_are_looked_up_in_turn_and_all_kept() -> None:
    r, discovery = reconciler(1000, per_second=200)
    await r.discover()  # the first round asks every name: none is known yet
    assert len(discovery.rounds[0]) == 1000
    for _ in range(5):
        await r.discover()
    later = discovery.rounds[1:]
    assert all(len(names) == 200 for names in later)
    # five cycles of 200 cover every name exactly once
    assert sorted(n for names in later for n in names) == sorted(discovery.rounds[0])
    # names not asked this cycle keep what was known of them
    assert len(r.state.snapshot) == 1000
    assert all(e.addresses == ("10.0.0.2",) for e in r.state.snapshot.values())


async def test_a_new_target_is_looked_up_at_once_whatever_the_budget() -> None:
    r, discovery = reconciler(1000, per_second=200)
    await r.discover()
    r.state.routes = parse_routes({"routes": [
        *({"hosts": [f"s{i}.example"], "service": f"s{i}", "port": 80} for i in range(1000)),
        {"hosts": ["new.example"], "service": "new", "port": 80}]}, "test")
    await r.discover()
    assert "tasks.new" in discovery.rounds[-1]
    assert len(discovery.rounds[-1]) == 200
    assert r.state.snapshot["tasks.new"].addresses == ("10.0.0.2",)
