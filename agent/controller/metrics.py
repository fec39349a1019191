"""The controller's metrics, in one private registry (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

_SYNC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.docker_up = Gauge("gateway_controller_docker_up",
                               "1 while Docker answered the last list of services", registry=r)
        self.syncs = Counter("gateway_controller_syncs", "Lists of the services by result "
                             "(ok, error)", ["result"], registry=r)
        self.sync_duration = Histogram("gateway_controller_sync_duration_seconds",
                                       "Duration of one list of the services",
                                       buckets=_SYNC_BUCKETS, registry=r)
        self.last_sync = Gauge("gateway_controller_last_sync_success_timestamp_seconds",
                               "When Docker last answered a list of the services", registry=r)
        self.events = Counter("gateway_controller_docker_events", "Docker service events by "
                              "action (create, update, remove; connected: the stream (re)opened)",
                              ["action"], registry=r)
        self.services = Gauge("gateway_controller_services",
                              "Services with gateway labels (valid or not)", registry=r)
        self.routes = Gauge("gateway_controller_routes", "Routes served", registry=r)
        self.errors = Gauge("gateway_controller_label_errors", "Problems with labels: one per "
                            "bad label, and one per route refused for a host another claims",
                            registry=r)
        self.changes = Counter("gateway_controller_routes_changes",
                               "Times the routes served changed", registry=r)
        self.waiting = Gauge("gateway_controller_waiting_requests",
                             "Gateways waiting for a change (long-polls in progress)", registry=r)
        self.unauthorized = Counter("gateway_controller_unauthorized_requests",
                                    "Requests refused for a missing or wrong token", registry=r)
        self.held = Gauge("gateway_controller_routes_held", "Routes of new services not served "
                          "yet: waiting for the service's first running task", registry=r)
        ProcessCollector(registry=r)
        for result in ("ok", "error"):
            self.syncs.labels(result)
