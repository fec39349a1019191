"""Every metric the agent exports, on one private registry (never the global default)."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.gateway.observe.certs import TlsCollector
from agent.gateway.observe.traffic import Traffic

_DNS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_CYCLE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class StubStatus:
    """nginx's stub_status page, parsed."""

    active: int
    accepted: int
    handled: int
    requests: int
    reading: int
    writing: int
    waiting: int

    @classmethod
    def parse(cls, text: str) -> StubStatus:
        lines = text.split("\n")
        try:
            active = int(lines[0].split(":")[1])
            accepted, handled, requests = (int(v) for v in lines[2].split())
            parts = lines[3].split()
            reading, writing, waiting = int(parts[1]), int(parts[3]), int(parts[5])
        except (IndexError, ValueError) as exc:
            raise ValueError(f"unexpected stub_status page: {text[:200]!r}") from exc
        return cls(active, accepted, handled, requests, reading, writing, waiting)


class StubStatusCollector(Collector):
    """nginx's counters, named as nginx-prometheus-exporter names them."""

    def __init__(self) -> None:
        self.last: StubStatus | None = None

    def collect(self) -> Iterator[Metric]:
        s = self.last
        if s is None:
            return
        yield CounterMetricFamily("nginx_connections_accepted", "Accepted client connections",
                                  value=s.accepted)
        yield CounterMetricFamily("nginx_connections_handled", "Handled client connections",
                                  value=s.handled)
        yield CounterMetricFamily("nginx_http_requests", "Total http requests", value=s.requests)
        for name, value, text in (
            ("active", s.active, "Active client connections"),
            ("reading", s.reading, "Connections where nginx is reading the request header"),
            ("writing", s.writing, "Connections where nginx is writing the response"),
            ("waiting", s.waiting, "Idle client connections"),
        ):
            yield GaugeMetricFamily(f"nginx_connections_{name}", text, value=value)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.reloads = Counter("gateway_reloads", "nginx reloads by result (success, failure)",
                               ["result"], registry=r)
        self.endpoint_changes = Counter(
            "gateway_endpoint_changes_followed",
            "Changes of tasks that nginx followed by itself (upstream resolve), without a reload",
            registry=r)
        self.apply_failures = Counter(
            "gateway_apply_failures", "Failed applies by the stage that failed "
            "(write, validate, reload, verify)", ["stage"], registry=r)
        self.last_reload_success = Gauge(
            "gateway_config_last_reload_success_timestamp_seconds",
            "When nginx last loaded a new configuration successfully", registry=r)
        self.last_reload_successful = Gauge(
            "gateway_config_last_reload_successful",
            "1 if the last attempt to apply a configuration succeeded", registry=r)
        self.nginx_up = Gauge("gateway_nginx_up", "1 while the managed nginx master runs",
                              registry=r)
        self.endpoints = Gauge("gateway_upstream_endpoints",
                               "Task addresses known for each service", ["service"], registry=r)
        self._endpoints_set: dict[str, tuple[int, bool]] = {}  # what the gauges say now
        self.endpoints_stale = Gauge(
            "gateway_upstream_endpoints_stale",
            "1 when the last lookup for the service failed and its last known tasks are used",
            ["service"], registry=r)
        self.dns_lookups = Counter(
            "gateway_dns_lookups", "DNS lookups by result "
            "(ok, nxdomain, nodata, timeout, servfail, refused, error)", ["result"], registry=r)
        self.admin_unauthorized = Counter(
            "gateway_admin_unauthorized_requests", "Requests to /status or /metrics refused "
            "for a missing or wrong token (--admin-token-file)", registry=r)
        self.dns_refused = Counter(
            "gateway_dns_refused_addresses", "Addresses in answers for tasks.<service> that "
            "are not of --task-networks, refused, by result (loopback, link_local, public, "
            "outside: another private network)", ["result"], registry=r)
        self.dns_duration = Histogram("gateway_dns_lookup_duration_seconds",
                                      "Duration of one DNS lookup", buckets=_DNS_BUCKETS,
                                      registry=r)
        self.reconcile_duration = Histogram(
            "gateway_reconcile_duration_seconds",
            "Duration of one discover-render-apply cycle", buckets=_CYCLE_BUCKETS, registry=r)
        self.cycles = Counter("gateway_reconcile_cycles", "Reconcile cycles by result "
                              "(ok, error)", ["result"], registry=r)
        self.routes = Gauge("gateway_routes", "Routes being served, HTTP and TCP",
                            registry=r)
        self.routes_loads = Counter(
            "gateway_routes_loads", "Loads of a changed routes file by result "
            "(success, invalid)", ["result"], registry=r)
        self.stub_status = StubStatusCollector()
        r.register(self.stub_status)
        # Per-route request metrics from nginx's access log (gateway_http_*, gateway_upstream_*
        # by route, gateway_access_log_records_total): defined in observe/traffic.py beside the
        # parser, exported once the daemon turns the feature on; the per-route http families
        # are written by exposition() (the registry has the rest).
        self.traffic = Traffic()
        r.register(self.traffic)
        self.json_log_bytes = Counter(  # --access-log stdout (drivers/logfile.py Relay)
            "gateway_json_log_bytes", "Bytes of JSON access-log lines the agent copied to its "
            "standard output, by result (written, dropped: the output refused them)",
            ["result"], registry=r)
        for result in ("written", "dropped"):
            self.json_log_bytes.labels(result)
        self.trace_spans = Counter(  # --otlp-endpoint (observe/spans.py)
            "gateway_trace_spans", "Sampled requests' spans by result (exported, failed, "
            "dropped, malformed)", ["result"], registry=r)
        for result in ("exported", "failed", "dropped", "malformed"):
            self.trace_spans.labels(result)
        # The agent's own CPU and memory (process_cpu_seconds_total, ...): what the access-log
        # metrics cost shows here.
        ProcessCollector(registry=r)
        # gateway_tls_certificate_expiry_timestamp_seconds{host} and
        # gateway_tls_certificate_valid{host}: defined in agent/tls.py, set by each cycle.
        self.tls = TlsCollector()
        r.register(self.tls)
        # Make the labelled series exist from the start, so a rate() has a zero to start from.
        for result in ("success", "failure"):
            self.reloads.labels(result)
        for stage in ("write", "validate", "reload", "verify"):
            self.apply_failures.labels(stage)
        for result in ("ok", "nxdomain", "nodata", "timeout", "servfail", "refused", "error"):
            self.dns_lookups.labels(result)
        for result in ("loopback", "link_local", "public", "outside"):
            self.dns_refused.labels(result)
        for result in ("ok", "error"):
            self.cycles.labels(result)
        for result in ("success", "invalid"):
            self.routes_loads.labels(result)

    def set_endpoints(self, counts: Mapping[str, tuple[int, bool]]) -> None:
        """Set the per-service gauges, dropping services no route names any more. Only what
        changed is written: with a thousand services, rewriting each every cycle was a tenth
        of the agent's idle CPU."""
        last = self._endpoints_set
        for service in last.keys() - counts.keys():
            self.endpoints.remove(service)
            self.endpoints_stale.remove(service)
        for service, (count, stale) in counts.items():
            if last.get(service) != (count, stale):
                self.endpoints.labels(service).set(count)
                self.endpoints_stale.labels(service).set(1 if stale else 0)
        self._endpoints_set = dict(counts)

    def exposition(self, names: Collection[str] = ()) -> bytes:
        """/metrics in Prometheus's text format (0.0.4): the registry as prometheus_client writes
        it, then the per-route http families as traffic.http_text() writes them; only the
        families of `names` (`name[]`) when any is given."""
        return b"".join(self.exposition_chunks(names))

    def exposition_chunks(self, names: Collection[str] = ()) -> Iterator[bytes]:
        """exposition() in parts, the per-route families one at a time (admin.py sends each as
        it comes: at 10,000 routes the whole is 36 MB)."""
        registry = self.registry.restricted_registry(names) if names else self.registry
        yield generate_latest(registry)
        for chunk in self.traffic.http_chunks(names):
            yield chunk.encode()
