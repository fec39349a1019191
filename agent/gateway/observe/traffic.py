"""Per-route traffic metrics from nginx's access log: one compact line per request.

nginx appends the lines to a file (`access_log FILE gateway_metrics buffer=64k flush=1s`, see
the template) and agent/gateway/logfile.py reads what was appended, in bulk. A line looks like:

    g1|/gateway-route/managerhttp|200|0.003|0.002|200|0.002|312|96

a format marker, then ROUTE|STATUS|REQUEST_TIME|UPSTREAM_RESPONSE_TIME|UPSTREAM_STATUS|
UPSTREAM_HEADER_TIME|BYTES_SENT|REQUEST_LENGTH (nginx's own variables; the upstream ones list
every try, "0.000, 0.002", and are "-" when no upstream was asked).

ROUTE is $document_root. No location of the gateway serves files, so the template gives each
route's locations `root /gateway-route/<label>` and each server `root /gateway-unrouted`: a
value fixed in the configuration, known for every request (also one nginx answers before its
rewrite phase, such as a 413), and free to compute.

The `route` label is the route's first host and its path prefix (`managerhttp/`,
`manager.example.com/api`): the routes model refuses two routes with the same host and path, so
it names one route, it is what a user wrote, and it stays the same when routes are reordered.
Requests that no route matched (an unknown Host, a path no route of that host covers, a request
nginx refused before choosing a location) are `unrouted`. Labels come only from the routes in
use: a line naming any other route is counted as `unknown_route` and creates no series, so
cardinality stays at routes x status classes whatever the clients send.

Most lines repeat (same route, status and times to the millisecond), so the reader counts
distinct lines and `feed` counts one line N times: the parsing cost is per distinct line.
Counts are kept in plain Python objects and turned into metric families only when /metrics is
scraped. The agent's /metrics writes the per-route families itself (http_text: each route's
lines kept until its counts change), byte for byte as prometheus_client writes collect()'s
families: at 10,000 routes they are 430,000 lines, which prometheus_client took 3-4 s to build
and write on the agent's event loop.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.core.routes import RouteTable
from agent.gateway.observe.tcptraffic import MARKER as TCP_MARKER
from agent.gateway.observe.tcptraffic import TcpTraffic
from agent.gateway.plan.naming import UNROUTED_ROOT, route_label, route_root

log = logging.getLogger("agent.gateway.traffic")

FORMAT_MARKER = "g1"  # changes when the record's fields change
# The log_format of the template, for reference and for the test that keeps the two in step.
LOG_FORMAT = (f"{FORMAT_MARKER}|$document_root|$status|$request_time|$upstream_response_time|"
              "$upstream_status|$upstream_header_time|$bytes_sent|$request_length")
UNROUTED = "unrouted"
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
RESULTS = ("ok", "malformed", "unknown_route")
# nginx measures in milliseconds; loopback answers in well under one.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0)
_MARKER = FORMAT_MARKER.encode()
_FIELDS = 9  # the marker and the eight fields
# tracing on (--otlp-endpoint): the same fields, then plan/observe.py's TRACE_FIELDS, the
# last of which (the path) may hold a '|' itself
TRACE_MARKER = b"g2"
_TRACE_FIELDS = _FIELDS + 10
_CLASS_INDEX = {b"1": 0, b"2": 1, b"3": 2, b"4": 3, b"5": 4}
_MAX_SECONDS = 1e7


def _logged_root(root: str) -> bytes:
    """$document_root as nginx logs it: without the trailing '/' that `root` drops."""
    return root.removesuffix("/").encode()


def _try_list(value: bytes) -> list[bytes]:
    """nginx separates tries with ", " and upstream groups (internal redirects) with " : "."""
    return value.replace(b" : ", b", ").split(b", ")


class _Route:
    """What one route's records add up to. Plain attributes: this is the hot path."""

    __slots__ = ("bytes_in", "bytes_out", "classes", "duration", "duration_sum", "errors",
                 "retries", "upstream", "upstream_sum", "version")

    def __init__(self) -> None:
        self.version = 0  # counted up with each add(): a route's text is kept while it holds
        self.classes = [0] * len(STATUS_CLASSES)
        self.duration = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf
        self.duration_sum = 0.0
        self.upstream = [0] * (len(DURATION_BUCKETS) + 1)
        self.upstream_sum = 0.0
        self.retries = 0
        self.errors = 0
        self.bytes_in = 0
        self.bytes_out = 0

    def add(self, f: list[bytes], n: int = 1) -> None:
        """Count `n` requests with these fields (from the route on); ValueError if any does
        not parse.

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
        self.version += 1
        self.classes[klass] += n
        self.duration[bisect_left(DURATION_BUCKETS, seconds)] += n
        self.duration_sum += seconds * n
        self.bytes_out += sent * n
        self.bytes_in += received * n
        if tries:
            self.upstream[bisect_left(DURATION_BUCKETS, upstream)] += n
            self.upstream_sum += upstream * n
            self.retries += (tries - 1) * n
            self.errors += errors * n


def _value(x: float) -> str:
    """A sample's value as prometheus_client's text format writes it (floatToGoString, for the
    finite, non-negative values counted here)."""
    text = repr(float(x))
    dot = text.find(".")
    if x > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


_HTTP_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("gateway_http_requests", "counter", "Requests by route and status class, from nginx's "
     "access log (route: first host + path prefix, or 'unrouted')"),
    ("gateway_http_request_duration_seconds", "histogram", "Time nginx took for a request, "
     "from the first byte read from the client to the last byte sent ($request_time)"),
    ("gateway_upstream_response_duration_seconds", "histogram", "Time spent on upstream "
     "servers for a request that reached one, all tries added up ($upstream_response_time)"),
    ("gateway_upstream_retries", "counter", "Tries on another upstream server after the first "
     "(proxy_next_upstream)"),
    ("gateway_upstream_errors", "counter", "Upstream tries that got no response header "
     "(refused, reset, timed out)"),
    ("gateway_http_request_bytes", "counter", "Bytes received from clients: request line, "
     "headers and body ($request_length)"),
    ("gateway_http_response_bytes", "counter", "Bytes sent to clients, headers included "
     "($bytes_sent)"),
)
_LE = (*(repr(b) for b in DURATION_BUCKETS), "+Inf")


def _histogram_text(name: str, route: str, counts: list[int], total_sum: float) -> str:
    lines, total = [], 0
    for le, count in zip(_LE, counts, strict=True):
        total += count
        lines.append(f'{name}_bucket{{le="{le}",{route}}} {_value(total)}\n')
    lines.append(f"{name}_count{{{route}}} {_value(total)}\n")
    lines.append(f"{name}_sum{{{route}}} {_value(total_sum)}\n")
    return "".join(lines)


def _route_text(label: str, stats: _Route) -> tuple[str, ...]:
    """One route's lines of each of the _HTTP_FAMILIES."""
    route = f'route="{_label(label)}"'
    return (
        "".join(f'gateway_http_requests_total{{{route},status_class="{klass}"}} {_value(n)}\n'
                for klass, n in zip(STATUS_CLASSES, stats.classes, strict=True)),
        _histogram_text("gateway_http_request_duration_seconds", route, stats.duration,
                        stats.duration_sum),
        _histogram_text("gateway_upstream_response_duration_seconds", route, stats.upstream,
                        stats.upstream_sum),
        f"gateway_upstream_retries_total{{{route}}} {_value(stats.retries)}\n",
        f"gateway_upstream_errors_total{{{route}}} {_value(stats.errors)}\n",
        f"gateway_http_request_bytes_total{{{route}}} {_value(stats.bytes_in)}\n",
        f"gateway_http_response_bytes_total{{{route}}} {_value(stats.bytes_out)}\n",
    )


_ZERO_LABEL = "\0"  # in no route label: the routes model refuses control characters
_ZERO = _route_text(_ZERO_LABEL, _Route())


class Traffic(Collector):
    """Per-route request metrics, fed access-log lines, exported when scraped.

    It exports nothing until `follow()` is called, so a gateway with the feature off shows no
    empty per-route series. The per-route http families are http_text()'s, which the agent's
    /metrics appends to what prometheus_client writes of collect() (the tcp families and the
    lines' results): written by hand, kept per route, they cost a scrape of 10,000 routes a
    tenth of prometheus_client's time.
    """

    def __init__(self) -> None:
        # a route's lines, by its key: (its version and label when written, the lines)
        self._text: dict[bytes, tuple[tuple[int, str], tuple[str, ...]]] = {}
        self._routes: dict[bytes, _Route] = {}
        self._labels: dict[bytes, str] = {}
        self._source: Callable[[], RouteTable] | None = None
        self._table: RouteTable | None = None
        self.results = dict.fromkeys(RESULTS, 0)
        self.tcp = TcpTraffic()  # the stream context's lines (observe/tcptraffic.py)
        # with tracing on, each `g2` line's fields and route label (observe/spans.py)
        self.spans: Callable[[list[bytes], str], None] | None = None

    def follow(self, routes: Callable[[], RouteTable]) -> None:
        """Take the route labels from `routes()` (the routes in use), checked on each read."""
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
        self.tcp.follow(table.tcp)
        keep = {_logged_root(route_root(r)): route_label(r) for r in table.routes}
        keep[_logged_root(UNROUTED_ROOT)] = UNROUTED
        keep = dict(sorted(keep.items(), key=lambda kv: kv[1]))
        self._routes = {key: self._routes.get(key) or _Route() for key in keep}
        self._labels = keep

    def take(self, lines: bytes) -> None:
        """Count whole access-log lines (drivers/logfile.py): each distinct line once."""
        feed = self.feed
        for line, n in Counter(lines.split(b"\n")).items():
            if line:
                feed(line, n)

    def unfinished(self) -> None:
        """A line nginx never finished."""
        self.results["malformed"] += 1

    def feed(self, line: bytes, n: int = 1) -> None:
        """Count one access-log line (without its newline) `n` times: `n` requests."""
        fields = line.split(b"|")
        if fields[0] != _MARKER:
            if fields[0] == TCP_MARKER:
                self.results[self.tcp.feed(fields, n)] += n
                return
            if fields[0] == TRACE_MARKER:
                fields = line.split(b"|", _TRACE_FIELDS - 1)
            if fields[0] != TRACE_MARKER or len(fields) != _TRACE_FIELDS:
                self.results["malformed"] += n
                return
            traced, fields = fields, fields[:_FIELDS]
        else:
            traced = None
            if len(fields) != _FIELDS:
                self.results["malformed"] += n
                return
        stats = self._routes.get(fields[1])
        if stats is None:
            self.results["unknown_route"] += n
            return
        try:
            stats.add(fields[1:], n)
        except (ValueError, OverflowError):
            self.results["malformed"] += n
            return
        self.results["ok"] += n
        if traced is not None and self.spans is not None:
            self.spans(traced, self._labels[traced[1]])

    def totals(self) -> dict[str, dict[str, Any]] | None:
        """For /status (the dashboard): per route label, requests by status class and upstream
        errors so far; None while the feature is off. Rates are differences of two of these."""
        if self._source is None:
            return None
        self.sync()
        return {self._labels[key]: {**dict(zip(STATUS_CLASSES, stats.classes, strict=True)),
                                    "upstream_errors": stats.errors,
                                    # per DURATION_BUCKETS (and +Inf), not cumulative: p95
                                    "duration": list(stats.duration)}
                for key, stats in self._routes.items()}

    def status(self) -> dict[str, Any] | None:
        """For /status (the dashboard): `routes` (totals()), `buckets`, the upper bounds of
        their `duration` counts (the last is +Inf), and `tcp`, per tcp route its connections
        and bytes so far; None while the feature is off."""
        routes = self.totals()
        if routes is None:
            return None
        return {"routes": routes, "buckets": list(DURATION_BUCKETS), "tcp": self.tcp.totals()}

    def http_text(self, names: Collection[str] = ()) -> str:
        """The per-route http families in Prometheus's text format (0.0.4), as prometheus_client
        would write them (tests/unit/gateway/test_traffic.py keeps the two the same); only the
        families in `names` (their sample names, as `name[]` takes them) when any is given."""
        return "".join(self.http_chunks(names))

    def http_chunks(self, names: Collection[str] = ()) -> Iterator[str]:
        """http_text() a family at a time: at 10,000 routes the whole is 36 MB, a family 4 MB,
        and /metrics sends each as it is written. A route's lines are kept until its counts
        change; a route with nothing counted gets the zero lines, written for each family."""
        if self._source is None:
            return
        self.sync()
        routes = list(self._routes.items())  # (a routes change replaces the dict, never resizes)
        # each route's kept lines, or for a route with nothing counted yet its label (its zero
        # lines are not kept: at 10,000 routes they would be 36 MB)
        lines: list[tuple[str, ...] | str] = []
        kept = self._text
        counted = 0
        for key, stats in routes:
            if not stats.version:
                lines.append(_label(self._labels[key]))
                continue
            counted += 1
            written = (stats.version, self._labels[key])
            entry = kept.get(key)
            if entry is None or entry[0] != written:
                entry = kept[key] = (written, _route_text(written[1], stats))
            lines.append(entry[1])
        if len(kept) > counted:  # routes gone since: their lines go too
            current = {key for key, _ in routes}
            self._text = {key: entry for key, entry in kept.items() if key in current}
        for i, (name, kind, help_text) in enumerate(_HTTP_FAMILIES):
            exposed = f"{name}_total" if kind == "counter" else name
            if names and not any(n == exposed or n.startswith(f"{name}_") for n in names):
                continue
            zero = _ZERO[i]
            yield "".join([f"# HELP {exposed} {help_text}\n# TYPE {exposed} {kind}\n", *(
                zero.replace(_ZERO_LABEL, line) if isinstance(line, str) else line[i]
                for line in lines)])

    def collect(self) -> Iterator[Metric]:
        if self._source is None:
            return
        self.sync()
        yield from self.tcp.collect()
        records = CounterMetricFamily(
            "gateway_access_log_records", "Access-log lines by result: ok (counted), "
            "malformed, unknown_route (names no route in use)", labels=["result"])
        for result, count in self.results.items():
            records.add_metric([result], count)
        yield records
