"""cors through the real nginx: preflights answered at the gateway, the allowed origin echoed on
answers, others given no Access-Control-Allow-Origin."""

from __future__ import annotations

from collections.abc import Callable

from tests.integration.conftest import TASK_ADDRESSES
from tests.support.gateway import Agent, Dnsmasq, Upstream, http_get

T1 = TASK_ADDRESSES[0]
StartAgent = Callable[..., Agent]
APP = "https://app.example.com"


def test_cors_answers_preflights_and_names_only_allowed_origins(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.web", [T1])
    agent = start_agent([
        {"hosts": ["api"], "service": "web", "port": upstream_port,
         "cors": {"origins": [APP], "methods": ["GET", "PUT"], "headers": ["X-Token"],
                  "credentials": True, "max_age": "1h"}},
        {"hosts": ["public"], "service": "web", "port": upstream_port, "cors": "*"},
    ])
    hits = tasks["task1"].server.hits
    preflight = {"Origin": APP, "Access-Control-Request-Method": "PUT",
                 "Access-Control-Request-Headers": "x-token"}
    status, _, headers = http_get(agent.port, "api", "/items", method="OPTIONS",
                                  headers=preflight)
    assert status == 204
    assert headers["access-control-allow-origin"] == APP
    assert headers["access-control-allow-methods"] == "GET, PUT"
    assert headers["access-control-allow-headers"] == "X-Token"
    assert headers["access-control-allow-credentials"] == "true"
    assert headers["access-control-max-age"] == "3600"
    assert tasks["task1"].server.hits == hits  # answered at the gateway
    # another origin: no Access-Control-Allow-Origin, so a browser refuses
    status, _, headers = http_get(agent.port, "api", "/items", method="OPTIONS",
                                  headers={**preflight, "Origin": "https://evil.example"})
    assert status == 204
    assert "access-control-allow-origin" not in headers
    # a simple request: the task answers, the allowed origin is named, Vary: Origin
    status, body, headers = http_get(agent.port, "api", headers={"Origin": APP})
    assert (status, body) == (200, "task1")
    assert headers["access-control-allow-origin"] == APP
    assert "Origin" in headers["vary"]
    status, _, headers = http_get(agent.port, "api", headers={"Origin": "https://evil.example"})
    assert status == 200
    assert "access-control-allow-origin" not in headers
    # any origin: '*', and never with credentials
    status, _, headers = http_get(agent.port, "public", headers={"Origin": "https://x.example"})
    assert headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in headers
