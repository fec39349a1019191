"""Discovery: DNS lookups of each target into an Endpoints snapshot.

`tasks.<service>` on Docker's embedded DNS answers one A record per running task. Three outcomes
are kept apart, because they call for opposite actions:

- addresses: the tasks to route to;
- NXDOMAIN, or no record of either family: the service has no running task (its hosts get 503);
- a failed lookup (timeout, SERVFAIL, REFUSED, server unreachable): we do not know. The last known
  addresses are kept and marked stale, never replaced by "no tasks".

c-ares keeps a cache of answers for their TTL, and Docker answers with a TTL of 600 s: a channel
kept across rounds would hide scaling for ten minutes. Each round therefore uses a fresh channel.
The channel's sockets are watched by the agent's event loop (_LoopChannel), not by a thread of
c-ares's own.

Docker's embedded DNS answers only the names it knows (a service with running tasks on a network
the gateway shares); every other name, `tasks.<service>` of a service scaled to zero included, is
forwarded to the host's resolvers. Where those are unreachable (air-gapped sites) the answer is a
timeout or SERVFAIL, which would read as "lookup failed" and keep a scaled-down service's old
addresses forever. So, with a control name (`--dns-control-name`; by default the reverse name of
the gateway's own address, which Docker always answers itself), a round where the control name
was answered reads a timeout, SERVFAIL or REFUSED for another name as "Docker does not know this
name": no tasks. When the control name fails too, the nameserver itself is failing and the last
known addresses are kept.

Forwarding also means that `tasks.shop` of a service scaled to zero is answered by whoever owns
the public `.shop` domain. So the answers for a service's `tasks.` name are screened: only
addresses of the swarm's own networks (--task-networks) are tasks; any other (loopback,
link-local such as cloud metadata at 169.254.169.254, public, another private network) is
refused, counted in gateway_dns_refused_addresses_total{result} and shown in /status. Names of
`host:` targets are the operator's own choice and are not screened.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

import pycares

from agent.core.settings import HostPort, Network
from agent.gateway.model import Endpoints, EndpointState, Snapshot
from agent.gateway.observe.metrics import Metrics

log = logging.getLogger("agent.gateway.discovery")

MAX_NAMES_IN_FLIGHT = 64  # names looked up at once; each is an A and an AAAA query


@dataclass(frozen=True)
class Answer:
    """The outcome of one lookup of one name."""

    result: str  # a gateway_dns_lookups_total result label
    addresses: tuple[str, ...] = ()
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.result not in ("ok", "nxdomain", "nodata")


class LookupFailed(Exception):
    """c-ares's error for one query: args (errno, words)."""


class _LoopChannel:
    """One round's c-ares channel, driven by the agent's event loop: c-ares says which sockets
    to watch (sock_state_cb), the loop hands them back when ready, and a timer lets c-ares
    time queries out. Answers arrive in the loop's own thread.

    (aiodns, which this replaces, runs every channel in a thread of c-ares's own, pycares 5's
    event thread: a new thread each round, and each answer passed back to the loop through its
    wake-up pipe and the interpreter lock. At 1,000 services looked up 200 a second that was
    the larger part of the idle agent's CPU.)"""

    TICK = 0.05  # seconds between c-ares's timeout checks while a socket is open

    def __init__(self, nameserver: str, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._readers: set[int] = set()
        self._writers: set[int] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._channel = pycares.Channel(
            sock_state_cb=self._watch, servers=[nameserver], timeout=timeout, tries=1,
            flags=pycares.ARES_FLAG_NOSEARCH)  # look up `tasks.x` as it is, never `tasks.x.search`

    def _watch(self, fd: int, readable: bool, writable: bool) -> None:
        bad = pycares.ARES_SOCKET_BAD
        if readable and fd not in self._readers:
            self._loop.add_reader(fd, self._channel.process_fd, fd, bad)
            self._readers.add(fd)
        elif not readable and fd in self._readers:
            self._loop.remove_reader(fd)
            self._readers.discard(fd)
        if writable and fd not in self._writers:
            self._loop.add_writer(fd, self._channel.process_fd, bad, fd)
            self._writers.add(fd)
        elif not writable and fd in self._writers:
            self._loop.remove_writer(fd)
            self._writers.discard(fd)
        if (self._readers or self._writers) and self._timer is None:
            self._timer = self._loop.call_later(self.TICK, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._channel.process_fd(pycares.ARES_SOCKET_BAD, pycares.ARES_SOCKET_BAD)
        if self._readers or self._writers:
            self._timer = self._loop.call_later(self.TICK, self._tick)

    def query(self, name: str, qtype: int) -> asyncio.Future[pycares.DNSResult]:
        future: asyncio.Future[pycares.DNSResult] = self._loop.create_future()

        def answered(result: pycares.DNSResult, errno: int | None) -> None:
            if future.done():
                return
            if errno is not None:
                future.set_exception(LookupFailed(errno, pycares.errno.strerror(errno)))
            else:
                future.set_result(result)

        try:
            self._channel.query(name, qtype, callback=answered)
        except pycares.AresError as exc:  # refused before it was sent (a malformed name)
            code = exc.args[0] if exc.args else pycares.errno.ARES_EFORMERR
            if not future.done():
                future.set_exception(LookupFailed(code, pycares.errno.strerror(code)))
        return future

    def close(self) -> None:
        self._channel.cancel()  # what is still asked fails (ECANCELLED)
        for fd in self._readers:
            self._loop.remove_reader(fd)
        for fd in self._writers:
            self._loop.remove_writer(fd)
        self._readers.clear()
        self._writers.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._channel.close()


_QTYPES = {"A": pycares.QUERY_TYPE_A, "AAAA": pycares.QUERY_TYPE_AAAA,
           "PTR": pycares.QUERY_TYPE_PTR}

_ERRNO_RESULT = {
    pycares.errno.ARES_ENOTFOUND: "nxdomain",
    pycares.errno.ARES_ENODATA: "nodata",
    pycares.errno.ARES_ETIMEOUT: "timeout",
    pycares.errno.ARES_ESERVFAIL: "servfail",
    pycares.errno.ARES_EREFUSED: "refused",
}


def _packed(text: str) -> bytes:
    """The address as 16 bytes (IPv4 first when sorted); ValueError if it is not one.

    socket.inet_pton is the C parser: a round of thousands of answers spends a quarter of its
    time in ipaddress otherwise.
    """
    try:
        return socket.inet_pton(socket.AF_INET, text).rjust(16, b"\0")
    except OSError:
        pass
    try:
        return socket.inet_pton(socket.AF_INET6, text)
    except OSError:
        raise ValueError(f"{text!r} does not appear to be an IPv4 or IPv6 address") from None


def _address(text: str) -> str | None:
    """A usable upstream address in canonical form, or None (not an address, unspecified,
    multicast or reserved)."""
    try:
        v4 = socket.inet_pton(socket.AF_INET, text)
    except OSError:
        try:
            v6 = socket.inet_pton(socket.AF_INET6, text)
        except OSError:
            return None
        if v6 == bytes(16) or v6[0] == 0xFF:
            return None
        return socket.inet_ntop(socket.AF_INET6, v6)
    if v4 == bytes(4) or v4[0] >= 224:
        return None
    return socket.inet_ntop(socket.AF_INET, v4)


@functools.lru_cache(maxsize=65536)
def screen(address: str, networks: tuple[Network, ...]) -> str | None:
    """None when `address` (canonical) is in one of `networks`; otherwise why it is refused:
    loopback, link_local, public, or outside (a private address of no network listed)."""
    ip = ipaddress.ip_address(address)
    if any(ip in net for net in networks if net.version == ip.version):
        return None
    plain = ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip
    if plain.is_loopback:
        return "loopback"
    if plain.is_link_local:
        return "link_local"
    if plain.is_global:
        return "public"
    return "outside"


def sort_addresses(addresses: Iterable[str]) -> tuple[str, ...]:
    """Distinct addresses in a stable order; ValueError for anything that is not an address."""
    return tuple(sorted(set(addresses), key=_packed))


class Discovery:
    """Resolves lookup names against one nameserver, concurrently, with a per-lookup timeout."""

    def __init__(self, nameserver: HostPort, timeout: float, metrics: Metrics,
                 clock: Callable[[], float] = time.time, control_name: str | None = None,
                 task_networks: Sequence[Network] | None = None, ipv6: bool = True) -> None:
        self.ipv6 = ipv6  # also ask AAAA
        self.nameserver = nameserver
        # the only addresses a screened (tasks.) name may answer; None: no screening
        self.task_networks = tuple(task_networks) if task_networks is not None else None
        self._refusing: dict[str, tuple[str, ...]] = {}
        self.timeout = timeout
        self.metrics = metrics
        self.clock = clock
        self.control_name = control_name
        self._failing: dict[str, str] = {}

    def _resolver(self) -> _LoopChannel:
        host = f"[{self.nameserver.host}]" if ":" in self.nameserver.host else self.nameserver.host
        return _LoopChannel(f"{host}:{self.nameserver.port}", self.timeout)

    async def _query(self, resolver: _LoopChannel, name: str, qtype: str) -> Answer:
        started = time.perf_counter()
        try:
            result = await resolver.query(name, _QTYPES[qtype])  # c-ares enforces the timeout
        except LookupFailed as exc:
            code = exc.args[0] if exc.args else None
            text = exc.args[1] if len(exc.args) > 1 else str(exc)
            answer = Answer(_ERRNO_RESULT.get(code, "error"), error=f"{qtype} {name}: {text}")
        else:
            addresses = [a for r in result.answer
                         if isinstance(r.data, pycares.ARecordData | pycares.AAAARecordData)
                         and (a := _address(str(r.data.addr))) is not None]
            answer = Answer("ok", tuple(addresses)) if addresses else Answer("nodata")
        self.metrics.dns_duration.observe(time.perf_counter() - started)
        self.metrics.dns_lookups.labels(answer.result).inc()
        return answer

    async def lookup(self, resolver: _LoopChannel, name: str) -> Answer:
        """A and AAAA of one name, combined (A only without `ipv6`). A decides; AAAA adds
        addresses when it has them.

        An AAAA failure alone does not fail the lookup: resolvers that know only IPv4 names
        (Docker's forwards unknown types upstream) may time out on it.
        """
        if not self.ipv6:
            a = await self._query(resolver, name, "A")
            return Answer("ok", sort_addresses(a.addresses)) if a.result == "ok" else a
        a, aaaa = await asyncio.gather(self._query(resolver, name, "A"),
                                       self._query(resolver, name, "AAAA"))
        if a.result == "ok":
            return Answer("ok", sort_addresses(a.addresses + aaaa.addresses))
        if a.result == "nxdomain":
            return a
        if a.result == "nodata":
            return aaaa  # IPv6-only tasks, none at all, or a failure we must not read as "none"
        return a

    def _screened(self, name: str, addresses: tuple[str, ...],
                  ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(accepted, refused) addresses of a `tasks.` name's answer."""
        networks = self.task_networks
        if networks is None:
            return addresses, ()
        accepted, refused = [], []
        for address in addresses:
            why = screen(address, networks)
            if why is None:
                accepted.append(address)
            else:
                refused.append(address)
                self.metrics.dns_refused.labels(why).inc()
        if tuple(refused) != self._refusing.get(name, ()):
            if refused:
                log.warning("dns_answer_refused name=%s refused=%s kept=%d reason=%r", name,
                            ",".join(refused), len(accepted),
                            "not an address of --task-networks")
            self._refusing[name] = tuple(refused)
        return tuple(accepted), tuple(refused)

    async def resolve(self, names: Iterable[str], previous: Snapshot,
                      screened: Collection[str] = ()) -> dict[str, Endpoints]:
        """One round: every name at once, on a fresh channel (see the module docstring).
        The answers of the names in `screened` (services' `tasks.` names) keep only the
        addresses of --task-networks."""
        names = sorted(set(names))
        resolver = self._resolver()
        try:
            control = (self._query(resolver, self.control_name, "PTR"
                                   if self.control_name.endswith(".arpa") else "A")
                       if self.control_name and names else None)
            # A burst of thousands of queries overflows a resolver's socket buffers (dnsmasq
            # dropped 10-23% of 2000 at once): keep a bounded number in flight.
            limit = asyncio.Semaphore(MAX_NAMES_IN_FLIGHT)

            async def bounded(name: str) -> Answer:
                async with limit:
                    return await self.lookup(resolver, name)

            # c-ares times every query out itself; this bound only guards against a lost
            # callback, for the whole round
            rounds = len(names) // MAX_NAMES_IN_FLIGHT + 2
            async with asyncio.timeout((self.timeout + 1.0) * rounds):
                answers, control_answer = await asyncio.gather(
                    asyncio.gather(*(bounded(n) for n in names)),
                    control if control is not None else asyncio.sleep(0, None))
        finally:
            resolver.close()
        nameserver_answers = control_answer is not None and not control_answer.failed
        now = self.clock()
        snapshot: dict[str, Endpoints] = {}
        for name, answer in zip(names, answers, strict=True):
            before = previous.get(name, Endpoints())
            if answer.failed and nameserver_answers and answer.result != "error":
                answer = Answer("nxdomain", error=f"{answer.error} (the nameserver answers "
                                f"{self.control_name}: taken as a name it does not know)")
            if answer.failed:
                if name not in self._failing:
                    log.warning("dns_lookup_failed name=%s error=%r keeping=%d", name,
                                answer.error, len(before.addresses))
                self._failing[name] = answer.error or answer.result
                snapshot[name] = Endpoints(before.addresses, before.state, True, answer.error,
                                           before.since)
                continue
            if self._failing.pop(name, None) is not None:
                log.info("dns_lookup_recovered name=%s addresses=%d", name,
                         len(answer.addresses))
            addresses, refused = (self._screened(name, answer.addresses) if name in screened
                                  else (answer.addresses, ()))
            state: EndpointState = "ok" if addresses else "none"
            since = before.since if before.addresses == addresses and before.since else now
            snapshot[name] = Endpoints(addresses, state, False, None, since, refused)
        for gone in set(self._failing) - set(names) - set(previous):  # no longer a target
            del self._failing[gone]
        for gone in set(self._refusing) - set(names) - set(previous):
            del self._refusing[gone]
        return snapshot
