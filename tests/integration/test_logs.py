"""`--log-format json` from a real `gateway-agent run` (nginx, dnsmasq): every line is one JSON
object, and the fields of each event are JSON fields a log system can query."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.integration.conftest import TASK_ADDRESSES, write_routes
from tests.support import wait_until
from tests.support.gateway import Agent, Dnsmasq, Upstream

T1, T2 = TASK_ADDRESSES[:2]


def events(agent: Agent) -> list[dict[str, Any]]:
    text = agent.log_file.read_text(encoding="utf-8")
    # while the agent runs, the last line may be half written: only whole lines count
    lines = text.split("\n")[:-1]
    docs = []
    for number, line in enumerate(lines, 1):
        try:
            doc = json.loads(line)
        except ValueError as exc:
            raise AssertionError(f"log line {number} is not JSON ({exc}): {line!r}") from None
        assert isinstance(doc, dict), line
        docs.append(doc)
    return docs


def named(agent: Agent, event: str) -> list[dict[str, Any]]:
    return [d for d in events(agent) if d.get("event") == event]


def test_json_logs_carry_each_field(dns: Dnsmasq, tasks: dict[str, Upstream],
                                    upstream_port: int, start_agent: Callable[..., Agent],
                                    ) -> None:
    dns.set("tasks.web", [T1])
    route = {"hosts": ["web.example"], "service": "web", "port": upstream_port}
    agent = start_agent([route], "--log-format", "json")
    assert agent.get("web.example")[0] == 200
    routes_file = agent.workdir / "routes.yaml"

    # a refused routes file: the counts are numbers, the detail one string with its quotes
    routes_file.write_text("routes:\n  - hosts: ['a b']\n    service: web\n    port: 99999\n")
    wait_until(lambda: named(agent, "routes_refused"), 10, "the bad routes file to be refused")
    refused = named(agent, "routes_refused")[0]
    assert refused["level"] == "error"
    assert refused["logger"] == "agent.gateway.reconciler"
    assert refused["file"] == str(routes_file)
    assert refused["keeping"] == 1
    assert isinstance(refused["errors"], int)
    assert refused["errors"] >= 2
    assert "'a b'" in refused["detail"]
    assert agent.get("web.example")[0] == 200, "the routes in use keep serving"

    # a good file with two routes
    write_routes(routes_file, [route, {"hosts": ["other.example"], "service": "web",
                                       "port": upstream_port}])
    wait_until(lambda: named(agent, "routes_loaded"), 10, "the new routes to be loaded")
    loaded = named(agent, "routes_loaded")[-1]
    assert (loaded["level"], loaded["file"], loaded["routes"]) == ("info", str(routes_file), 2)
    assert loaded["msg"] == f"routes_loaded file={routes_file} routes=2"
    wait_until(lambda: agent.get("other.example")[0] == 200, 10, "the new route to serve")

    # a cycle's status: a string field, its duration a number
    dns.set("tasks.web", [T1, T2])
    wait_until(lambda: any("+1 endpoints for tasks.web" in c["status"]
                           for c in named(agent, "cycle")), 10, "the change of tasks")
    cycle = next(c for c in named(agent, "cycle") if "+1 endpoints" in c["status"])
    assert isinstance(cycle["seconds"], float)

    agent.stop()
    docs = events(agent)  # after the stop too: every line, nginx's included, is JSON
    assert {"nginx_started", "serving", "stopped"} <= {d.get("event") for d in docs}
    started = named(agent, "nginx_started")[0]
    assert isinstance(started["pid"], int)
    # the access log goes to stdout too (by default), one line per request with its own fields
    access = [d for d in docs if "request_id" in d]
    assert [d["host"] for d in access if d["status"] == 200][:1] == ["web.example"]
    # the two hosts on one service share a server block (plan/scale.py): each its own route
    assert {(d["host"], d["route"], d["service"]) for d in access if d["status"] == 200} == {
        ("web.example", "web.example/", "web"), ("other.example", "other.example/", "web")}
    assert all({"ts", "level", "logger", "msg"} <= set(d) for d in docs if d not in access)
    # nginx's own lines, relayed: its level and pid as fields
    said = named(agent, "nginx_log")
    assert any(d["nginx_level"] == "notice" and isinstance(d["pid"], int) for d in said)
    assert said[-1]["text"] == "exit", "nginx's lines as it quit are in the log too"
