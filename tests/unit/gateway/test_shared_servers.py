"""Hosts routed alike share one server block (plan/scale.py): hosts whose one route is `/`, to
the same service with the same settings, are one server whose location takes each host's root
(the route in the logs) from a map of $host. Anything that tells two hosts apart in nginx keeps
them apart."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from agent.core.routes import RouteTable, parse_routes
from agent.gateway.model import Endpoints, Served
from agent.gateway.plan.desired import Planner
from agent.gateway.plan.edgetls import ClientCerts
from agent.gateway.plan.http import Server
from agent.gateway.plan.http import servers as plan_servers
from agent.gateway.plan.match import conditions
from agent.gateway.plan.scale import share_servers
from agent.gateway.plan.upstreams import http_upstreams
from tests.unit.core.test_hostile import NginxTest

SNAPSHOT = {"tasks.svc": Endpoints(("10.0.0.1",), "ok"),
            "tasks.other": Endpoints(("10.0.0.2",), "ok")}


def render(routes: list[dict[str, object]], access_log: str | None = "/tmp/metrics.log",
           template: Path | None = None) -> str:
    table = RouteTable(parse_routes({"routes": routes}).routes)
    planner = Planner(listen="127.0.0.1:8080", status_listen="127.0.0.1:9181",
                      access_log=access_log, template=template)
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
    NginxTest(tmp_path).check(text)  # and nginx takes it


def test_without_access_logs_hosts_share_a_server_and_no_map_is_written() -> None:
    text = render([{"hosts": [f"h{i}.example"], "service": "svc", "port": 80}
                   for i in range(5)], access_log=None)
    assert list(servers(text)) == [" ".join(f"h{i}.example" for i in range(5))]
    assert "gateway_host_root" not in text
    assert "\n        root " not in text


def two_alike() -> tuple[Server, Server]:
    """The servers of a.example and b.example, one route each to the same service."""
    routes = parse_routes({"routes": [{"hosts": [h], "service": "svc", "port": 80}
                                      for h in ("a.example", "b.example")]}).routes
    a, b = plan_servers(routes, http_upstreams(routes, SNAPSHOT, True, True))
    assert share_servers([a, b])[0].names == ("a.example", "b.example")
    return a, b


def served(name: str) -> Served:
    return Served(digest=name, name=name, chain=Path(f"/certs/{name}.crt"),
                  key=Path(f"/certs/{name}.key"), names=(name,), not_after=0.0,
                  stapling=False, trusted=None)


@pytest.mark.parametrize("differ", ["certificate", "hsts", "acme", "redirect", "client_ca",
                                    "match"])
def test_hosts_that_differ_in_anything_nginx_tells_apart_keep_their_own_servers(
        differ: str) -> None:
    """Two hosts alike but for one thing: their certificate, HSTS, ACME challenges, redirect
    to HTTPS, the CA their clients' certificates are checked against, or a `match`."""
    a, b = two_alike()
    loc = b.locations[0]
    b = {
        "certificate": lambda: dataclasses.replace(b, certificate=served("b.example")),
        "hsts": lambda: dataclasses.replace(b, hsts=31536000),
        "acme": lambda: dataclasses.replace(b, acme=True),
        "redirect": lambda: dataclasses.replace(b, redirect=True),
        "client_ca": lambda: dataclasses.replace(b, locations=(dataclasses.replace(
            loc, client_certs=ClientCerts("required", "/ca/b.pem")),)),
        "match": lambda: dataclasses.replace(b, locations=(dataclasses.replace(
            loc, match=conditions(parse_routes({"routes": [{
                "hosts": ["b.example"], "service": "svc", "port": 80,
                "match": {"methods": ["GET"]}}]}).routes[0].match)),)),
    }[differ]()
    if differ == "certificate":
        a = dataclasses.replace(a, certificate=served("a.example"))
    shared = share_servers([a, b])
    assert [s.names for s in shared] == [("a.example",), ("b.example",)]
    assert all(not s.host_roots for s in shared)


def test_a_template_of_its_own_that_does_not_know_shared_servers_gets_one_per_host(
        tmp_path: Path) -> None:
    """A template written for the servers of one host each (it writes every location's root)
    renders as before; one that says `host_roots` gets the shared servers."""
    body = ("{% for s in servers %}server {{ s.names | join(' ') }}: "
            "{% for loc in s.locations %}{{ loc.root | nginx }}{% endfor %};{% endfor %}")
    routes: list[dict[str, object]] = [{"hosts": [h], "service": "svc", "port": 80}
                                       for h in ("a.example", "b.example")]
    old = tmp_path / "old.conf.j2"
    old.write_text(body)
    assert render(routes, template=old).split(";")[:-1] == [
        "server a.example: /gateway-route/a.example/",
        "server b.example: /gateway-route/b.example/"]
    knows = tmp_path / "knows.conf.j2"
    knows.write_text(body.replace("{{ loc.root | nginx }}",
                                  "{{ (loc.root or s.host_roots | length) | nginx }}"))
    assert render(routes, template=knows).split(";")[:-1] == ["server a.example b.example: 2"]
