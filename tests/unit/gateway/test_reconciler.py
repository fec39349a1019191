"""The reconciler driven with fakes and a fake clock: the discovery budget, and cycles (apply
only on a change, refusals and their backoff, coalescing, resolve against static mode) with the
real renderer. The real discovery is tested against dnsmasq in tests/integration/test_discovery.py
and the real nginx in tests/integration."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

import pytest

from agent.core.routes import parse_routes
from agent.gateway.drivers.routes import RoutesInput
from agent.gateway.model import Endpoints, Outcome, Snapshot
from agent.gateway.observe.metrics import Metrics
from agent.gateway.observe.state import State, words
from agent.gateway.pipeline import planner_for
from agent.gateway.reconciler import Reconciler
from agent.gateway.settings import GatewaySettings as Settings
from tests.unit.gateway.fakes import Clock, FakeDiscovery, FakeNginx, FakeRoutes


def reconciler(services: int, per_second: float, clock: Clock | None = None,
               interval: float = 1.0) -> tuple[Reconciler, FakeDiscovery]:
    table = parse_routes({"routes": [{"hosts": [f"s{i}.example"], "service": f"s{i}",
                                      "port": 80} for i in range(services)]}, "test")
    discovery = FakeDiscovery()
    settings = Settings(poll_interval=interval, dns_lookups_per_second=per_second)
    r = Reconciler(settings, FakeNginx(), discovery, planner_for(settings), Metrics(), State(),
                   routes=FakeRoutes(table), clock=clock or Clock())
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
    r.routes.table = parse_routes({"routes": [
        *({"hosts": [f"s{i}.example"], "service": f"s{i}", "port": 80} for i in range(1000)),
        {"hosts": ["new.example"], "service": "new", "port": 80}]}, "test")
    await r.discover()
    assert "tasks.new" in discovery.rounds[-1]
    assert len(discovery.rounds[-1]) == 200
    assert r.state.snapshot["tasks.new"].addresses == ("10.0.0.2",)


async def test_names_nginx_asks_for_are_looked_up_then_in_one_round() -> None:
    """With twice the names within the budget, nginx's question for a name whose last lookup
    is not fresh starts a lookup (drivers/dnsserver.py waits for it): the names asked for
    together go in one round, and what it found is what the agent knows (and answers)."""
    clock = Clock()
    r, discovery = reconciler(50, per_second=200, clock=clock)
    await r.discover()
    assert r.look_again("tasks.s1") is None  # looked up by this very round: fresh
    clock.now += 0.5
    discovery.tasks["tasks.s1"] = ("10.0.0.7", "10.0.0.8")
    first = r.look_again("tasks.s1")
    assert first is not None
    assert r.look_again("tasks.s2") is first
    assert r.look_again("tasks.unknown") is None  # not a name discovery knows
    await first
    assert discovery.rounds[-1] == ["tasks.s1", "tasks.s2"]
    assert r.state.snapshot["tasks.s1"].addresses == ("10.0.0.7", "10.0.0.8")
    assert r.look_again("tasks.s1") is None  # fresh again
    # the poll's next round leaves out what nginx's questions looked up lately
    clock.now += 0.3
    await r.discover()
    assert len(discovery.rounds[-1]) == 48
    assert "tasks.s1" not in discovery.rounds[-1]


@pytest.mark.parametrize(("services", "per_second", "interval"), [
    (10, 200, 1.0), (100, 200, 1.0), (150, 200, 1.0), (300, 200, 1.0), (100, 20, 10.0)])
async def test_nginx_s_questions_and_the_poll_keep_to_the_budget(
        services: int, per_second: float, interval: float) -> None:
    """--dns-lookups-per-second holds over time: the poll's rounds spend it, and nginx's
    questions (each name once a second, as nginx asks) start lookups with what is left (a
    round's control query counted): 20 s of both, the lookups within 20 s of the budget and
    one second's worth. Where the budget has room, the questions start most lookups."""
    clock = Clock()
    r, discovery = reconciler(services, per_second=per_second, clock=clock, interval=interval)
    names = [f"tasks.s{i}" for i in range(services)]
    await r.discover()
    first = len(discovery.rounds)
    asked_at = {n: -1.0 for n in names}
    polled = 1
    for step in range(1, 201):  # 20 s in steps of 0.1 s
        clock.now = step / 10
        if clock.now >= polled * interval:
            polled += 1
            await r.discover()
        due = [n for n in names if clock.now - asked_at[n] >= 1.0]
        waits = [f for n in due if (f := r.look_again(n)) is not None]
        for n in due:
            asked_at[n] = clock.now
        for f in set(waits):
            await f
    lookups = sum(len(names) for names in discovery.rounds[first:])
    assert lookups <= per_second * 21, lookups
    if 2 * services <= per_second:
        assert lookups >= services * 18  # each name about once a second, by nginx's asking


async def test_an_early_cycle_s_new_names_are_paid_back_before_nginx_s_questions_look_up(
        ) -> None:
    """50 names, then 240: the early cycle looks the 190 new ones up whatever the budget, and
    nginx's questions start only the lookups the budget has left after them (10 of 200)."""
    clock = Clock()
    r, discovery = reconciler(50, per_second=200, clock=clock)
    await r.discover()
    clock.now += 0.5
    r.routes.table = parse_routes({"routes": [{"hosts": [f"s{i}.example"], "service": f"s{i}",
                                               "port": 80} for i in range(240)]}, "test")
    await r.discover(early=True)
    assert len(discovery.rounds[-1]) == 190
    waits = [f for i in range(50) if (f := r.look_again(f"tasks.s{i}")) is not None]
    assert len(waits) == 9  # and the round's control query
    await waits[0]


async def test_no_name_goes_unlooked_for_longer_than_an_interval_and_nginx_s_second() -> None:
    """nginx asks for each name once a second at its own moment; the budget (20 a second for
    100 names, a poll of 10 s) refuses most questions. Whatever the budget refused, a name is
    looked up again within an interval and a second: the poll's round leaves out only the
    names nginx's questions looked up within the last second or so."""
    clock = Clock()
    r, discovery = reconciler(100, per_second=20, clock=clock, interval=10.0)
    seen: dict[str, list[float]] = {}
    resolve = discovery.resolve

    async def timed(names: Iterable[str], previous: Snapshot,
                    screened: Collection[str] = ()) -> dict[str, Endpoints]:
        names = list(names)
        for n in names:
            seen.setdefault(n, []).append(clock.now)
        return await resolve(names, previous, screened)

    discovery.resolve = timed  # type: ignore[method-assign]
    await r.discover()
    polled = 1
    for step in range(1, 601):  # 60 s in steps of 0.1 s
        clock.now = step / 10
        if clock.now >= polled * 10.0:
            polled += 1
            await r.discover()
        phase = step % 10
        waits = {f for i in range(phase, 100, 10) if (f := r.look_again(f"tasks.s{i}"))}
        for f in waits:
            await f
    gaps = [b - a for times in seen.values() for a, b in itertools.pairwise(times)]
    assert max(gaps) <= 10.0 + 1.1 + 1e-9, max(gaps)


async def test_a_round_of_questions_cancelled_before_it_began_frees_its_waiters() -> None:
    clock = Clock()
    r, discovery = reconciler(2, per_second=200, clock=clock)
    await r.discover()
    clock.now += 0.5
    asked = r.look_again("tasks.s0")
    assert asked is not None
    for task in list(r._asked_tasks):
        task.cancel()
    await asyncio.sleep(0.05)
    assert asked.done()
    again = r.look_again("tasks.s0")  # a new round, not the dead one
    assert again is not None
    assert again is not asked
    await again
    assert discovery.rounds[-1] == ["tasks.s0"]


async def test_an_early_cycle_with_more_new_names_than_the_budget_carries_on() -> None:
    """The names it leaves for later have no endpoints yet: counted as none, not a failure."""
    r, discovery = reconciler(50, per_second=200)
    await r.discover()
    r.routes.table = parse_routes({"routes": [{"hosts": [f"s{i}.example"], "service": f"s{i}",
                                               "port": 80} for i in range(400)]}, "test")
    await r.discover(early=True)
    assert len(discovery.rounds[-1]) == 200
    assert len(r.state.snapshot) == 250


async def test_what_nginx_s_question_found_wakes_the_loop() -> None:
    """A lookup nginx's question started finds the service gone to no task: nginx is told at
    once, and the loop's cycle, which renders the 503 of a service with no task, does not
    wait for the poll (60 s here); a lookup that finds nothing new wakes nothing."""
    clock = Clock()
    r, discovery = reconciler(5, per_second=200, clock=clock, interval=60.0)
    await r.discover()
    r.wake.clear()
    clock.now += 1.0
    same = r.look_again("tasks.s1")
    assert same is not None
    await same
    assert not r.wake.is_set()
    discovery.tasks["tasks.s0"] = ()
    gone = r.look_again("tasks.s0")
    assert gone is not None
    await gone
    assert r.state.snapshot["tasks.s0"].addresses == ()
    assert r.wake.is_set()


async def test_a_name_is_never_in_two_lookups_at_once() -> None:
    """nginx's question for a name that a round of the poll is looking up waits for that
    round, and starts no lookup of its own: the later answer is always the newer one, and a
    failure and its recovery are each said once."""
    clock = Clock()
    r, discovery = reconciler(2, per_second=200, clock=clock)
    await r.discover()
    clock.now += 0.5
    gate = asyncio.Event()
    resolve = discovery.resolve

    async def slow(names: Iterable[str], previous: Snapshot,
                   screened: Collection[str] = ()) -> dict[str, Endpoints]:
        found = await resolve(names, previous, screened)
        await gate.wait()
        return found

    discovery.resolve = slow  # type: ignore[method-assign]
    discovery.tasks["tasks.s0"] = ("10.0.0.9",)
    round_ = asyncio.create_task(r.discover())
    await asyncio.sleep(0)  # the round has asked
    clock.now += 0.2
    asked = r.look_again("tasks.s0")
    assert asked is not None
    await asyncio.sleep(0.05)  # longer than a round of nginx's questions takes to start
    assert not asked.done()
    gate.set()
    await asked  # done with the round, its answer known
    assert r.state.snapshot["tasks.s0"].addresses == ("10.0.0.9",)
    await round_
    assert len(discovery.rounds) == 2


async def test_nginx_keeps_an_answer_until_the_agent_looks_that_name_up_again() -> None:
    """The TTL the agent's resolver gives nginx (drivers/dnsserver.py): 0 while every name is
    looked up each cycle; past the budget, the seconds until the name comes round again."""
    clock = Clock()
    small, _ = reconciler(50, per_second=200, clock=clock)
    for _ in range(2):
        await small.discover()
        clock.now += 1.0
    assert {small.answer_ttl(f"tasks.s{i}") for i in range(50)} == {0}

    r, discovery = reconciler(1000, per_second=200, clock=clock)
    await r.discover()  # every name: none known yet
    assert {r.answer_ttl(f"tasks.s{i}") for i in range(1000)} == {0}  # all due in turn next
    for _ in range(3):
        clock.now += 1.0
        await r.discover()
    asked = discovery.rounds[-1]
    # just looked up: again in five cycles (1000 names, 200 a cycle), nginx keeps it 5 s
    assert {r.answer_ttl(n) for n in asked} == {5}
    clock.now += 0.4  # asked later within the cycle: less left
    assert {r.answer_ttl(n) for n in asked} == {4}
    clock.now += 0.6
    await r.discover()
    # due at the next cycle: nginx asks again a second later, as it would without a budget
    assert {r.answer_ttl(n) for n in discovery.rounds[-1]} == {5}
    ttls = sorted(r.answer_ttl(f"tasks.s{i}") for i in range(1000))
    assert ttls[:200] == [0] * 200  # spread over the rotation
    assert ttls[-200:] == [5] * 200
    assert r.answer_ttl("tasks.unknown") == 0


async def test_an_early_cycle_looks_up_only_names_never_looked_up() -> None:
    """A cycle woken before the poll (a changed routes file, the controller's routes) spends
    none of the poll's budget: it looks up a new route's service, nothing else."""
    r, discovery = reconciler(50, per_second=200)
    await r.discover()
    r.routes.table = parse_routes({"routes": [
        *({"hosts": [f"s{i}.example"], "service": f"s{i}", "port": 80} for i in range(50)),
        {"hosts": ["new.example"], "service": "new", "port": 80}]}, "test")
    await r.discover(early=True)
    assert discovery.rounds[-1] == ["tasks.new"]
    await r.discover(early=True)
    assert discovery.rounds[-1] == []
    await r.discover()  # the poll's: every name again
    assert len(discovery.rounds[-1]) == 51


async def test_a_changed_routes_file_wakes_the_loop_and_only_the_poll_looks_everything_up(
        ) -> None:
    """The loop runs on the real clock: the routes file looks changed all along (two looks
    agree), so the loop wakes about every 0.4 s; the names are looked up by the poll's cycles
    alone, once a second."""
    table = parse_routes({"routes": [{"hosts": [f"s{i}.example"], "service": f"s{i}",
                                      "port": 80} for i in range(50)]}, "test")
    discovery = FakeDiscovery()
    routes = FakeRoutes(table)
    settings = Settings(poll_interval=1.0)
    r = Reconciler(settings, FakeNginx(), discovery, planner_for(settings), Metrics(), State(),
                   routes=routes, clock=time.monotonic)
    await r.start()
    routes.stamp = "another file"
    stop = asyncio.Event()
    loop = asyncio.create_task(r.run(stop))
    await asyncio.sleep(2.5)
    stop.set()
    await loop
    rounds = discovery.rounds[1:]  # after the start's
    full = [names for names in rounds if names]
    early = [names for names in rounds if not names]
    assert len(early) >= 2, f"the loop did not wake for the file: {len(rounds)} cycles"
    assert 2 <= len(full) <= 3, f"{len(full)} full lookup rounds in 2.5 s at a 1 s poll"
    assert all(len(names) == 50 for names in full)


# --- cycles: a real Planner, a fake nginx and discovery, a fake clock -------------------------


class Rig:
    def __init__(self, mode: str = "static", reload_min_interval: float = 1.0,
                 refuse: Callable[[str], bool] = lambda text: False) -> None:
        self.clock = Clock()
        self.settings = Settings(upstream_mode=mode, reload_min_interval=reload_min_interval)
        self.nginx = FakeNginx(self.clock, refuse)
        self.discovery = FakeDiscovery()
        self.metrics = Metrics()
        table = parse_routes({"routes": [{"hosts": ["app.example"], "service": "app",
                                          "port": 80}]}, "test")
        self.routes = FakeRoutes(table)
        self.reconciler = Reconciler(self.settings, self.nginx, self.discovery,
                                     planner_for(self.settings), self.metrics, State(),
                                     routes=self.routes, clock=self.clock)
        self.outcomes: list[Outcome] = []

    async def cycle(self, at: float) -> str:
        """The cycle's outcome in the words of the log and /status."""
        self.clock.now = at
        self.outcomes.append(await self.reconciler.cycle())
        return words(self.outcomes[-1])

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        assert value is not None, f"no sample {name} {labels}"
        return value


async def started(rig: Rig) -> Rig:
    assert await rig.reconciler.start() == Outcome("started")
    assert len(rig.nginx.attempts) == 1
    return rig


async def test_what_is_refused_alone_is_said_from_the_start() -> None:
    # (a CA file refused at start once showed on /status only from the first cycle on)
    rig = Rig()
    rig.routes.error = "routes.yaml: routes[0].port: must be at most 65535"
    outcome = await rig.reconciler.start()
    assert outcome.kind == "started"
    assert [n.kind for n in outcome.notes] == ["routes_file"]
    assert "routes[0].port" in words(outcome)


async def test_a_cycle_without_a_change_does_not_apply() -> None:
    rig = await started(Rig())
    for t in range(1, 6):
        assert await rig.cycle(t) == "no change"
    assert len(rig.discovery.rounds) == 6, "every cycle looked the tasks up"
    assert rig.nginx.stub_status_asked == 5
    assert len(rig.nginx.attempts) == 1


async def test_a_change_applies_once_and_says_what_changed() -> None:
    rig = await started(Rig())
    rig.discovery.tasks["tasks.app"] = ("10.0.0.2", "10.0.0.3")
    assert await rig.cycle(5) == "reloaded: +1 endpoints for tasks.app"
    assert "10.0.0.3" in (rig.nginx.text or "")
    assert await rig.cycle(6) == "no change"
    rig.discovery.tasks["tasks.app"] = ("10.0.0.4",)
    assert await rig.cycle(10) == "reloaded: +1 -2 endpoints for tasks.app"
    assert [t for t, _ in rig.nginx.attempts] == [0, 5, 10]
    assert rig.sample("gateway_reloads_total", result="success") == 2


async def test_a_refused_apply_keeps_what_serves_backs_off_and_tries_a_new_one_at_once() -> None:
    rig = await started(Rig(refuse=lambda text: "10.0.0.66" in text))
    serving = rig.nginx.generation
    rig.discovery.tasks["tasks.app"] = ("10.0.0.2", "10.0.0.66")
    status = await rig.cycle(10)
    assert status == ("reload refused (+1 endpoints for tasks.app): validate: nginx -t said: "
                      "invalid upstream")
    assert rig.nginx.generation == serving
    assert rig.reconciler.state.applied_generation == serving
    assert rig.sample("gateway_apply_failures_total", stage="validate") == 1
    assert rig.sample("gateway_reloads_total", result="failure") == 1
    assert rig.sample("gateway_config_last_reload_successful") == 0
    # the same refused configuration: tried again after 2 s, then 4, 8, ... up to 60 s
    assert await rig.cycle(11) == "reload refused earlier; retrying in 1.0s"
    for t in range(12, 300):
        await rig.cycle(t)
    retries = [t for t, _ in rig.nginx.attempts[1:]]
    assert retries == [10, 12, 16, 24, 40, 72, 132, 192, 252]  # 2, 4, 8, 16, 32, 60, 60, 60 s
    assert rig.sample("gateway_apply_failures_total", stage="validate") == 9
    # a different configuration is tried at once, in the middle of the backoff
    rig.discovery.tasks["tasks.app"] = ("10.0.0.2", "10.0.0.7")
    assert await rig.cycle(300) == "reloaded: +1 endpoints for tasks.app"
    assert rig.nginx.attempts[-1][0] == 300
    assert rig.nginx.generation != serving
    assert rig.sample("gateway_config_last_reload_successful") == 1


async def test_a_refused_change_that_goes_away_is_no_longer_pending() -> None:
    rig = await started(Rig(refuse=lambda text: "10.0.0.66" in text))
    rig.discovery.tasks["tasks.app"] = ("10.0.0.2", "10.0.0.66")
    assert (await rig.cycle(10)).startswith("reload refused (")
    del rig.discovery.tasks["tasks.app"]
    assert await rig.cycle(11) == "no change"
    assert rig.sample("gateway_config_last_reload_successful") == 1
    assert len(rig.nginx.attempts) == 2


async def test_changes_within_reload_min_interval_are_one_apply_at_the_due_time() -> None:
    rig = await started(Rig(reload_min_interval=5.0))
    rig.discovery.tasks["tasks.app"] = ("10.0.0.2", "10.0.0.3")
    assert await rig.cycle(1) == "reloaded: +1 endpoints for tasks.app"  # the first at once
    statuses = []
    for t, tasks in ((2, ("10.0.0.2", "10.0.0.3", "10.0.0.4")),
                     (3, ("10.0.0.3", "10.0.0.4", "10.0.0.5")),
                     (4, ("10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6")), (5, None)):
        if tasks is not None:
            rig.discovery.tasks["tasks.app"] = tasks
        statuses.append(await rig.cycle(t))
    assert statuses == ["change pending: applying in 4.0s", "change pending: applying in 3.0s",
                        "change pending: applying in 2.0s", "change pending: applying in 1.0s"]
    assert len(rig.nginx.attempts) == 2
    # at the due time, one apply of the latest state, described against what was applied
    assert await rig.cycle(6) == "reloaded: +3 -1 endpoints for tasks.app"
    assert [t for t, _ in rig.nginx.attempts] == [0, 1, 6]
    text = rig.nginx.text or ""
    assert all(f"10.0.0.{i}:80" in text for i in (3, 4, 5, 6))
    assert "10.0.0.2:80" not in text


async def test_a_change_of_tasks_is_followed_without_reload_in_resolve_mode() -> None:
    rig = await started(Rig(mode="resolve"))
    serving = rig.nginx.generation
    rig.discovery.tasks["tasks.app"] = ("10.0.0.2", "10.0.0.3")
    assert await rig.cycle(5) == "followed without reload: +1 endpoints for tasks.app"
    assert len(rig.nginx.attempts) == 1
    assert rig.nginx.generation == serving
    assert rig.sample("gateway_endpoint_changes_followed_total") == 1
    assert await rig.cycle(6) == "no change"
    # a change of routes still applies
    rig.routes.table = parse_routes({"routes": [
        {"hosts": ["app.example"], "service": "app", "port": 80},
        {"hosts": ["new.example"], "service": "new", "port": 80}]}, "test")
    assert await rig.cycle(7) == "reloaded: +1 endpoints for tasks.new, routes 1 -> 2"
    assert len(rig.nginx.attempts) == 2


async def test_the_same_change_of_tasks_applies_in_static_mode() -> None:
    rig = await started(Rig(mode="static"))
    rig.discovery.tasks["tasks.app"] = ("10.0.0.2", "10.0.0.3")
    assert await rig.cycle(5) == "reloaded: +1 endpoints for tasks.app"
    assert len(rig.nginx.attempts) == 2
    assert rig.sample("gateway_endpoint_changes_followed_total") == 0


async def test_the_loop_wakes_early_and_stops() -> None:
    """run() sleeps until the next cycle (60 s away here: the fake clock stands still), is woken
    at once by `wake`, and ends when `stop` is set."""
    rig = await started(Rig())
    rig.settings = rig.reconciler.settings = Settings(upstream_mode="static", poll_interval=60)
    stop = asyncio.Event()
    loop = asyncio.create_task(rig.reconciler.run(stop))
    await wait_for_async(lambda: len(rig.discovery.rounds) == 2, "the first cycle")
    rig.reconciler.wake.set()
    await wait_for_async(lambda: len(rig.discovery.rounds) == 3, "a cycle woken early")
    stop.set()
    await asyncio.wait_for(loop, 10)
    assert len(rig.discovery.rounds) == 3


async def wait_for_async(condition: Callable[[], bool], what: str, within: float = 10) -> None:
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_routes_file_that_cannot_be_read_is_tried_again_with_backoff(
        tmp_path: Path) -> None:
    """Unreadable (here a directory where the file was: its stamp stays the same while it is
    one): read again after 1, 2, 4, 8 s... not every cycle, and at once when it changes."""
    routes = tmp_path / "routes.yml"
    routes.write_text("routes: [{hosts: [app.example], service: app, port: 80}]\n")
    rig = Rig()
    rig.settings = rig.reconciler.settings = Settings(upstream_mode="static", routes=routes)
    rig.reconciler.routes = RoutesInput(rig.settings, rig.metrics, clock=rig.clock)
    rig.reconciler.load_initial_routes()
    await started(rig)
    routes.unlink()
    routes.mkdir()
    for second in range(1, 21):
        status = await rig.cycle(float(second))
        assert "routes file refused: " in status, status
        assert "Is a directory" in status, status
    # read at 1, then retried at 2, 4, 8 and 16
    assert rig.sample("gateway_routes_loads_total", result="invalid") == 5
    routes.rmdir()
    routes.write_text("routes: [{hosts: [app.example, b.example], service: app, port: 80}]\n")
    assert (await rig.cycle(20.5)).startswith("reloaded")
    assert rig.reconciler.state.routes_error is None


def test_a_changed_routes_file_keeps_the_routes_it_did_not_change(tmp_path: Path) -> None:
    """The gateway reads its file again with the table it last read: the routes whose item
    is the same are those objects (core/routes.py), the changed one is new."""
    routes = tmp_path / "routes.yml"
    routes.write_text("routes: [{hosts: [a.example], service: a, port: 80},\n"
                      "         {hosts: [b.example], service: b, port: 80}]\n")
    settings = Settings(upstream_mode="static", routes=routes)
    given = RoutesInput(settings, Metrics())
    given.load_initial()
    before = given.table.routes
    routes.write_text("routes: [{hosts: [a.example], service: a, port: 80},\n"
                      "         {hosts: [b.example], service: b, port: 81}]\n")
    given.refresh()
    assert given.table.routes[0] is before[0]
    assert given.table.routes[1].port == 81
