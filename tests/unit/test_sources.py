"""Merging the routes file with the controller's routes, and checking what the controller sends."""

from __future__ import annotations

from typing import Any

import pytest

from agent.routes import Route, parse_routes
from agent.sources import FILE_SOURCE, merge, parse_document, route_item


def route(hosts: list[str], service: str = "svc", **extra: Any) -> Route:
    (r,) = parse_routes({"routes": [{"hosts": hosts, "service": service, "port": 80,
                                     **extra}]}).routes
    return r


def test_a_host_and_path_claimed_twice_refuses_the_later_route_only() -> None:
    merged = merge([
        (FILE_SOURCE, route(["shop.example.com", "www.example.com"], "shop")),
        ("service a_api", route(["api.example.com"], "a_api")),
        ("service b_thief", route(["other.example.com", "www.example.com"], "b_thief")),
        ("service c_api2", route(["api.example.com"], "c_api2", path="/v2")),  # another path
    ])
    assert merged.sources == (FILE_SOURCE, "service a_api", "service c_api2")
    assert [r.service for r in merged.table.routes] == ["shop", "a_api", "c_api2"]
    # refused whole: its other host is not served either, so it cannot half-work unnoticed
    assert merged.errors == ("service b_thief: not routed: 'www.example.com' with path '/' is "
                             "already routed by routes file",)
    assert [r.service for r in merged.refused] == ["b_thief"]


def test_every_conflict_of_a_route_is_named() -> None:
    merged = merge([
        ("service one", route(["a.example.com"], "one")),
        ("service two", route(["b.example.com"], "two", tls=True)),
        ("service three", route(["a.example.com", "b.example.com"], "three", path="/x")),
    ])
    assert merged.errors == ("service three: not routed: 'b.example.com' is also routed by "
                             "service two with a different 'tls'",)
    merged = merge([
        ("service one", route(["a.example.com"], "one")),
        ("service two", route(["b.example.com"], "two")),
        ("service three", route(["b.example.com", "a.example.com"], "three")),
    ])
    assert merged.errors == ("service three: not routed: 'b.example.com' with path '/' is "
                             "already routed by service two; 'a.example.com' with path '/' is "
                             "already routed by service one",)


def test_nothing_to_merge() -> None:
    merged = merge([])
    assert (merged.table.routes, merged.errors) == ((), ())


def doc(*items: dict[str, Any], errors: list[Any] | None = None) -> dict[str, Any]:
    return {"version": "v1", "routes": list(items), "errors": errors or []}


def test_routes_from_the_controller_are_validated_again_one_by_one() -> None:
    good = route(["a.example.com"], "good")
    received = parse_document(doc(
        route_item("service good", good),
        {"source": "service evil", "route": {"hosts": ["a;b"], "service": "evil", "port": 80}},
        {"source": "service nested", "route": {"hosts": ["b.example.com"], "service": "x",
                                               "port": 80, "extra": "field"}},
        {"source": "service \n injected", "route": None},
        errors=["service broken: label gateway.port: 'x'", 42, "new\nline"]))
    assert received.version == "v1"
    assert received.routes == (("service good", good),)
    assert received.errors == (
        "service broken: label gateway.port: 'x'",
        "new\\nline",
        "service evil: refused by the gateway: route.hosts[0]: 'a;b' is not a valid host name "
        "(letters, digits, '-', '_', dots; a wildcard only as a leading '*.'); route.hosts: "
        "['a;b']: Tuple should have at least 1 item after validation, not 0",
        "service nested: refused by the gateway: route.extra: unknown field",
        "controller routes[3]: refused by the gateway: route: Input should be a valid dictionary "
        "or instance of Route",
    )


def test_a_route_survives_the_trip_through_json_unchanged() -> None:
    r = route(["a.example.com", "*.b.example.com"], "svc", path="/api", zone="dmz",
              balance="ip_hash", connect_timeout="250ms", read_timeout="1h",
              max_body_size="0", websocket=True, tls={"certificate": "a.crt", "hsts": True})
    assert parse_document(doc(route_item("service svc", r))).routes == (("service svc", r),)


@pytest.mark.parametrize("bad", [
    [], "text", {"routes": []}, {"version": 3, "routes": []}, {"version": "x\ny", "routes": []},
    {"version": "v", "routes": {}}, {"version": "v", "routes": [], "errors": "none"}])
def test_a_document_that_is_not_one_is_refused_whole(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"'version'|'routes'|JSON object"):
        parse_document(bad)
