"""The alerting rules, the Grafana dashboard and docs/metrics.md against what is exported."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from agent.controller.acme import AcmeManager, HostState
from agent.controller.acme_client import Client, Issued
from agent.controller.metrics import ControllerMetrics
from agent.core.routes import parse_routes
from agent.core.vrrp import Record
from agent.gateway.observe.metrics import Metrics, StubStatus
from agent.keepalived.notify import RecordsCollector
from tests.support import require_programs

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULES_TESTS = sorted((ROOT / "deploy" / "prometheus").glob("*.test.yml"))
DASHBOARD = ROOT / "deploy" / "grafana" / "swarm-gateway.json"
DOC = ROOT / "docs" / "metrics.md"
# the names a query may use: ours, nginx's (stub_status), the process', keepalived's, `up`
METRIC = re.compile(r"\b(?:gateway|nginx|keepalived|process)_[a-z0-9_]+\b|\bup(?=\{)")


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
            "gauge": ("",), "summary": ("_count", "_sum", "")}


def sample_names(registry: CollectorRegistry) -> set[str]:
    """Every sample name the registry's families can have, with or without children yet."""
    return {family.name + suffix for family in registry.collect()
            for suffix in SUFFIXES.get(family.type, ("",))}


def exposed_names(text: bytes) -> set[str]:
    """The same, read from what /metrics writes (the agent writes its per-route families
    itself, beside the registry); without the `_created` gauges prometheus_client adds to
    each counter and histogram, which the registry's families do not name."""
    return {family.name + suffix for family in text_string_to_metric_families(text.decode())
            if not family.name.endswith("_created")
            for suffix in SUFFIXES.get(family.type, ("",))}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    metrics = Metrics()
    metrics.stub_status.last = StubStatus(1, 2, 3, 4, 5, 6, 7)
    routes = parse_routes({"routes": [{"hosts": ["a"], "service": "a", "port": 1}]})
    metrics.traffic.follow(lambda: routes)
    keepalived = CollectorRegistry()
    keepalived.register(RecordsCollector({("INSTANCE", "gateway"): Record("MASTER", 250.0, 1.0,
                                                                           {"MASTER": 1})}))
    controller = ControllerMetrics()  # with ACME on, and one host with a certificate
    acme = AcmeManager(Client("https://acme.test/directory", tmp_path_factory.mktemp("acme"),
                              None, None, {}), tmp_path_factory.mktemp("state"),
                       controller.registry, renew_before=30 * 86400, retry_min=300)
    acme.want({"a.test": frozenset({None})})
    acme.hosts["a.test"] = HostState(issued=Issued("a.test", "", "", 0.0, 90 * 86400.0))
    return (exposed_names(metrics.exposition()) | sample_names(keepalived) |
            sample_names(controller.registry) | {"up"})


def dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]
    queries += [a["expr"] for a in doc["annotations"]["list"] if "expr" in a]
    return queries


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def as_promql(query: str) -> str:
    """A dashboard query with Grafana's variables replaced, as Prometheus would get it."""
    return query.replace("$__rate_interval", "2m").replace("$job", ".*").replace(
        "$instance", ".*").replace("$route", ".*")


def test_alert_rules_pass_promtool_check_and_their_tests() -> None:
    promtool = require_programs("promtool")["promtool"]
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # every alert has a case, and every case passes
    tested = {name for path in RULES_TESTS
              for name in re.findall(r"alertname: (\w+)", path.read_text())}
    assert {r["alert"] for r in alert_rules()} <= tested
    run = subprocess.run([promtool, "test", "rules", *(p.name for p in RULES_TESTS)],
                         capture_output=True, text=True, cwd=RULES.parent)
    assert run.returncode == 0, run.stdout + run.stderr


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    promtool = require_programs("promtool")["promtool"]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": as_promql(q)}
        for i, q in enumerate(dashboard_queries())]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_dashboard_is_importable() -> None:
    doc = json.loads(DASHBOARD.read_text())
    panels = list(dashboard_panels())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in doc["templating"]["list"]} >= {"datasource", "job", "instance",
                                                              "route"}
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]


def test_dashboard_and_alerts_query_only_metrics_that_exist(exported: set[str]) -> None:
    queries = dashboard_queries() + [r["expr"] for r in alert_rules()]
    used = {name for q in queries for name in METRIC.findall(q)}
    assert "gateway_http_requests_total" in used  # the pattern finds names
    assert used - exported == set(), "queried but not exported"


def test_metrics_doc_lists_every_metric_and_alert(exported: set[str]) -> None:
    text = DOC.read_text()
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in exported} - {"up"}
    missing = sorted(f for f in families if f"`{f}" not in text)
    assert not missing, f"add these to docs/metrics.md: {missing}"
    alerts = sorted(r["alert"] for r in alert_rules() if f"`{r['alert']}`" not in text)
    assert not alerts, f"add these alerts to docs/metrics.md: {alerts}"
