"""What the gateway shows of its certificates: /status's `tls` and the gateway_tls_* metrics,
both from the plan of the last cycle (model.TlsPlan)."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.gateway.model import TlsPlan


def status(plan: TlsPlan | None) -> dict[str, dict[str, Any]]:
    """For /status: per host, the certificate serving it and the problem, if any."""
    out: dict[str, dict[str, Any]] = {}
    for h in plan.hosts if plan else ():
        out[h.host] = {
            "acme": h.source.acme,
            "certificate": h.source.certificate,
            "key": h.source.key,
            "serving": h.served is not None,
            "serving_certificate": h.served.name if h.served else None,
            "not_after": datetime.datetime.fromtimestamp(
                h.served.not_after, datetime.UTC).isoformat() if h.served else None,
            "names": list(h.served.names) if h.served else [],
            "ocsp_stapling": h.served.stapling if h.served else False,
            "redirect": h.redirect,
            "hsts": h.hsts,
            "error": h.error,
        }
    return out


class TlsCollector(Collector):
    """gateway_tls_* from the plan of the last cycle: one series per host of a `tls` route."""

    def __init__(self) -> None:
        self.plan: TlsPlan | None = None

    def collect(self) -> Iterator[Metric]:
        expiry = GaugeMetricFamily(
            "gateway_tls_certificate_expiry_timestamp_seconds",
            "When the certificate serving the host expires (notAfter), as Unix time",
            labels=["host"])
        valid = GaugeMetricFamily(
            "gateway_tls_certificate_valid",
            "1 when the host's certificate files passed validation and serve; 0 when they "
            "were refused (the host has no HTTPS, or its last good certificate still serves)",
            labels=["host"])
        for h in self.plan.hosts if self.plan else ():
            if h.served is not None:
                expiry.add_metric([h.host], h.served.not_after)
            valid.add_metric([h.host], 0 if h.error else 1)
        yield expiry
        yield valid
