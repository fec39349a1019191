"""What a route may ask of nginx beyond where to send traffic: the model, its labels, its text.

Each option is checked three ways here: the routes file and the labels refuse the same bad values
with the same place, and a route renders the option's directives only when it asks for it. The
integration tests (tests/integration/test_route_features.py) show what a client notices.
"""

from __future__ import annotations

import re

import pytest

from agent.discovery import Endpoints
from agent.labels import LabelError, route_from_labels
from agent.render import Renderer
from agent.routes import Route, RoutesError, RouteTable, parse_routes

BASE: dict[str, object] = {"hosts": ["a.example.com"], "service": "svc", "port": 80}
LABELS = {"gateway.hosts": "a.example.com", "gateway.port": "80"}
SNAPSHOT = {"tasks.svc": Endpoints(("10.0.0.1",), "ok")}


def route(**fields: object) -> Route:
    (parsed,) = parse_routes({"routes": [{**BASE, **fields}]}).routes
    return parsed


def errors(**fields: object) -> list[str]:
    with pytest.raises(RoutesError) as info:
        parse_routes({"routes": [{**BASE, **fields}]})
    return info.value.errors


def label_errors(**labels: str) -> list[str]:
    with pytest.raises(LabelError) as info:
        route_from_labels("svc", {**LABELS, **{f"gateway.{k}": v for k, v in labels.items()}})
    return info.value.errors


def rendered(*routes: Route, trusted: tuple[str, ...] = ()) -> str:
    renderer = Renderer(listen="0.0.0.0:8080", status_listen="127.0.0.1:9181",
                        trusted_proxies=trusted)
    return renderer.render(RouteTable(routes), SNAPSHOT).text


def location(text: str, path: str = "/") -> str:
    m = re.search(r"\n    location " + re.escape(path) + r" \{\n(.*?)\n    \}", text, re.S)
    assert m is not None, text
    return m.group(1)


# -- allow -----------------------------------------------------------------------------------------


def test_allow_takes_addresses_and_networks_as_written_canonically() -> None:
    assert route(allow=["10.0.0.0/8", "192.0.2.7", "2001:DB8::/32"]).allow == (
        "10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32")
    assert route(allow="10.1.0.0/16").allow == ("10.1.0.0/16",)  # one network, not a list
    assert route().allow is None


@pytest.mark.parametrize(("value", "place", "message"), [
    (["10.0.0.0/8", "10.0.0.1/8"], "routes[0].allow[1]", "bits set beyond its prefix length: "
                                                        "write '10.0.0.0/8'"),
    (["10.0.0.0/33"], "routes[0].allow[0]", "is not an IP address or network"),
    (["10.0.0.0/8; allow all"], "routes[0].allow[0]", "is not an IP address or network"),
    (["all"], "routes[0].allow[0]", "is not an IP address or network"),
    (["fe80::1%eth0"], "routes[0].allow[0]", "with a scope"),
    ([8], "routes[0].allow[0]", "is not an address or network"),
    ([], "routes[0].allow", "would refuse every client"),
])
def test_allow_refuses_with_the_place(value: object, place: str, message: str) -> None:
    (error,) = errors(allow=value)
    assert error.startswith(place + ": "), error
    assert message in error


def test_allow_as_a_label_is_a_comma_separated_list_with_the_same_rules() -> None:
    labelled = route_from_labels("svc", {**LABELS, "gateway.allow": "10.0.0.0/8, 192.0.2.7"})
    assert labelled is not None
    assert labelled.allow == ("10.0.0.0/8", "192.0.2.7/32")
    assert label_errors(allow="10.0.0.0/8,10.0.0.1/8") == [
        "service svc: label gateway.allow[1]: '10.0.0.1/8' has bits set beyond its prefix "
        "length: write '10.0.0.0/8'"]


def test_allow_renders_allow_and_deny_only_on_its_route() -> None:
    text = rendered(route(allow=["10.0.0.0/8", "2001:db8::/32"]),
                    route(hosts=["b.example.com"]))
    a, b = text.split("server_name b.example.com;")
    assert "        allow 10.0.0.0/8;\n        allow 2001:db8::/32;\n        deny all;\n" in \
        location(a)
    assert "allow" not in location(b)
    assert "deny" not in location(b)
    assert "real_ip" not in text  # no trusted proxy: the peer is the client


def test_allow_behind_trusted_proxies_checks_the_forwarded_client() -> None:
    text = rendered(route(allow=["10.0.0.0/8"]), route(hosts=["b.example.com"]),
                    trusted=("192.0.2.0/24", "fd00::/8"))
    a, b = text.split("server_name b.example.com;")
    assert ("        set_real_ip_from 192.0.2.0/24;\n        set_real_ip_from fd00::/8;\n"
            "        real_ip_header X-Forwarded-For;\n        real_ip_recursive on;\n"
            "        allow 10.0.0.0/8;\n") in location(a)
    assert "real_ip" not in location(b)
    # the trust decision and the forwarded chain are about the peer, whatever realip made of
    # $remote_addr
    assert "geo $realip_remote_addr $gateway_trusted_peer {" in text
    assert '"$http_x_forwarded_for, $realip_remote_addr"' in text
    assert "proxy_set_header X-Real-IP $realip_remote_addr;" in location(b)
