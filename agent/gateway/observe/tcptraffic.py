"""Per-route connection metrics of tcp routes, from nginx's stream access log.

The stream context writes one line per connection to the same file as the http context's lines
(see stream.conf.j2), read by the same reader (drivers/logfile.py), which hands the lines
marked `t1` here:

    t1|5432||200|12.034|5120|880|10.0.1.7:5432|0.001

PORT|SNI|STATUS|SESSION_TIME|BYTES_SENT|BYTES_RECEIVED|UPSTREAM_ADDR|UPSTREAM_CONNECT_TIME. The
route is found as nginx found it: by the port, then on an SNI port by the name from the client's
hello (exact, else the longest `*.suffix` that matches). The `route` label is the route's own
label (`:5432`, `:9443 db.example.com`); a connection no route took (a name no route gives, no
TLS hello) counts under `:PORT refused`, per port in use, so that cardinality stays bounded.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from agent.core.tcp import TcpRoute

MARKER = b"t1"
_FIELDS = 9
# a tcp session lasts from a health check's milliseconds to a database connection's hours
SESSION_BUCKETS = (0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0)
STATUSES = ("200", "400", "403", "500", "502", "503")
_MAX_SECONDS = 1e7


class _Route:
    __slots__ = ("bytes_in", "bytes_out", "session", "session_sum", "statuses")

    def __init__(self) -> None:
        self.statuses = dict.fromkeys(STATUSES, 0)
        self.session = [0] * (len(SESSION_BUCKETS) + 1)
        self.session_sum = 0.0
        self.bytes_in = 0
        self.bytes_out = 0

    @property
    def connections(self) -> int:
        return sum(self.statuses.values())


def refused_label(port: int) -> str:
    return f":{port} refused"


class TcpTraffic:
    """Counts per tcp route; `follow(routes)` when the tcp routes in use change."""

    def __init__(self) -> None:
        self._routes: dict[str, _Route] = {}
        self._plain: dict[bytes, str] = {}  # port -> label of a port without SNI
        self._exact: dict[tuple[bytes, str], str] = {}
        self._wild: dict[bytes, list[tuple[str, str]]] = {}  # port -> [(".suffix", label)]
        self._sni_ports: frozenset[bytes] = frozenset()
        self._key: tuple[TcpRoute, ...] | None = None

    def follow(self, routes: Sequence[TcpRoute]) -> None:
        key = tuple(routes)
        if key == self._key:
            return
        self._key = key
        plain: dict[bytes, str] = {}
        exact: dict[tuple[bytes, str], str] = {}
        wild: dict[bytes, list[tuple[str, str]]] = {}
        labels: list[str] = []
        for r in routes:
            port = str(r.listen).encode()
            labels.append(r.label)
            if not r.sni:
                plain[port] = r.label
                continue
            labels.append(refused_label(r.listen))
            for name in r.sni:
                if name.startswith("*."):
                    wild.setdefault(port, []).append((name[1:].lower(), r.label))
                else:
                    exact[(port, name.lower())] = r.label
        for entries in wild.values():
            entries.sort(key=lambda e: -len(e[0]))  # the longest suffix first, as nginx
        self._plain, self._exact, self._wild = plain, exact, wild
        self._sni_ports = frozenset(wild) | {port for port, _ in exact}
        self._routes = {label: self._routes.get(label) or _Route() for label in sorted(labels)}

    def label(self, port: bytes, sni: bytes) -> str | None:
        found = self._plain.get(port)
        if found is not None:
            return found
        if port not in self._sni_ports:
            return None
        name = sni.decode(errors="replace").lower()
        found = self._exact.get((port, name))
        if found is None:
            found = next((label for suffix, label in self._wild.get(port, ())
                          if name.endswith(suffix)), None)
        return found or refused_label(int(port))

    def feed(self, fields: list[bytes], n: int = 1) -> str:
        """Count one line's fields `n` times; the result: ok, malformed or unknown_route."""
        if len(fields) != _FIELDS:
            return "malformed"
        label = self.label(fields[1], fields[2])
        stats = self._routes.get(label) if label is not None else None
        if stats is None:
            return "unknown_route"
        try:
            status = fields[3].decode()
            seconds = float(fields[4])
            sent, received = int(fields[5]), int(fields[6])
        except (ValueError, UnicodeDecodeError):
            return "malformed"
        if status not in stats.statuses or not 0.0 <= seconds < _MAX_SECONDS or sent < 0 \
                or received < 0:
            return "malformed"
        stats.statuses[status] += n
        stats.session[bisect_left(SESSION_BUCKETS, seconds)] += n
        stats.session_sum += seconds * n
        stats.bytes_out += sent * n
        stats.bytes_in += received * n
        return "ok"

    def totals(self) -> dict[str, dict[str, int]]:
        """For /status: per tcp route label, connections (all, and refused or failed: not 200)
        and bytes so far."""
        return {label: {"connections": s.connections,
                        "failed": s.connections - s.statuses["200"],
                        "bytes_in": s.bytes_in, "bytes_out": s.bytes_out}
                for label, s in self._routes.items()}

    def collect(self) -> Iterator[Metric]:
        connections = CounterMetricFamily(
            "gateway_tcp_connections", "Connections of tcp routes by route and nginx's stream "
            "status (200: proxied; 403: client not allowed; 502: no task reached; 400: no TLS "
            "hello on an SNI port)", labels=["route", "status"])
        session = HistogramMetricFamily(
            "gateway_tcp_session_duration_seconds", "How long a connection of a tcp route "
            "lasted ($session_time)", labels=["route"])
        received = CounterMetricFamily(
            "gateway_tcp_received_bytes", "Bytes received from clients of a tcp route",
            labels=["route"])
        sent = CounterMetricFamily(
            "gateway_tcp_sent_bytes", "Bytes sent to clients of a tcp route", labels=["route"])
        for label, s in self._routes.items():
            for status, count in s.statuses.items():
                connections.add_metric([label, status], count)
            total, buckets = 0, []
            for bound, count in zip((*SESSION_BUCKETS, float("inf")), s.session, strict=True):
                total += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
            session.add_metric([label], buckets, s.session_sum)
            received.add_metric([label], s.bytes_in)
            sent.add_metric([label], s.bytes_out)
        yield from (connections, session, received, sent)
