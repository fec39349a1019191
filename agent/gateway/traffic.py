"""Per-route traffic metrics from nginx's access log: one compact record per request, over UDP.

nginx sends each record as a syslog datagram to the agent on loopback (`access_log syslog:...`,
see the template). A datagram looks like:

    <190>Nov 25 17:11:04 gateway: g1|/gateway-route/managerhttp|200|0.003|0.002|200|0.002|312|96

after the tag: a format marker, then ROUTE|STATUS|REQUEST_TIME|UPSTREAM_RESPONSE_TIME|
UPSTREAM_STATUS|UPSTREAM_HEADER_TIME|BYTES_SENT|REQUEST_LENGTH (nginx's own variables; the
upstream ones list every try, "0.000, 0.002", and are "-" when no upstream was asked).

ROUTE is $document_root. No location of the gateway serves files, so the template gives each
route's locations `root /gateway-route/<label>` and each server `root /gateway-unrouted`: a
value fixed in the configuration, known for every request (also one nginx answers before its
rewrite phase, such as a 413), and free to compute.

The `route` label is the route's first host and its path prefix (`managerhttp/`,
`manager.example.com/api`): the routes model refuses two routes with the same host and path, so
it names one route, it is what a user wrote, and it stays the same when routes are reordered.
Requests that no route matched (an unknown Host, a path no route of that host covers, a request
nginx refused before choosing a location) are `unrouted`. Labels come only from the routes in
use: a record naming any other route is counted as `unknown_route` and creates no series, so
cardinality stays at routes x status classes whatever the clients send.

Records are counted in plain Python objects and turned into metric families only when
/metrics is scraped: at tens of thousands of requests a second the per-record cost is what
matters (measured figures in docs/metrics.md).

UDP never blocks nginx: when the agent falls behind, the kernel drops datagrams. The drops are
read from /proc/net/udp for this socket and exported as `result="dropped"`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
from bisect import bisect_left
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.core.routes import Route, RouteTable

log = logging.getLogger("agent.gateway.traffic")

TAG = "gateway"  # syslog tag nginx puts before the record
FORMAT_MARKER = "g1"  # changes when the record's fields change
# The log_format of the template, for reference and for the test that keeps the two in step.
LOG_FORMAT = (f"{FORMAT_MARKER}|$document_root|$status|$request_time|$upstream_response_time|"
              "$upstream_status|$upstream_header_time|$bytes_sent|$request_length")
UNROUTED = "unrouted"
ROUTE_ROOT = "/gateway-route/"
UNROUTED_ROOT = "/gateway-unrouted"
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
RESULTS = ("ok", "malformed", "unknown_route", "dropped")
# nginx measures in milliseconds; loopback answers in well under one.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0)
RECEIVE_BUFFER = 8 * 1024 * 1024  # asked for; the kernel caps it at net.core.rmem_max
_BATCH = 1024  # datagrams read per wakeup before the event loop gets a turn
PAUSE_MAX = 0.005  # seconds the reader rests after draining the queue
_TRUESIZE = 1024  # bytes of receive buffer one record takes (measured: about 830)
_DESIGN_RATE = 100_000  # records/s the pause is sized for
_MAX_DATAGRAM = 2048
_MARKER = f" {TAG}: {FORMAT_MARKER}|".encode()
_FIELDS = 8
_CLASS_INDEX = {b"1": 0, b"2": 1, b"3": 2, b"4": 3, b"5": 4}
_MAX_SECONDS = 1e7
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; not in typeshed


def route_label(route: Route) -> str:
    """The `route` label: first host and path prefix, e.g. `managerhttp/`, `a.example.com/api`."""
    return route.hosts[0] + route.path


def route_root(route: Route) -> str:
    """The `root` the template gives the route's locations, to name the route in its records."""
    return ROUTE_ROOT + route_label(route)


def _logged_root(root: str) -> bytes:
    """$document_root as nginx logs it: without the trailing '/' that `root` drops."""
    return root.removesuffix("/").encode()


def _try_list(value: bytes) -> list[bytes]:
    """nginx separates tries with ", " and upstream groups (internal redirects) with " : "."""
    return value.replace(b" : ", b", ").split(b", ")


class _Route:
    """What one route's records add up to. Plain attributes: this is the hot path."""

    __slots__ = ("bytes_in", "bytes_out", "classes", "duration", "duration_sum", "errors",
                 "retries", "upstream", "upstream_sum")

    def __init__(self) -> None:
        self.classes = [0] * len(STATUS_CLASSES)
        self.duration = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf
        self.duration_sum = 0.0
        self.upstream = [0] * (len(DURATION_BUCKETS) + 1)
        self.upstream_sum = 0.0
        self.retries = 0
        self.errors = 0
        self.bytes_in = 0
        self.bytes_out = 0

    def add(self, f: list[bytes]) -> None:
        """Count one record's fields (after the route); ValueError if any does not parse.

        Everything is parsed before anything is counted, so a bad record changes nothing.
        """
        status = f[1]
        if len(status) != 3 or not status.isdigit():
            raise ValueError("status")
        klass = _CLASS_INDEX.get(status[:1], -1)
        seconds = float(f[2])
        sent, received = int(f[6]), int(f[7])
        if klass < 0 or not 0.0 <= seconds < _MAX_SECONDS or sent < 0 or received < 0:
            raise ValueError("range")
        upstream_times = f[3]
        upstream = -1.0
        tries = errors = 0
        if upstream_times != b"-":
            if b"," in upstream_times or b":" in upstream_times:
                times = _try_list(upstream_times)
                upstream = math.fsum(float(t) for t in times if t != b"-")
                tries = len(times)
                errors = _try_list(f[5]).count(b"-")
            else:
                upstream = float(upstream_times)
                tries = 1
                errors = 1 if f[5] == b"-" else 0
            if not 0.0 <= upstream < _MAX_SECONDS:
                raise ValueError("range")
        self.classes[klass] += 1
        self.duration[bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.duration_sum += seconds
        self.bytes_out += sent
        self.bytes_in += received
        if tries:
            self.upstream[bisect_left(DURATION_BUCKETS, upstream)] += 1
            self.upstream_sum += upstream
            self.retries += tries - 1
            self.errors += errors


def _buckets(counts: list[int]) -> list[tuple[str, float]]:
    out, total = [], 0
    for bound, count in zip((*DURATION_BUCKETS, math.inf), counts, strict=True):
        total += count
        out.append(("+Inf" if bound == math.inf else repr(bound), float(total)))
    return out


class Traffic(Collector):
    """Per-route request metrics, fed one datagram at a time, exported when scraped.

    It exports nothing until `follow()` is called, so a gateway with the feature off shows no
    empty per-route series.
    """

    def __init__(self) -> None:
        self._routes: dict[bytes, _Route] = {}
        self._labels: dict[bytes, str] = {}
        self._source: Callable[[], RouteTable] | None = None
        self._table: RouteTable | None = None
        self.results = dict.fromkeys(RESULTS, 0)
        self.dropped: Callable[[], int | None] = lambda: None

    def follow(self, routes: Callable[[], RouteTable]) -> None:
        """Take the route labels from `routes()` (the routes in use), checked on each batch."""
        self._source = routes
        self.sync()

    def sync(self) -> None:
        """Match the series to the routes in use: new routes start at 0, removed ones go."""
        if self._source is None:
            return
        table = self._source()
        if table is self._table:
            return
        self._table = table
        keep = {_logged_root(route_root(r)): route_label(r) for r in table.routes}
        keep[_logged_root(UNROUTED_ROOT)] = UNROUTED
        keep = dict(sorted(keep.items(), key=lambda kv: kv[1]))
        self._routes = {key: self._routes.get(key) or _Route() for key in keep}
        self._labels = keep

    def feed(self, data: bytes) -> None:
        """Count one datagram from nginx."""
        _, found, record = data.partition(_MARKER)
        fields = record.split(b"|")
        if not found or len(fields) != _FIELDS:
            self.results["malformed"] += 1
            return
        stats = self._routes.get(fields[0])
        if stats is None:
            self.results["unknown_route"] += 1
            return
        try:
            stats.add(fields)
        except (ValueError, OverflowError):
            self.results["malformed"] += 1
            return
        self.results["ok"] += 1

    def totals(self) -> dict[str, dict[str, int]] | None:
        """For /status (the dashboard): per route label, requests by status class and upstream
        errors so far; None while the feature is off. Rates are differences of two of these."""
        if self._source is None:
            return None
        self.sync()
        return {self._labels[key]: {**dict(zip(STATUS_CLASSES, stats.classes, strict=True)),
                                    "upstream_errors": stats.errors}
                for key, stats in self._routes.items()}

    def collect(self) -> Iterator[Metric]:
        if self._source is None:
            return
        self.sync()
        requests = CounterMetricFamily(
            "gateway_http_requests", "Requests by route and status class, from nginx's access "
            "log (route: first host + path prefix, or 'unrouted')", labels=["route",
                                                                            "status_class"])
        duration = HistogramMetricFamily(
            "gateway_http_request_duration_seconds", "Time nginx took for a request, from the "
            "first byte read from the client to the last byte sent ($request_time)",
            labels=["route"])
        upstream = HistogramMetricFamily(
            "gateway_upstream_response_duration_seconds", "Time spent on upstream servers for "
            "a request that reached one, all tries added up ($upstream_response_time)",
            labels=["route"])
        retries = CounterMetricFamily(
            "gateway_upstream_retries", "Tries on another upstream server after the first "
            "(proxy_next_upstream)", labels=["route"])
        errors = CounterMetricFamily(
            "gateway_upstream_errors", "Upstream tries that got no response header (refused, "
            "reset, timed out)", labels=["route"])
        bytes_in = CounterMetricFamily(
            "gateway_http_request_bytes", "Bytes received from clients: request line, headers "
            "and body ($request_length)", labels=["route"])
        bytes_out = CounterMetricFamily(
            "gateway_http_response_bytes", "Bytes sent to clients, headers included "
            "($bytes_sent)", labels=["route"])
        for key, stats in self._routes.items():
            route = self._labels[key]
            for klass, count in zip(STATUS_CLASSES, stats.classes, strict=True):
                requests.add_metric([route, klass], count)
            duration.add_metric([route], _buckets(stats.duration), stats.duration_sum)
            upstream.add_metric([route], _buckets(stats.upstream), stats.upstream_sum)
            retries.add_metric([route], stats.retries)
            errors.add_metric([route], stats.errors)
            bytes_in.add_metric([route], stats.bytes_in)
            bytes_out.add_metric([route], stats.bytes_out)
        yield from (requests, duration, upstream, retries, errors, bytes_in, bytes_out)
        records = CounterMetricFamily(
            "gateway_access_log_records", "Access-log records by result: ok (counted), "
            "malformed, unknown_route (names no route in use), dropped (lost in the kernel: "
            "the agent's receive buffer was full)", labels=["result"])
        dropped = self.dropped()
        for result, count in self.results.items():
            value = dropped if result == "dropped" else count
            if value is not None:
                records.add_metric([result], value)
        yield records


def bind(host: str, port: int) -> socket.socket:
    """The UDP socket nginx sends records to (port 0: any free port), non-blocking."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        with contextlib.suppress(OSError):  # needs CAP_NET_ADMIN; then rmem_max applies
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, RECEIVE_BUFFER)
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < RECEIVE_BUFFER:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def address(sock: socket.socket) -> str:
    """HOST:PORT as nginx's `syslog:server=` wants it."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


def kernel_drops(sock: socket.socket, proc: Path = Path("/proc/net")) -> int | None:
    """Datagrams the kernel dropped for this socket (its receive queue was full), or None."""
    inode = str(os.fstat(sock.fileno()).st_ino)
    table = proc / ("udp6" if sock.family == socket.AF_INET6 else "udp")
    try:
        with table.open(encoding="ascii") as f:
            next(f, None)  # the header line
            for line in f:
                parts = line.split()
                if len(parts) >= 13 and parts[9] == inode:
                    return int(parts[12])
    except (OSError, ValueError):
        return None
    return None


class Receiver:
    """Reads datagrams on the event loop and feeds them to `traffic`.

    A wakeup drains what is queued (up to _BATCH datagrams), one `recv` each with no event-loop
    round trip between them, then the reader rests for `pause` seconds before it listens again,
    so that records pile up in the socket's queue and the next wakeup takes many at once. Waking
    the agent for each record costs more than the record itself, on both sides: nginx pays for
    the wakeup in its `send`. The pause is a fraction of the time the queue takes to fill at
    100,000 records/s, so it cannot cause drops below that rate.
    """

    def __init__(self, sock: socket.socket, traffic: Traffic) -> None:
        self.sock = sock
        self.traffic = traffic
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resting: asyncio.TimerHandle | None = None
        buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.pause = min(PAUSE_MAX, buffer / _TRUESIZE / 4 / _DESIGN_RATE)
        traffic.dropped = lambda: kernel_drops(sock)

    @property
    def address(self) -> str:
        return address(self.sock)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)
        log.info("access_log_listening address=%s receive_buffer=%d pause_ms=%.2f", self.address,
                 self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), self.pause * 1000)

    def close(self) -> None:
        if self._resting is not None:
            self._resting.cancel()
            self._resting = None
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        self.sock.close()

    def _listen(self) -> None:
        self._resting = None
        if self._loop is not None:
            self._loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        traffic = self.traffic
        traffic.sync()
        recv, feed = self.sock.recv, traffic.feed
        for _ in range(_BATCH):
            try:
                data = recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # nothing a retry would fix; carry on with the next wakeup
                log.warning("access_log_receive_failed error=%r", str(exc))
                break
            feed(data)
        else:
            return  # more is queued: read on at the loop's next turn
        if self.pause > 0 and self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._resting = self._loop.call_later(self.pause, self._listen)
