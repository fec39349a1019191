"""Reading the agent's admin server: /metrics through prometheus_client's parser, /status."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.gateways import Gateway
from bench.procs import BenchError, http_get

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _admin(gw: Gateway) -> tuple[str, int]:
    if gw.admin is None:
        raise BenchError(f"{gw.name} has no admin server")
    return gw.admin


def metrics(gw: Gateway) -> Samples:
    status, text = http_get(*_admin(gw), "/metrics", timeout=10)
    if status != 200:
        raise BenchError(f"{gw.name} /metrics answered {status}")
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def reloads(samples: Samples) -> dict[str, float]:
    return {r: value(samples, "gateway_reloads_total", result=r) for r in ("success", "failure")}


def status(gw: Gateway) -> dict[str, Any]:
    code, text = http_get(*_admin(gw), "/status", timeout=10)
    if code != 200:
        raise BenchError(f"{gw.name} /status answered {code}")
    doc: dict[str, Any] = json.loads(text)
    return doc
