"""The JSON access log's options and plan (plan/observe.py): hostile values are refused at the
edge, naming the option, before anything reaches nginx's configuration."""

from __future__ import annotations

import pytest

from agent.core.settings import SettingsError
from agent.gateway.plan.observe import LogPlan, access_log_option, log_plan, sample_ratio
from agent.gateway.settings import GatewaySettings
from tests.unit.gateway.test_settings import parse as settings_from


@pytest.mark.parametrize(("value", "plan"), [
    ("stdout", LogPlan("/dev/stdout")),
    ("STDOUT", LogPlan("/dev/stdout")),
    ("off", LogPlan(None)),
    ("/var/log/gateway/access.json", LogPlan("/var/log/gateway/access.json", buffered=True)),
])
def test_access_log_destinations(value: str, plan: LogPlan) -> None:
    assert log_plan(access_log_option(value)) == plan


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


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan", "x", "inf"])
def test_sample_ratios_outside_0_to_1_are_refused(value: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (float() or the range says why)
        sample_ratio(value)


def test_defaults_log_json_to_stdout_and_trace_nothing() -> None:
    settings = GatewaySettings()
    assert settings.access_log == "stdout"
    assert settings.otlp_endpoint is None
