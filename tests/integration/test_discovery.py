"""Discovery against a real DNS server over UDP, including the faults dnsmasq cannot show."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from agent.discovery import Discovery, Endpoints
from agent.metrics import Metrics
from agent.settings import parse_host_port
from tests.support.dns import ControlledDns


@pytest.fixture
def dns() -> Iterator[ControlledDns]:
    server = ControlledDns()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def discovery(dns: ControlledDns, metrics: Metrics) -> Discovery:
    return Discovery(parse_host_port(dns.nameserver), 0.3, metrics)


def lookups(metrics: Metrics, result: str) -> float:
    value = metrics.registry.get_sample_value("gateway_dns_lookups_total", {"result": result})
    assert value is not None
    return value


async def test_answers_with_a_long_ttl_are_not_cached_between_rounds(
        dns: ControlledDns, metrics: Metrics) -> None:
    d = discovery(dns, metrics)
    dns.set("tasks.web", ["10.0.0.2"])
    first = await d.resolve(["tasks.web"], {})
    assert first["tasks.web"] == Endpoints(("10.0.0.2",), "ok")
    dns.set("tasks.web", ["10.0.0.2", "10.0.0.3"])
    second = await d.resolve(["tasks.web"], first)
    assert second["tasks.web"].addresses == ("10.0.0.2", "10.0.0.3")


async def test_no_such_name_means_no_tasks(dns: ControlledDns, metrics: Metrics) -> None:
    d = discovery(dns, metrics)
    previous = {"tasks.web": Endpoints(("10.0.0.2",), "ok")}
    got = await d.resolve(["tasks.web"], previous)
    assert got["tasks.web"].addresses == ()
    assert got["tasks.web"].state == "none"
    assert got["tasks.web"].stale is False
    dns.set("tasks.web", [])  # the name exists, no record: also no tasks
    got = await d.resolve(["tasks.web"], previous)
    assert (got["tasks.web"].state, got["tasks.web"].stale) == ("none", False)


@pytest.mark.parametrize("fault", ["servfail", "refused", "silent", "truncated"])
async def test_a_failed_lookup_keeps_the_last_known_tasks(
        dns: ControlledDns, metrics: Metrics, fault: str) -> None:
    d = discovery(dns, metrics)
    dns.set("tasks.web", ["10.0.0.2", "10.0.0.3"])
    good = await d.resolve(["tasks.web"], {})
    dns.fault("tasks.web", fault)
    bad = await d.resolve(["tasks.web"], good)
    assert bad["tasks.web"].addresses == ("10.0.0.2", "10.0.0.3")
    assert bad["tasks.web"].stale is True
    assert bad["tasks.web"].state == "ok"
    assert bad["tasks.web"].error
    dns.fault("tasks.web", None)
    again = await d.resolve(["tasks.web"], bad)
    assert again["tasks.web"] == Endpoints(("10.0.0.2", "10.0.0.3"), "ok")


async def test_failure_kinds_are_counted(dns: ControlledDns, metrics: Metrics) -> None:
    d = discovery(dns, metrics)
    for name, fault in (("a", "servfail"), ("b", "refused"), ("c", "silent")):
        dns.set(name, ["10.0.0.9"])
        dns.fault(name, fault)
    await d.resolve(["a", "b", "c", "nope"], {})
    assert lookups(metrics, "servfail") >= 1
    assert lookups(metrics, "refused") >= 1
    assert lookups(metrics, "timeout") >= 1
    assert lookups(metrics, "nxdomain") >= 1


async def test_hundreds_of_addresses_and_ipv6(dns: ControlledDns, metrics: Metrics) -> None:
    d = discovery(dns, metrics)
    many = [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(300)] + ["fd00::1"]
    dns.set("tasks.big", many)
    got = await d.resolve(["tasks.big"], {})
    # a UDP answer this large is truncated; c-ares retries over TCP and gets all of them
    assert len(got["tasks.big"].addresses) == 301
    assert got["tasks.big"].addresses[-1] == "fd00::1"


async def test_server_gone_is_a_failure_not_an_empty_service(metrics: Metrics) -> None:
    d = Discovery(parse_host_port("127.0.0.55:9"), 0.3, metrics)  # nothing listens there
    previous = {"tasks.web": Endpoints(("10.0.0.2",), "ok")}
    got = await d.resolve(["tasks.web"], previous)
    assert got["tasks.web"].addresses == ("10.0.0.2",)
    assert got["tasks.web"].stale is True


@pytest.mark.parametrize("fault", ["servfail", "silent", "refused"])
async def test_with_a_control_name_an_unknown_name_means_no_tasks(
        dns: ControlledDns, metrics: Metrics, fault: str) -> None:
    """Docker forwards names it does not know (a service scaled to zero) to the host's
    resolvers; with none reachable the answer is SERVFAIL or silence. While Docker answers a
    name it always knows, such a failure means "no tasks", not "keep the old addresses"."""
    d = Discovery(parse_host_port(dns.nameserver), 0.3, metrics,
                  control_name="7.1.0.10.in-addr.arpa")
    dns.set("7.1.0.10.in-addr.arpa", [])  # answered: the name exists
    dns.set("tasks.web", ["10.0.0.2"])
    good = await d.resolve(["tasks.web"], {})
    dns.set("tasks.web", None)
    dns.fault("tasks.web", fault)  # what the unreachable upstream resolver gives
    got = await d.resolve(["tasks.web"], good)
    assert got["tasks.web"] == Endpoints((), "none")

    dns.fault("*", "silent")  # the nameserver itself fails: keep the last known tasks
    got = await d.resolve(["tasks.web"], good)
    assert got["tasks.web"].addresses == ("10.0.0.2",)
    assert got["tasks.web"].stale is True
