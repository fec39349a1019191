"""The controller's ACME manager: what it orders, when, and what it gives the gateways.

The ACME protocol itself (acme.Client, the `acme` package) is replaced by a client whose
`order(host)` issues a certificate from a test CA, or raises; time is a clock the test moves.
tests/integration/test_acme.py runs the real protocol against Pebble.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from acme import challenges, errors, messages
from prometheus_client import CollectorRegistry

from agent.controller.acme import RETRY_MAX, SETTLE, AcmeManager, acme_hosts
from agent.controller.acme_client import Issued, describe_error, issued_from_pem
from agent.core.routes import parse_routes
from tests.support import until
from tests.support.tlsca import NOW, TestCA

DAY = 86400.0
RENEW_BEFORE = 30 * DAY
RETRY_MIN = 300.0
EVERYWHERE: frozenset[str | None] = frozenset({None})


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


class Clock:
    def __init__(self) -> None:
        self.now = float(int(NOW.timestamp()))

    def __call__(self) -> float:
        return self.now


class FakeClient:
    """What AcmeManager uses of controller/acme.py's Client: `order(host)` returns a
    certificate issued now by a test CA for `lifetime` seconds, or raises `failing`."""

    directory_url = "https://acme.test/directory"

    def __init__(self, ca: TestCA, clock: Clock) -> None:
        self.ca = ca
        self.clock = clock
        self.challenges: dict[str, str] = {}
        self.account_uri: str | None = None
        self.orders: list[str] = []
        self.failing: BaseException | None = None
        self.lifetime = 90 * DAY
        self.refused: dict[str, str] = {}  # host -> why these settings cannot order it

    def order(self, host: str) -> Issued:
        self.orders.append(host)
        if self.failing is not None:
            raise self.failing
        start = datetime.datetime.fromtimestamp(self.clock(), datetime.UTC)
        issued = self.ca.issue(host, not_before=start,
                               not_after=start + datetime.timedelta(seconds=self.lifetime))
        return issued_from_pem(host, issued.chain_pem.decode(), issued.key_pem.decode())

    def forget(self) -> None:
        pass

    def challenge(self, host: str) -> str:
        return "dns-01" if host in self.refused else "http-01"

    def unorderable(self, host: str) -> str | None:
        return self.refused.get(host)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(ca: TestCA, clock: Clock) -> FakeClient:
    return FakeClient(ca, clock)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def changes() -> list[float]:
    return []


@pytest.fixture
def manager(client: FakeClient, clock: Clock, registry: CollectorRegistry, tmp_path: Path,
            changes: list[float]) -> AcmeManager:
    return make_manager(client, clock, registry, tmp_path, changes)


def make_manager(client: FakeClient, clock: Clock, registry: CollectorRegistry,
                 state_dir: Path, changes: list[float] | None = None) -> AcmeManager:
    return AcmeManager(client, state_dir, registry,  # type: ignore[arg-type]
                       renew_before=RENEW_BEFORE, retry_min=RETRY_MIN, clock=clock,
                       on_change=(lambda: changes.append(time.monotonic()))
                       if changes is not None else (lambda: None))


def iso(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).isoformat(timespec="seconds")


@contextlib.asynccontextmanager
async def running(manager: AcmeManager) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(manager.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def passes(manager: AcmeManager, count: int = 1) -> None:
    """Wake the loop until `count` whole passes have run since this call: what a test then
    finds not ordered, the loop looked at and left."""
    for _ in range(count + 1):  # the start of pass N+1 is the end of pass N
        before = manager.heartbeat
        manager.wake.set()
        await until(lambda: manager.heartbeat != before)  # noqa: B023 (awaited at once)


def hosts(manager: AcmeManager) -> dict[str, dict[str, object]]:
    doc = manager.status()["hosts"]
    assert isinstance(doc, dict)
    return doc


# -- when a certificate is renewed -----------------------------------------------------------


def test_a_90_day_certificate_is_renewed_30_days_before_it_expires() -> None:
    issued = Issued("a.test", "", "", 1_000_000.0, 1_000_000.0 + 90 * DAY)
    assert issued.renew_at(RENEW_BEFORE) == 1_000_000.0 + 60 * DAY
    # a longer renew_before is honoured
    assert issued.renew_at(45 * DAY) == 1_000_000.0 + 45 * DAY


def test_a_6_day_certificate_is_renewed_when_a_third_of_its_lifetime_is_left() -> None:
    issued = Issued("a.test", "", "", 1_000_000.0, 1_000_000.0 + 6 * DAY)
    assert issued.renew_at(RENEW_BEFORE) == 1_000_000.0 + 4 * DAY


async def test_a_short_lived_certificate_is_not_ordered_again_at_once(
        manager: AcmeManager, client: FakeClient, clock: Clock) -> None:
    client.lifetime = 6 * DAY
    manager.want({"a.test": EVERYWHERE})
    manager.gateway_seen()
    clock.now += SETTLE
    async with running(manager):
        await until(lambda: client.orders)
        await passes(manager, 2)
    assert client.orders == ["a.test"]


# -- ordering ----------------------------------------------------------------------------------


async def test_a_new_host_is_ordered_once_a_gateway_had_time_to_reload(
        manager: AcmeManager, client: FakeClient, clock: Clock) -> None:
    manager.want({"a.test": EVERYWHERE})
    async with running(manager):
        await passes(manager)
        assert client.orders == []  # no gateway can answer its challenge yet
        assert hosts(manager)["a.test"]["next_order"] == "when a gateway has the route"
        manager.gateway_seen()
        await passes(manager)
        assert client.orders == []  # the gateways reload first
        assert hosts(manager)["a.test"]["next_order"] == iso(clock.now + SETTLE)
        clock.now += SETTLE
        manager.wake.set()  # (the loop sleeps SETTLE seconds of real time)
        await until(lambda: hosts(manager)["a.test"]["certificate"])
        await passes(manager, 2)
    assert client.orders == ["a.test"]  # and no more: the certificate is fresh
    (cert,) = manager.certificates(None)
    assert cert["host"] == "a.test"
    assert issued_from_pem("a.test", cert["chain"], cert["key"]).not_after > clock.now


async def test_a_failure_is_retried_later_doubling_up_to_six_hours(
        manager: AcmeManager, client: FakeClient, clock: Clock,
        registry: CollectorRegistry) -> None:
    manager.want({"a.test": EVERYWHERE})
    manager.gateway_seen()
    client.failing = messages.Error(typ="urn:ietf:params:acme:error:rateLimited",
                                    detail="too many")
    delays = []
    for failures in range(1, 11):
        assert not await manager.order("a.test")
        doc = hosts(manager)["a.test"]
        assert doc["failures"] == failures
        assert doc["last_error"] == "urn:ietf:params:acme:error:rateLimited: too many"
        assert doc["certificate"] is False
        assert doc["next_order"] == iso(manager.due("a.test", clock.now))
        delays.append(manager.due("a.test", clock.now) - clock.now)
        clock.now += delays[-1]
    assert delays == [RETRY_MIN * 2 ** i for i in range(7)] + [RETRY_MAX] * 3
    assert registry.get_sample_value("gateway_controller_acme_orders_total",
                                     {"result": "failure"}) == 10
    assert registry.get_sample_value("gateway_controller_acme_failures",
                                     {"host": "a.test"}) == 10
    assert manager.status()["problems"] == [
        "a.test: urn:ietf:params:acme:error:rateLimited: too many"]
    assert manager.certificates(None) == []


async def test_the_backoff_outlives_a_restart(manager: AcmeManager, client: FakeClient,
                                              clock: Clock, tmp_path: Path) -> None:
    manager.want({"a.test": EVERYWHERE, "b.test": EVERYWHERE})
    manager.gateway_seen()
    client.failing = RuntimeError("the CA is away")
    for _ in range(3):
        assert not await manager.order("a.test")
    retry_at = manager.due("a.test", clock.now)
    assert retry_at == clock.now + 4 * RETRY_MIN
    restarted = make_manager(client, clock, CollectorRegistry(), tmp_path)
    restarted.load()
    restarted.want({"a.test": EVERYWHERE, "b.test": EVERYWHERE})
    restarted.gateway_seen()
    assert restarted.due("a.test", clock.now) == retry_at  # not at once
    assert restarted.due("b.test", clock.now) == clock.now + SETTLE
    assert restarted.status()["hosts"]["a.test"]["failures"] == 3
    # a success clears it, for the next restart too
    client.failing = None
    assert await restarted.order("a.test")
    again = make_manager(client, clock, CollectorRegistry(), tmp_path)
    again.load()
    assert again.hosts["a.test"].failures == 0
    assert again.hosts["a.test"].issued is not None


async def test_success_resets_the_failures_and_tells_the_controller(
        manager: AcmeManager, client: FakeClient, clock: Clock,
        registry: CollectorRegistry, changes: list[float]) -> None:
    manager.want({"a.test": EVERYWHERE})
    manager.gateway_seen()
    client.failing = ConnectionError("the ACME server is down")
    assert not await manager.order("a.test")
    told = len(changes)
    client.failing = None
    clock.now += RETRY_MIN
    assert await manager.order("a.test")
    assert len(changes) == told + 1  # the controller serves the new certificate
    doc = hosts(manager)["a.test"]
    (cert,) = manager.certificates(None)
    issued = issued_from_pem("a.test", cert["chain"], cert["key"])
    assert (doc["certificate"], doc["failures"], doc["last_error"]) == (True, 0, None)
    assert (doc["not_after"], doc["renew_at"], doc["next_order"]) == (
        iso(issued.not_after), iso(issued.not_after - RENEW_BEFORE),
        iso(issued.not_after - RENEW_BEFORE))
    assert doc["last_success_at"] == iso(clock.now)
    assert manager.status()["problems"] == []
    sample = registry.get_sample_value
    assert sample("gateway_controller_acme_orders_total", {"result": "success"}) == 1
    assert sample("gateway_controller_acme_failures", {"host": "a.test"}) == 0
    assert sample("gateway_controller_acme_certificate_expiry_timestamp_seconds",
                  {"host": "a.test"}) == issued.not_after
    assert sample("gateway_controller_acme_certificate_renewal_timestamp_seconds",
                  {"host": "a.test"}) == issued.not_after - RENEW_BEFORE
    # a renewal that fails keeps the certificate served, and says why
    client.failing = ConnectionError("the ACME server is down")
    assert not await manager.order("a.test")
    assert manager.certificates(None) == [cert]
    assert hosts(manager)["a.test"]["last_error"] == "ConnectionError: the ACME server is down"


async def test_renew_orders_at_once_even_a_fresh_certificate(
        manager: AcmeManager, client: FakeClient) -> None:
    manager.want({"a.test": EVERYWHERE, "b.test": EVERYWHERE})
    assert await manager.order("a.test")
    assert await manager.order("b.test")
    (before, _) = manager.certificates(None)
    async with running(manager):
        await passes(manager)
        assert client.orders == ["a.test", "b.test"]  # fresh: nothing due
        assert manager.renew(["a.test", "unknown.test"]) == ["a.test"]
        await until(lambda: len(client.orders) == 3)
        await until(lambda: manager.certificates(None)[0] != before)
        await passes(manager, 2)
    assert client.orders == ["a.test", "b.test", "a.test"]  # once, then fresh again


def test_renew_chooses_among_the_wanted_hosts(manager: AcmeManager, clock: Clock) -> None:
    manager.want({"b.test": EVERYWHERE, "a.test": EVERYWHERE})
    assert manager.renew(["unknown.test"]) == []
    assert manager.due("unknown.test", clock.now) == float("inf")
    assert manager.renew() == ["a.test", "b.test"]
    assert manager.due("a.test", clock.now) == clock.now


# -- what the gateways get -------------------------------------------------------------------


async def test_a_zone_gets_a_certificate_only_when_every_route_of_its_host_is_in_it(
        manager: AcmeManager, registry: CollectorRegistry) -> None:
    manager.want({h: EVERYWHERE for h in ("a.test", "b.test", "c.test", "old.test")})
    for host in ("a.test", "b.test", "c.test", "old.test"):
        assert await manager.order(host)
    manager.want({"a.test": EVERYWHERE, "b.test": frozenset({"dmz"}),
                  "c.test": frozenset({"dmz", "intra"}), "new.test": EVERYWHERE})

    def served(zone: str | None) -> list[str]:
        return [c["host"] for c in manager.certificates(zone)]

    assert served(None) == ["a.test", "b.test", "c.test"]
    # c.test is served in two zones: neither zone's gateways get its key
    assert served("dmz") == ["b.test"]
    assert served("intra") == []
    assert served("other") == []
    # nor metrics nor status for a host no route wants any more
    assert registry.get_sample_value(
        "gateway_controller_acme_certificate_expiry_timestamp_seconds",
        {"host": "old.test"}) is None
    assert sorted(hosts(manager)) == ["a.test", "b.test", "c.test", "new.test"]


def test_the_hosts_of_tls_acme_routes_with_their_zones() -> None:
    table = parse_routes({"routes": [
        {"hosts": ["a.test", "b.test"], "service": "s", "port": 80, "tls": "acme"},
        {"hosts": ["a.test"], "path": "/api", "service": "s", "port": 80, "tls": "acme",
         "zone": "dmz"},
        {"hosts": ["c.test"], "service": "s", "port": 80, "tls": True},
        {"hosts": ["d.test"], "service": "s", "port": 80}]})
    assert acme_hosts(table.routes) == {"a.test": frozenset({None, "dmz"}),
                                        "b.test": frozenset({None})}


# -- the store ---------------------------------------------------------------------------------


async def test_a_restarted_controller_orders_only_what_it_lacks(
        manager: AcmeManager, client: FakeClient, clock: Clock, tmp_path: Path,
        ca: TestCA) -> None:
    manager.want({"a.test": EVERYWHERE, "b.test": EVERYWHERE})
    assert await manager.order("a.test")
    assert await manager.order("b.test")
    before = manager.certificates(None)
    kept = manager.certs_dir
    assert (kept / "a.test.pem").stat().st_mode & 0o077 == 0
    (kept / "broken.test.pem").write_text("-----BEGIN CERTIFICATE-----\nnonsense\n")
    other = ca.issue("a.test")  # a certificate filed under a host it does not name
    (kept / "wrong.test.pem").write_bytes(other.key_pem + other.chain_pem)
    mixed = ca.issue("mixed.test")  # a key with another order's certificate
    (kept / "mixed.test.pem").write_bytes(ca.issue("mixed.test").key_pem + mixed.chain_pem)
    client.orders.clear()
    restarted = make_manager(client, clock, CollectorRegistry(), tmp_path)
    restarted.want({h: EVERYWHERE for h in ("a.test", "b.test", "broken.test", "wrong.test",
                                            "mixed.test")})
    restarted.gateway_seen()
    clock.now += SETTLE
    async with running(restarted):
        await until(lambda: len(client.orders) == 3)
        await passes(restarted, 2)
    assert sorted(client.orders) == ["broken.test", "mixed.test", "wrong.test"]
    assert [c for c in restarted.certificates(None) if c["host"] in ("a.test", "b.test")] == \
        before


def test_status_before_any_gateway(manager: AcmeManager) -> None:
    manager.want({"a.test": EVERYWHERE})
    manager.heartbeat = time.monotonic() - 100  # the loop's last pass, 100 s ago
    status = manager.status()
    assert 100 <= status.pop("loop_seconds_ago") < 200
    assert status.pop("loop_errors") == 0
    assert status == {
        "directory": "https://acme.test/directory",
        "account": None,
        "renew_before_days": 30.0,
        "problems": [],
        "hosts": {"a.test": {
            "certificate": False, "not_after": None, "renew_at": None,
            "next_order": "when a gateway has the route", "challenge": "http-01",
            "failures": 0, "last_error": None, "last_attempt_at": None,
            "last_success_at": None}},
    }


async def test_a_host_these_settings_cannot_order_is_never_ordered_and_status_says_why(
        manager: AcmeManager, client: FakeClient, clock: Clock) -> None:
    """A wildcard without a DNS provider: no order spends the CA's limits, /status says why,
    and the other hosts are ordered as usual."""
    client.refused["*.shop.test"] = "a wildcard certificate needs a DNS-01 challenge: ..."
    manager.want({"a.test": EVERYWHERE, "*.shop.test": EVERYWHERE})
    manager.gateway_seen()
    clock.now += SETTLE
    await manager._pass(asyncio.Event())
    manager.renew()  # not even forced
    await manager._pass(asyncio.Event())
    assert client.orders == ["a.test", "a.test"]
    status = manager.status()
    assert status["hosts"]["*.shop.test"] | {"last_error": "x"} == {
        "certificate": False, "not_after": None, "renew_at": None, "next_order": None,
        "challenge": "dns-01", "failures": 0, "last_error": "x", "last_attempt_at": None,
        "last_success_at": None}
    assert status["problems"] == [
        "*.shop.test: a wildcard certificate needs a DNS-01 challenge: ..."]


# -- errors as a user reads them -----------------------------------------------------------------


def test_errors_are_one_line_of_what_the_acme_server_said() -> None:
    assert describe_error(ConnectionError("refused")) == "ConnectionError: refused"
    assert describe_error(messages.Error(typ="urn:ietf:params:acme:error:rateLimited",
                                         detail="too many")) == \
        "urn:ietf:params:acme:error:rateLimited: too many"
    assert describe_error(errors.TimeoutError()) == "the order did not complete within 90s"
    failed = messages.AuthorizationResource(uri="https://acme.test/authz/1", body=(
        messages.Authorization(
            identifier=messages.Identifier(typ=messages.IDENTIFIER_FQDN, value="a.test"),
            status=messages.STATUS_INVALID,
            challenges=[messages.ChallengeBody(
                chall=challenges.HTTP01(token=b"t" * 16), status=messages.STATUS_INVALID,
                error=messages.Error(typ="urn:ietf:params:acme:error:connection",
                                     detail="127.0.0.1: Connection refused\nby the gateway"))])))
    assert describe_error(errors.ValidationError([failed])) == (
        "validation failed: a.test: urn:ietf:params:acme:error:connection: 127.0.0.1: "
        "Connection refused by the gateway")
    long = describe_error(ValueError("x" * 1000))
    assert len(long) == 300
    assert long.endswith("...")


async def test_certificates_of_another_acme_server_are_not_served(
        manager: AcmeManager, client: FakeClient, clock: Clock, tmp_path: Path) -> None:
    """From staging to production: the staging certificates stay in their own directory."""
    manager.want({"a.test": EVERYWHERE})
    assert await manager.order("a.test")
    other = FakeClient(client.ca, clock)
    other.directory_url = "https://production.test/directory"
    production = make_manager(other, clock, CollectorRegistry(), tmp_path)
    production.load()
    production.want({"a.test": EVERYWHERE})
    assert production.certs_dir != manager.certs_dir
    assert production.certs_dir.parent == manager.certs_dir.parent
    assert production.certificates(None) == []
    production.gateway_seen()
    assert production.due("a.test", clock.now) == clock.now + SETTLE  # ordered anew


async def test_a_certificate_that_cannot_be_saved_is_served_and_not_ordered_again(
        manager: AcmeManager, client: FakeClient, clock: Clock, tmp_path: Path) -> None:
    manager.certs_dir.parent.mkdir(parents=True)
    manager.certs_dir.write_text("a file where the directory should be")
    manager.want({"a.test": EVERYWHERE})
    assert await manager.order("a.test")  # the CA issued it: that is what counts
    assert [c["host"] for c in manager.certificates(None)] == ["a.test"]
    assert manager.status()["hosts"]["a.test"]["failures"] == 0
    assert manager.due("a.test", clock.now) > clock.now + 50 * DAY


async def test_an_unexpected_error_in_the_loop_is_said_and_the_loop_goes_on(
        client: FakeClient, clock: Clock, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def broken() -> None:  # the controller's callback failing, say
        calls.append(1)
        if len(calls) in (2, 3):  # at start, and after the first order
            raise RuntimeError("boom")

    manager = AcmeManager(client, tmp_path, CollectorRegistry(),  # type: ignore[arg-type]
                          renew_before=RENEW_BEFORE, retry_min=RETRY_MIN, clock=clock,
                          on_change=broken)
    manager.want({"a.test": EVERYWHERE, "b.test": EVERYWHERE})
    manager.gateway_seen()
    clock.now += SETTLE
    async with running(manager):
        await until(lambda: manager.loop_errors == 2 and len(client.orders) == 2, 15)
    assert "acme_loop_error" in caplog.text
    assert sorted(client.orders) == ["a.test", "b.test"]  # it went on with the next host
    assert manager.status()["loop_errors"] == 2
    # what the CA issued before the error was saved, and a restart has it
    restarted = make_manager(client, clock, CollectorRegistry(), tmp_path)
    restarted.load()
    assert {h for h, st in restarted.hosts.items() if st.issued} == {"a.test", "b.test"}
