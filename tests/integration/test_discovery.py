"""Discovery against a real DNS server over UDP, including the faults dnsmasq cannot show."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dns import asyncquery, rcode
from dns.message import make_query
from prometheus_client import CollectorRegistry

from agent.core.settings import DEFAULT_TASK_NETWORKS, HostPort, parse_host_port, task_networks
from agent.gateway.drivers.discovery import Discovery
from agent.gateway.drivers.dnsserver import LocalResolver
from agent.gateway.model import Endpoints
from agent.gateway.observe.metrics import Metrics
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


async def test_a_tasks_name_answered_outside_the_swarm_s_networks_is_refused(
        dns: ControlledDns, metrics: Metrics) -> None:
    """Docker's DNS forwards a `tasks.` name it does not know (a service scaled to zero) to the
    node's resolvers: whoever owns the public domain answers. Only addresses of the swarm's
    networks are tasks; the rest is refused and counted. (No traffic goes to any of them.)"""
    d = Discovery(parse_host_port(dns.nameserver), 0.3, metrics,
                  task_networks=DEFAULT_TASK_NETWORKS)
    hostile = ["10.0.1.3", "127.0.0.1", "169.254.169.254", "8.8.8.8", "100.64.0.1"]
    dns.set("tasks.web", hostile)
    dns.set("tasks.shop", ["8.8.4.4"])
    dns.set("upstream.example.net", ["8.8.8.8"])  # a `host:` target: the operator's name
    got = await d.resolve(["tasks.web", "tasks.shop", "upstream.example.net"], {},
                          screened={"tasks.web", "tasks.shop"})
    assert got["tasks.web"].addresses == ("10.0.1.3",)
    assert got["tasks.web"].state == "ok"
    assert got["tasks.web"].refused == ("8.8.8.8", "100.64.0.1", "127.0.0.1", "169.254.169.254")
    assert (got["tasks.shop"].addresses, got["tasks.shop"].state) == ((), "none")  # 503
    assert got["upstream.example.net"].addresses == ("8.8.8.8",)

    def refused(result: str) -> float | None:
        return metrics.registry.get_sample_value("gateway_dns_refused_addresses_total",
                                                 {"result": result})

    assert {r: refused(r) for r in ("loopback", "link_local", "public", "outside")} == {
        "loopback": 1, "link_local": 1, "public": 2, "outside": 1}
    # the operator's own networks decide: here loopback is one (as in these tests)
    d = Discovery(parse_host_port(dns.nameserver), 0.3, metrics,
                  task_networks=task_networks("127.0.0.0/8"))
    got = await d.resolve(["tasks.web"], {}, screened={"tasks.web"})
    assert got["tasks.web"].addresses == ("127.0.0.1",)


async def test_the_agent_s_resolver_answers_over_udp_and_tcp_and_forwards_other_names(
        dns: ControlledDns, metrics: Metrics) -> None:
    """nginx's resolver is the agent's (agent/gateway/dnsserver.py): the names of targets from
    discovery, over UDP and (a truncated answer) TCP; other names, such as an OCSP responder's,
    from the nameserver unchanged; a `tasks.` name discovery does not know never reaches the
    nameserver."""
    snapshot = {"tasks.web": Endpoints(("10.0.0.2",), "ok"),
                "tasks.big": Endpoints(tuple(f"10.1.0.{i}" for i in range(1, 201)), "ok")}
    server = LocalResolver(HostPort("127.0.0.1", 0), lambda: snapshot,
                           parse_host_port(dns.nameserver), 0.3, metrics.registry)
    await server.start()
    where, port = server.address.host, server.address.port
    dns.set("ocsp.example.org", ["192.0.2.7"])
    dns.set("tasks.unknown", ["8.8.8.8"])
    try:
        web = await asyncquery.udp(make_query("tasks.web", "A"), where,
                                       timeout=2, port=port)
        assert [r.address for r in web.answer[0]] == ["10.0.0.2"]
        big, tcp = await asyncquery.udp_with_fallback(
            make_query("tasks.big", "A"), where, timeout=2, port=port)
        assert tcp  # truncated over UDP, whole over TCP
        assert len(big.answer[0]) == 200
        before = dns.queries
        ocsp = await asyncquery.udp(make_query("ocsp.example.org", "A"),
                                        where, timeout=2, port=port)
        assert [r.address for r in ocsp.answer[0]] == ["192.0.2.7"]
        assert ocsp.answer[0].ttl == 600  # the nameserver's, unchanged
        unknown = await asyncquery.udp(make_query("tasks.unknown", "A"),
                                           where, timeout=2, port=port)
        assert (unknown.rcode(), unknown.answer) == (rcode.SERVFAIL, [])
        assert dns.queries == before + 1  # the OCSP name only
        dns.fault("ocsp.example.org", "silent")  # the nameserver does not answer: SERVFAIL
        ocsp = await asyncquery.udp(make_query("ocsp.example.org", "A"),
                                        where, timeout=2, port=port)
        assert ocsp.rcode() == rcode.SERVFAIL
    finally:
        await server.close()
    sample = metrics.registry.get_sample_value
    assert sample("gateway_resolver_queries_total", {"result": "forwarded"}) == 1
    assert sample("gateway_resolver_queries_total", {"result": "forward_failed"}) == 1
