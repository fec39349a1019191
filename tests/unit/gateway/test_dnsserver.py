"""The agent's DNS server for nginx (agent/gateway/dnsserver.py): what it answers from
discovery, byte for byte as nginx receives it (messages parsed by dnspython)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from prometheus_client import CollectorRegistry

from agent.core.settings import HostPort
from agent.gateway.drivers.dnsserver import (
    ASKED_WAIT,
    TTL,
    LocalResolver,
    ResolverError,
    _bind,
)
from agent.gateway.model import Endpoints, Snapshot


class Fixture:
    def __init__(self) -> None:
        self.snapshot: dict[str, Endpoints] = {}
        self.ttls: dict[str, int] = {}  # the reconciler's answer_ttl; 0 for a name not in it
        self.asked: list[str] = []
        # the reconciler's look_again: a lookup nginx's question waits for (None: none)
        self.look_again: Callable[[str], Awaitable[None] | None] = lambda name: None
        self.registry = CollectorRegistry()
        # nothing listens on port 9 of 127.0.0.55: a forwarded query would fail
        self.server = LocalResolver(HostPort("127.0.0.1", 0), self.current,
                                    HostPort("127.0.0.55", 9), 0.2, self.registry,
                                    self.asked.append, ttl=lambda n: self.ttls.get(n, 0),
                                    asked=lambda n: self.look_again(n))

    def current(self) -> Snapshot:
        return self.snapshot

    def forwards(self, name: str) -> bool:
        """Whether a query for `name` goes on to the nameserver."""
        out = self.server.respond(dns.message.make_query(name, "A").to_wire(), True)
        return isinstance(out, dns.message.Message)

    def ask(self, name: str, qtype: str = "A", udp: bool = True, qid: int = 7,
            ) -> dns.message.Message:
        """The reply nginx gets from the agent itself."""
        query = dns.message.make_query(name, qtype)
        query.id = qid
        out = self.server.respond(query.to_wire(), udp)
        assert isinstance(out, bytes), out
        reply = dns.message.from_wire(out)
        assert reply.id == qid
        return reply

    def count(self, result: str) -> float:
        return self.registry.get_sample_value("gateway_resolver_queries_total",
                                              {"result": result}) or 0.0


@pytest.fixture
def f() -> Iterator[Fixture]:
    fixture = Fixture()
    yield fixture
    asyncio.run(fixture.server.close())  # (never started: closes its sockets)


def addresses(reply: dns.message.Message) -> list[str]:
    return sorted(r.address for rrset in reply.answer for r in rrset)


def test_a_known_name_is_answered_with_the_addresses_discovery_accepted(f: Fixture) -> None:
    f.snapshot["tasks.web"] = Endpoints(("10.0.1.2", "10.0.1.3", "fd00::5"), "ok",
                                        refused=("8.8.8.8",))
    reply = f.ask("tasks.web")
    assert reply.rcode() == dns.rcode.NOERROR
    assert addresses(reply) == ["10.0.1.2", "10.0.1.3"]  # never the refused one
    assert reply.answer[0].ttl == TTL == 0  # nginx asks again a second later
    assert reply.flags & dns.flags.AA
    aaaa = f.ask("tasks.web", "AAAA")
    assert addresses(aaaa) == ["fd00::5"]
    assert f.asked == ["tasks.web", "tasks.web"]
    assert f.count("answered") == 2


def test_lookups_failing_keep_the_last_known_addresses(f: Fixture) -> None:
    f.snapshot["tasks.web"] = Endpoints(("10.0.1.2",), "ok", stale=True, error="timeout")
    reply = f.ask("tasks.web")
    assert addresses(reply) == ["10.0.1.2"]


@pytest.mark.parametrize(("endpoints", "rcode"), [
    # no task (or every address refused): nginx drops its servers
    (Endpoints((), "none"), dns.rcode.NXDOMAIN),
    (Endpoints((), "none", refused=("127.0.0.1",)), dns.rcode.NXDOMAIN),
    (Endpoints((), "none", stale=True), dns.rcode.NXDOMAIN),
    # never answered yet: nginx keeps what it has and asks again
    (Endpoints((), "unknown", stale=True), dns.rcode.SERVFAIL),
    (Endpoints(), dns.rcode.SERVFAIL),
])
def test_without_addresses(f: Fixture, endpoints: Endpoints, rcode: dns.rcode.Rcode) -> None:
    f.snapshot["tasks.web"] = endpoints
    reply = f.ask("tasks.web")
    assert (reply.rcode(), reply.answer) == (rcode, [])


def test_a_tasks_name_discovery_does_not_know_is_never_forwarded(f: Fixture) -> None:
    reply = f.ask("tasks.other")
    assert reply.rcode() == dns.rcode.SERVFAIL
    reply = f.ask("TASKS.Other")
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert f.forwards("ocsp.example.org")  # no task: for the nameserver
    assert not f.forwards("tasks.other")
    assert f.count("forwarded") == 0  # (counted once the nameserver answered)


def test_a_kept_reply_follows_the_endpoints_and_answers_each_query_with_its_id(
        f: Fixture) -> None:
    f.snapshot["tasks.web"] = Endpoints(("10.0.1.2",), "ok")
    for qid in (1, 2, 65535):
        reply = f.ask("tasks.web", qid=qid)
        assert addresses(reply) == ["10.0.1.2"]
    f.snapshot = {"tasks.web": Endpoints(("10.0.1.3",), "ok")}  # a new round
    reply = f.ask("tasks.web", qid=3)
    assert addresses(reply) == ["10.0.1.3"]
    f.snapshot = {"tasks.web": Endpoints((), "none")}
    reply = f.ask("tasks.web", qid=4)
    assert reply.rcode() == dns.rcode.NXDOMAIN
    f.snapshot = {}  # no longer a target
    reply = f.ask("tasks.web", qid=5)
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert (f.count("answered"), f.count("nxdomain"), f.count("servfail")) == (4, 1, 1)


def test_the_ttl_is_the_time_until_the_agent_looks_the_name_up_again(f: Fixture) -> None:
    f.snapshot["tasks.web"] = Endpoints(("10.0.1.2", "10.0.1.3", "10.0.1.4"), "ok")
    f.ttls["tasks.web"] = 4
    assert f.ask("tasks.web", qid=1).answer[0].ttl == 4
    for ttl in (3, 0, 86400):  # a second later: the same addresses, less time left (the
        f.ttls["tasks.web"] = ttl  # kept reply, its TTL rewritten)
        reply = f.ask("tasks.web", qid=2)
        assert [rrset.ttl for rrset in reply.answer] == [ttl]
        assert addresses(reply) == ["10.0.1.2", "10.0.1.3", "10.0.1.4"]
        assert reply.id == 2
    f.snapshot["tasks.gone"] = Endpoints((), "none")
    f.ttls["tasks.gone"] = 4  # no address: nothing to keep, NXDOMAIN as before
    assert f.ask("tasks.gone").rcode() == dns.rcode.NXDOMAIN
    assert f.count("answered") == 4


def test_an_answer_too_long_for_udp_is_truncated_and_whole_over_tcp(f: Fixture) -> None:
    many = tuple(f"10.1.{i // 250}.{i % 250 + 1}" for i in range(300))
    f.snapshot["tasks.big"] = Endpoints(many, "ok")
    udp = f.ask("tasks.big")
    assert udp.flags & dns.flags.TC  # nginx asks again over TCP
    assert udp.answer == []
    tcp = f.ask("tasks.big", udp=False)
    assert addresses(tcp) == sorted(many)


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x12\x34" + b"\xff" * 40,
                                  dns.message.make_response(
                                      dns.message.make_query("tasks.web", "A")).to_wire()])
def test_what_is_not_a_query_gets_no_reply(f: Fixture, data: bytes) -> None:
    f.snapshot["tasks.web"] = Endpoints(("10.0.1.2",), "ok")
    assert f.server.respond(data, udp=True) is None
    assert f.count("malformed") == 1


def test_a_query_of_another_class_or_several_questions_is_refused(f: Fixture) -> None:
    f.snapshot["tasks.web"] = Endpoints(("10.0.1.2",), "ok")
    chaos = dns.message.make_query("tasks.web", "A", "CH")
    reply = f.server.respond(chaos.to_wire(), udp=True)
    assert isinstance(reply, bytes)
    assert dns.message.from_wire(reply).rcode() == dns.rcode.REFUSED
    two = dns.message.make_query("tasks.web", "A")
    two.question.append(two.question[0])
    reply = f.server.respond(two.to_wire(), udp=True)
    assert isinstance(reply, bytes)
    assert dns.message.from_wire(reply).rcode() == dns.rcode.FORMERR
    assert f.asked == []


def test_a_free_port_is_never_one_nginx_listens_on() -> None:
    # nginx binds the HTTPS port for UDP too (HTTP/3): a port 0 resolver must not take it, as it
    # once did in a test whose HTTPS port lay in the kernel's ephemeral range
    with pytest.raises(ResolverError, match=r"--resolver-listen 127\.0\.0\.1:0"):
        _bind(HostPort("127.0.0.1", 0), avoid=range(65536))
    low = range(1, 46000)  # most of the ephemeral range (32768-60999 here): kept out each try
    udp, tcp = _bind(HostPort("127.0.0.1", 0), avoid=low)
    with udp, tcp:
        assert udp.getsockname()[1] not in low
        assert tcp.getsockname()[1] == udp.getsockname()[1]


def test_the_agent_loads_no_dns_over_quic_client() -> None:
    """dnspython loads a QUIC client when aioquic is installed, as it is here (the tests' HTTP/3
    client): the agent, which forwards over UDP and TCP only, does not (drivers/dnsquery.py)."""
    import importlib.util
    import subprocess
    import sys

    assert importlib.util.find_spec("aioquic") is not None, "aioquic: a test dependency"
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, agent.gateway.daemon, agent.gateway.cli; "
         "print(sorted({m.split('.')[0] for m in sys.modules} & {'aioquic', 'dns'}))"],
        capture_output=True, text=True, check=True).stdout.split()
    assert loaded == ["['dns']"], loaded


@contextlib.asynccontextmanager
async def serving(f: Fixture) -> AsyncIterator[HostPort]:
    """The server started on its loopback port, closed within the test's own loop."""
    await f.server.start()
    try:
        yield f.server.address
    finally:
        await f.server.close()


async def test_a_question_that_starts_a_lookup_is_answered_with_what_it_found(
        f: Fixture) -> None:
    """nginx's question for a name whose lookup is due (the reconciler's look_again) waits
    for that lookup: over UDP and TCP, on a kept reply too, the answer has the new task."""
    async with serving(f) as where:
        await _asks_wait_for_the_lookup(f, where)


async def _asks_wait_for_the_lookup(f: Fixture, where: HostPort) -> None:
    f.snapshot["tasks.web"] = Endpoints(("10.0.1.2",), "ok")

    async def ask(tcp: bool = False) -> list[str]:
        query = dns.message.make_query("tasks.web", "A")
        if tcp:
            reply = await dns.asyncquery.tcp(query, where.host, timeout=2, port=where.port)
        else:
            reply = await dns.asyncquery.udp(query, where.host, timeout=2, port=where.port)
        return addresses(reply)

    assert await ask() == ["10.0.1.2"]  # no lookup due: the reply is kept
    for tcp, task in ((False, "10.0.1.3"), (True, "10.0.1.4")):
        async def lookup(task: str = task) -> None:
            await asyncio.sleep(0.05)
            f.snapshot = {"tasks.web": Endpoints(("10.0.1.2", task), "ok")}

        f.look_again = lambda name: asyncio.ensure_future(lookup())
        assert await ask(tcp) == ["10.0.1.2", task]
    assert f.asked == ["tasks.web"] * 3


async def test_a_lookup_that_takes_too_long_leaves_the_answer_as_it_was(f: Fixture) -> None:
    """nginx gives up on an answer after a second (resolver_timeout): past ASKED_WAIT the
    agent answers with what it knows, and the lookup goes on."""
    f.snapshot["tasks.web"] = Endpoints(("10.0.1.2",), "ok")
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    f.look_again = lambda name: never
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with serving(f) as where:
        reply = await dns.asyncquery.udp(dns.message.make_query("tasks.web", "A"),
                                         where.host, timeout=2, port=where.port)
    assert addresses(reply) == ["10.0.1.2"]
    assert loop.time() - started >= ASKED_WAIT
    assert not never.done()
