"""Client certificates and TLS to the tasks, from the routes file and from labels to the
configuration (docs/tls.md): table-driven, data -> configuration; hostile values refused at
their place. End to end: tests/integration/test_edge_tls.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.controller.labels import LabelError, route_from_labels
from agent.core.routes import RoutesError, RouteTable, parse_routes
from agent.gateway.drivers.routefiles import check_ca
from agent.gateway.model import Endpoints, FilesPlan, RouteFile
from agent.gateway.plan.desired import Planner
from tests.support.tlsca import TestCA

CA = Path("/run/gateway/route-files/ca/0123.pem")
FILES = FilesPlan((RouteFile("clients.pem", CA, None, "ca"),
                   RouteFile("tasks.pem", CA, None, "ca")))
SNAPSHOT = {"tasks.app": Endpoints(("10.0.1.3",), "ok")}


def render(*routes: dict[str, Any], files: FilesPlan | None = FILES) -> str:
    planner = Planner(listen="0.0.0.0:80", status_listen="127.0.0.1:9", https_listen="443")
    table = parse_routes({"routes": list(routes)})
    return planner.render(table, SNAPSHOT, files=files).text


def route(**fields: Any) -> dict[str, Any]:
    return {"hosts": ["a.test"], "service": "app", "port": 80, **fields}


@pytest.mark.parametrize(("fields", "present", "absent"), [
    ({"tls": {"client_ca": "clients.pem"}},
     ["if ($ssl_client_verify != SUCCESS)", "return 403"], ["proxy_ssl"]),
    ({"tls": {"client_ca": "clients.pem", "client_verify": "optional"}},
     ["proxy_set_header X-Client-Subject $ssl_client_s_dn;"], ["if ($ssl_client_verify"]),
    ({"upstream_tls": {"ca": "tasks.pem", "server_name": "api.internal"}},
     ["proxy_pass https://service_app_80_tls_", "proxy_ssl_name api.internal;",
      "proxy_ssl_verify on;", f"proxy_ssl_trusted_certificate {CA};"], []),
    ({"upstream_tls": {"verify": False}},
     ["proxy_pass https://", "proxy_ssl_name app;"], ["proxy_ssl_verify"]),
    ({}, ["proxy_pass http://service_app_80;", "proxy_set_header X-Client-Verify"],
     ["proxy_ssl", "if ($ssl_client_verify"]),
])
def test_options_to_configuration(fields: dict[str, Any], present: list[str],
                                  absent: list[str]) -> None:
    text = render(route(**fields))
    for line in present:
        assert line in text
    for line in absent:
        assert line not in text


def test_a_ca_file_never_good_locks_the_route() -> None:
    for fields in ({"tls": {"client_ca": "clients.pem"}},
                   {"upstream_tls": {"ca": "tasks.pem"}}):
        text = render(route(**fields), files=FilesPlan(()))
        assert "503 the CA file of this route cannot be used" in text
        assert "proxy_pass" not in text


def test_routes_of_one_service_with_other_tls_to_it_get_their_own_upstream() -> None:
    text = render(route(upstream_tls={"ca": "tasks.pem", "server_name": "a.internal"}),
                  {**route(upstream_tls={"ca": "tasks.pem", "server_name": "b.internal"}),
                   "hosts": ["b.test"]},
                  {**route(), "hosts": ["c.test"]})
    assert text.count("upstream service_app_80") == 3


@pytest.mark.parametrize(("fields", "place"), [
    ({"tls": {"client_verify": "required"}}, "routes[0].tls"),
    ({"tls": {"client_ca": "../ca.pem"}}, "routes[0].tls.client_ca"),
    ({"tls": {"client_ca": "/etc/ssl/ca.pem"}}, "routes[0].tls.client_ca"),
    ({"tls": {"client_ca": "users.htpasswd"}}, "routes[0].tls.client_ca"),
    ({"tls": {"client_ca": "a;b.pem"}}, "routes[0].tls.client_ca"),
    ({"tls": {"client_ca": "a.pem", "client_verify": "on"}}, "routes[0].tls.client_verify"),
    ({"upstream_tls": True}, "routes[0].upstream_tls"),
    ({"upstream_tls": "yes"}, "routes[0].upstream_tls"),
    ({"upstream_tls": {"ca": "x.pem", "server_name": "a b"}},
     "routes[0].upstream_tls.server_name"),
    ({"upstream_tls": {"ca": "x.pem", "server_name": "a;proxy_pass"}},
     "routes[0].upstream_tls.server_name"),
    ({"upstream_tls": {"verify": "no"}}, "routes[0].upstream_tls.verify"),
    ({"upstream_tls": {"verify": False}, "protocol": "grpc", "tls": True}, "routes[0].protocol"),
    ({"headers": {"request": {"X-Client-Subject": "CN=admin"}}}, "routes[0].headers"),
])
def test_hostile_values_are_refused_at_their_place(fields: dict[str, Any], place: str) -> None:
    with pytest.raises(RoutesError) as exc:
        parse_routes({"routes": [route(**fields)]})
    assert any(e.startswith(place) for e in exc.value.errors), exc.value.errors


def test_labels_carry_the_options() -> None:
    r = route_from_labels("app", {"gateway.hosts": "a.test", "gateway.port": "80",
                                  "gateway.tls.client_ca": "clients.pem",
                                  "gateway.tls.client_verify": "optional",
                                  "gateway.upstream_tls": "tasks.pem",
                                  "gateway.upstream_tls.server_name": "api.internal"})
    assert r is not None
    assert r.tls is not None
    assert r.upstream_tls is not None
    assert (r.tls.client_ca, r.tls.client_mode) == ("clients.pem", "optional")
    assert (r.upstream_tls.ca, r.upstream_tls.server_name, r.upstream_tls.verify) == (
        "tasks.pem", "api.internal", True)
    r = route_from_labels("app", {"gateway.hosts": "a.test", "gateway.port": "80",
                                  "gateway.upstream_tls.verify": "false"})
    assert r is not None
    assert r.upstream_tls is not None
    assert not r.upstream_tls.verify
    with pytest.raises(LabelError, match=r"label gateway\.upstream_tls: .*not a file name"):
        route_from_labels("app", {"gateway.hosts": "a.test", "gateway.port": "80",
                                  "gateway.upstream_tls": "../../etc/ssl/key.pem"})


def test_a_ca_file_holds_ca_certificates_only() -> None:
    ca = TestCA()
    leaf = ca.issue("a.test")
    assert check_ca(ca.root_pem) == []
    assert check_ca(b"") != []
    assert check_ca(b"not pem") == ["not PEM certificates"]
    assert "private key" in check_ca(ca.root_pem + leaf.key_pem)[0]
    assert "not a CA certificate" in check_ca(leaf.leaf_pem)[0]


def test_a_table_is_what_the_file_gives() -> None:  # the conflict rule: one tls per host
    with pytest.raises(RoutesError, match="different 'tls'"):
        parse_routes({"routes": [route(tls={"client_ca": "a.pem"}),
                                 {**route(tls=True), "path": "/x"}]})
    assert isinstance(parse_routes({"routes": [route()]}), RouteTable)
