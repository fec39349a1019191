"""The JSON access log's options and plan (plan/observe.py): hostile values are refused at the
edge, naming the option, before anything reaches nginx's configuration."""

from __future__ import annotations

import pytest

from agent.core.settings import SettingsError
from agent.gateway.plan.observe import LogPlan, access_log_option, log_plan
from agent.gateway.settings import GatewaySettings
from tests.unit.gateway.test_settings import parse as settings_from

RELAYED = "/p/logs/gateway-access.log"  # what the agent copies to its stdout


@pytest.mark.parametrize(("value", "plan"), [
    ("stdout", LogPlan(RELAYED)),
    ("STDOUT", LogPlan(RELAYED)),
    ("off", LogPlan(None)),
    ("/var/log/gateway/access.json", LogPlan("/var/log/gateway/access.json")),
])
def test_access_log_destinations(value: str, plan: LogPlan) -> None:
    """nginx never writes to the agent's stdout itself: a pipe whose reader stalls would block
    its workers (drivers/logfile.py)."""
    assert log_plan(access_log_option(value), RELAYED) == plan


@pytest.mark.parametrize("value", [
    "relative.log", "/var/log/a b.log", "/var/log/a;b", "/var/log/$host", "/var/log/{x}",
    "/var/log/a'b", '/var/log/a"b', "/var/log/a\\b", "/var/log/a#b", "/" + "a" * 1024, "",
    "syslog:server=127.0.0.1", "/var/log/\u00e9",
])
def test_hostile_access_log_values_are_refused_naming_the_option(value: str) -> None:
    with pytest.raises(ValueError, match="stdout, off or an absolute file path"):
        access_log_option(value)
    with pytest.raises(SettingsError, match="--access-log"):
        settings_from(["--access-log", value])


def test_defaults_log_json_to_stdout_and_trace_nothing() -> None:
    settings = GatewaySettings()
    assert settings.access_log == "stdout"


def test_a_traced_metrics_line_counts_and_reaches_the_spans_hook() -> None:
    """The g2 line (LogPlan.trace): the same counts as g1, its trace fields handed on."""
    from agent.core.routes import parse_routes
    from agent.gateway.observe.traffic import Traffic

    table = parse_routes({"routes": [{"hosts": ["a"], "service": "a", "port": 80}]})
    traffic = Traffic()
    traffic.follow(lambda: table)
    got: list[tuple[list[bytes], str]] = []
    traffic.spans = lambda fields, label: got.append((fields, label))
    traffic.feed(b"g2|/gateway-route/a|200|0.002|0.001|200|0.001|10|10|1765000000.123|"
                 + b"a" * 32 + b"|" + b"b" * 16 + b"||GET|10.0.1.7:80|01|rid|a|/x")
    traffic.feed(b"g2|/gateway-route/a|200|0.002")  # cut short: malformed, no span
    assert traffic.totals()["a/"]["2xx"] == 1  # type: ignore[index]
    assert traffic.results["malformed"] == 1
    assert [(f[10], label) for f, label in got] == [(b"a" * 32, "a/")]
