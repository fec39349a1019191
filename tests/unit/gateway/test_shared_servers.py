"""Hosts routed alike share one server block (plan/scale.py): hosts whose one route is `/`, to
the same service with the same settings, are one server whose location takes each host's root
(the route in the logs) from a map of $host. Anything that tells two hosts apart in nginx keeps
them apart."""

from __future__ import annotations

import re
from pathlib import Path

from agent.core.routes import RouteTable, parse_routes
from agent.gateway.model import Endpoints
from agent.gateway.plan.desired import Planner

SNAPSHOT = {"tasks.svc": Endpoints(("10.0.0.1",), "ok"),
            "tasks.other": Endpoints(("10.0.0.2",), "ok")}


def render(routes: list[dict[str, object]], access_log: str | None = "/tmp/metrics.log") -> str:
    table = RouteTable(parse_routes({"routes": routes}).routes)
    planner = Planner(listen="127.0.0.1:8080", status_listen="127.0.0.1:9181",
                      access_log=access_log)
    return planner.render(table, SNAPSHOT).text


def servers(text: str) -> dict[str, str]:
    """Each routed server block by its names (the default and status servers left out)."""
    out = {}
    for block in text.split("\nserver {")[1:]:
        names = re.search(r"server_name ([^;]*);", block)
        if names is not None and names.group(1) != "_":
            out[names.group(1)] = block
    return out


def host_map(text: str) -> dict[str, str]:
    found = re.search(r"map \$host \$gateway_host_root \{\n(.*?)\n\}", text, re.S)
    assert found is not None, "no map of the hosts' roots"
    return dict(line.strip().rstrip(";").split(" ", 1) for line in found.group(1).splitlines())


def test_hosts_routed_alike_share_a_server_and_each_keeps_its_route(tmp_path: Path) -> None:
    text = render([
        {"hosts": ["a.example"], "service": "svc", "port": 80},
        {"hosts": ["b.example", "c.example"], "service": "svc", "port": 80},
        {"hosts": ["ws.example"], "service": "svc", "port": 80, "websocket": True},
        {"hosts": ["paths.example"], "service": "svc", "port": 80},
        {"hosts": ["paths.example"], "path": "/api", "service": "svc", "port": 80},
        {"hosts": ["*.wild.example"], "service": "svc", "port": 80},
        {"hosts": ["dotless"], "service": "svc", "port": 80},
        {"hosts": ["o.example"], "service": "other", "port": 80},
        {"hosts": ["p.example"], "service": "svc", "port": 81},
    ])
    found = servers(text)
    assert set(found) == {"a.example b.example c.example", "ws.example", "paths.example",
                          "*.wild.example", "dotless", "o.example", "p.example"}
    shared = found["a.example b.example c.example"]
    assert shared.count("location / {") == 1
    assert "root $gateway_host_root;" in shared
    assert "proxy_pass http://service_svc_80;" in shared
    # each host's route, as nginx's $document_root gives a root written out (no final '/')
    assert host_map(text) == {"default": "/gateway-unrouted",
                              "a.example": "/gateway-route/a.example",
                              "b.example": "/gateway-route/b.example",
                              "c.example": "/gateway-route/b.example"}
    # servers that share with none keep their own root
    assert "root /gateway-route/o.example/;" in found["o.example"]
    assert "root /gateway-route/ws.example/;" in found["ws.example"]
    assert "root /gateway-route/*.wild.example/;" in found["*.wild.example"]
    assert text.count("$gateway_host_root") == 2  # the map, and the one shared location


def test_without_access_logs_hosts_share_a_server_and_no_map_is_written() -> None:
    text = render([{"hosts": [f"h{i}.example"], "service": "svc", "port": 80}
                   for i in range(5)], access_log=None)
    assert list(servers(text)) == [" ".join(f"h{i}.example" for i in range(5))]
    assert "gateway_host_root" not in text
    assert "\n        root " not in text
