"""Readiness decides where keepalived puts the VIP and when swarm restarts a gateway."""

from __future__ import annotations

from dataclasses import dataclass

from agent.core.routes import parse_routes
from agent.gateway.observe.admin import readiness
from agent.gateway.observe.state import State

ROUTES = parse_routes({"routes": [{"hosts": ["a"], "service": "a", "port": 80}]})


@dataclass
class NginxState:
    running: bool = True
    generation: str | None = "abc"


def ready(state: State, nginx: NginxState, now: float = 1000.0) -> tuple[bool, list[str]]:
    return readiness(state, nginx, now)  # type: ignore[arg-type]  # the two fields it reads


def test_ready_when_nginx_serves_an_applied_configuration_and_dns_answered() -> None:
    assert ready(State(routes=ROUTES, last_discovery_ok=999.0), NginxState()) == (True, [])


def test_a_long_dns_outage_does_not_make_the_gateway_unready() -> None:
    ok, problems = ready(State(routes=ROUTES, last_discovery_ok=10.0), NginxState(), now=5000.0)
    assert ok, problems


def test_unready_until_something_can_be_served() -> None:
    ok, problems = ready(State(routes=ROUTES), NginxState(running=False, generation=None))
    assert not ok
    assert problems == ["nginx is not running", "no configuration applied yet",
                        "discovery has not answered yet"]
    assert ready(State(routes=ROUTES, serving_saved=True), NginxState()) == (True, [])

