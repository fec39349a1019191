"""Service labels -> routes: the same model and safety rules as the routes file."""

from __future__ import annotations

import pytest

from agent.controller.labels import LabelError, Service, route_from_labels, routes_from_services
from agent.core.routes import Target, parse_routes


def errors_of(labels: dict[str, str], service: str = "shop_web") -> list[str]:
    with pytest.raises(LabelError) as info:
        route_from_labels(service, labels)
    return info.value.errors


BASE = {"gateway.hosts": "shop.example.com", "gateway.port": "8080"}


def test_every_option_has_a_label_named_like_the_field_of_the_routes_file() -> None:
    route = route_from_labels("shop_web", {
        "gateway.hosts": "shop.example.com, WWW.Shop.example.com,*.shop.example.com",
        "gateway.port": "8080",
        "gateway.path": "/api",
        "gateway.zone": "dmz",
        "gateway.balance": "least_conn",
        "gateway.connect_timeout": "500ms",
        "gateway.read_timeout": "2m",
        "gateway.max_body_size": "10m",
        "gateway.websocket": "true",
        "gateway.tls.redirect": "true",
        "gateway.tls.hsts": "3600",
        "com.docker.stack.namespace": "shop",  # other labels are none of the gateway's business
    })
    assert route is not None
    assert route.hosts == ("shop.example.com", "www.shop.example.com", "*.shop.example.com")
    assert route.target == Target("service", "shop_web")  # the service routes to its own tasks
    assert (route.port, route.path, route.zone, route.balance) == (8080, "/api", "dmz",
                                                                    "least_conn")
    assert (route.connect_timeout, route.read_timeout, route.max_body_size) == (0.5, 120.0,
                                                                                10 << 20)
    assert route.websocket is True
    assert route.tls is not None
    assert (route.tls.redirect, route.tls.hsts) == (True, 3600)
    # the same route written in a routes file is the same route
    file_route, = parse_routes({"routes": [{
        "hosts": ["shop.example.com", "www.shop.example.com", "*.shop.example.com"],
        "service": "shop_web", "port": 8080, "path": "/api", "zone": "dmz",
        "balance": "least_conn", "connect_timeout": "500ms", "read_timeout": "2m",
        "max_body_size": "10m", "websocket": True,
        "tls": {"redirect": True, "hsts": 3600}}]}).routes
    assert route == file_route


def test_defaults_and_tls_true() -> None:
    route = route_from_labels("web", {**BASE, "gateway.tls": "true"})
    assert route is not None
    assert (route.path, route.zone, route.balance, route.websocket) == ("/", None,
                                                                         "round_robin", False)
    assert route.tls is not None
    assert route.tls.certificate is None


def test_a_service_without_gateway_labels_has_no_route() -> None:
    assert route_from_labels("web", {}) is None
    assert route_from_labels("web", {"traefik.enable": "true", "gatewayx.hosts": "a"}) is None


def test_every_problem_at_once_each_naming_the_service_and_the_label() -> None:
    errors = errors_of({
        "gateway.hosts": "ok.example.com,a b,,",
        "gateway.port": "99999",
        "gateway.websocket": "yes",
        "gateway.balance": "random",
        "gateway.prot": "80",
        "gateway.Bad Key": "x",
    })
    assert errors == [
        "service shop_web: label 'gateway.Bad Key': not a gateway option "
        "(docs/labels.md lists them)",
        "service shop_web: label gateway.hosts[1]: 'a b' is not a valid host name (letters, "
        "digits, '-', '_', dots; a wildcard only as a leading '*.')",
        "service shop_web: label gateway.hosts[2]: '' is not a valid host name (letters, "
        "digits, '-', '_', dots; a wildcard only as a leading '*.')",
        "service shop_web: label gateway.hosts[3]: '' is not a valid host name (letters, "
        "digits, '-', '_', dots; a wildcard only as a leading '*.')",
        "service shop_web: label gateway.port: 99999: Input should be less than or equal to "
        "65535",
        "service shop_web: label gateway.balance: 'random': Input should be 'round_robin', "
        "'least_conn' or 'ip_hash'",
        "service shop_web: label gateway.websocket: 'yes': Input should be a valid boolean",
        "service shop_web: label gateway.prot: unknown label (docs/labels.md lists them)",
    ]


def test_required_labels() -> None:
    assert errors_of({"gateway.zone": "dmz"}) == [
        "service shop_web: label gateway.hosts: required label is missing",
        "service shop_web: label gateway.port: required label is missing"]
    assert errors_of({"gateway.hosts": "a.example.com", "gateway.port": ""}) == [
        "service shop_web: label gateway.port: '': Input should be a valid integer"]


def test_labels_cannot_send_traffic_to_another_service_or_host() -> None:
    errors = errors_of({**BASE, "gateway.service": "bank_db", "gateway.host": "evil.example"})
    assert errors == [
        "service shop_web: label gateway.host: a labelled service routes to its own tasks; "
        "'host' is for the routes file only",
        "service shop_web: label gateway.service: a labelled service routes to its own tasks; "
        "the service is not a label"]


@pytest.mark.parametrize("option", ["hosts", "path", "zone", "balance", "connect_timeout",
                                    "read_timeout", "max_body_size", "tls.certificate"])
@pytest.mark.parametrize("value", [
    "a;b", "a}", "{a", "a'b", 'a"b', "a\nb", "$host", "a b", "a#b", "a\\b", "é", "a\x00b"])
def test_values_that_could_change_nginx_configuration_are_refused(option: str, value: str,
                                                                   ) -> None:
    labels = {**BASE, f"gateway.{option}": value}
    if option == "path":
        labels["gateway.path"] = "/" + value
    errors = errors_of(labels)
    assert errors, labels
    assert all(e.startswith(f"service shop_web: label gateway.{option}") for e in errors), errors


def test_tls_labels() -> None:
    route = route_from_labels("web", {**BASE, "gateway.tls.certificate": "shop.crt"})
    assert route is not None
    assert route.tls is not None
    assert (route.tls.certificate, route.tls.key_name) == ("shop.crt", "shop.key")
    assert errors_of({**BASE, "gateway.tls": "false", "gateway.tls.redirect": "true"}) == [
        "service shop_web: label gateway.tls: it is false, but gateway.tls.* labels are given"]
    assert errors_of({**BASE, "gateway.tls.key": "k.key"}) == [
        "service shop_web: label gateway.tls: 'key' needs 'certificate' (without both, the "
        "certificate of each host is <host>.crt and <host>.key)"]
    assert errors_of({**BASE, "gateway.tls.hsts": "forever"})[0].startswith(
        "service shop_web: label gateway.tls.hsts: 'forever' is not true, false or a max-age")


def test_another_prefix() -> None:
    route = route_from_labels("web", {"edge.hosts": "a.example.com", "edge.port": "80",
                                      "gateway.port": "nonsense"}, prefix="edge")
    assert route is not None
    assert route.port == 80


def test_services_oldest_first_bad_ones_skipped_with_their_errors() -> None:
    services = [
        Service("new", created="2024-05-01T10:00:00.5Z", labels={**BASE}),
        Service("old", created="2024-05-01T10:00:00.123456789Z", labels={**BASE}),
        Service("broken", created="2024-05-01T09:00:00Z",
                labels={**BASE, "gateway.port": "http", "gateway.zone": "dmz"}),
        Service("plain", created="2024-05-01T08:00:00Z", labels={"owner": "me"}),
        Service("misplaced", created="2024-05-01T08:00:00Z",
                container_labels={"gateway.hosts": "a.example.com", "gateway.zone": "dmz"}),
    ]
    found = routes_from_services(services)
    # Go writes .5 for half a second: it is later than .123456789
    assert [source for source, _ in found.routes] == ["service old", "service new"]
    assert found.services == 4
    assert found.errors == (
        ("dmz", "service misplaced: gateway.* labels are on its containers; put them on the "
               "service (deploy.labels in a stack file, --label on docker service create)"),
        ("dmz", "service broken: label gateway.port: 'http': Input should be a valid integer"),
    )


def test_service_from_the_docker_api() -> None:
    doc = {"ID": "9mnpnzenvg8p8tdbtq4wvbkcz", "Version": {"Index": 19},
           "CreatedAt": "2016-06-07T21:05:51.880065305Z",
           "Spec": {"Name": "shop_web", "Labels": {"gateway.port": "80"},
                    "TaskTemplate": {"ContainerSpec": {"Image": "redis"}}}}
    service = Service.from_api(doc)
    assert (service.name, service.id, service.labels, service.container_labels) == (
        "shop_web", "9mnpnzenvg8p8tdbtq4wvbkcz", {"gateway.port": "80"}, {})
    assert Service.from_api({"Spec": {"Name": "x", "Labels": None}}).labels == {}


# -- tls: acme -------------------------------------------------------------------------------


def test_tls_acme_labels() -> None:
    route = route_from_labels("web", {**BASE, "gateway.tls": "acme"})
    assert route is not None
    assert route.tls is not None
    assert (route.tls.acme, route.tls.redirect) == (True, False)
    # the same route as `tls: acme` in the routes file
    (file_route,) = parse_routes({"routes": [{"hosts": ["shop.example.com"], "service": "web",
                                              "port": 8080, "tls": "acme"}]}).routes
    assert route == file_route
    route = route_from_labels("web", {**BASE, "gateway.tls": "acme",
                                      "gateway.tls.redirect": "true"})
    assert route is not None
    assert route.tls is not None
    assert (route.tls.acme, route.tls.redirect) == (True, True)
    route = route_from_labels("web", {**BASE, "gateway.tls.acme": "true",
                                      "gateway.tls.hsts": "600"})
    assert route is not None
    assert route.tls is not None
    assert (route.tls.acme, route.tls.hsts) == (True, 600)


def test_tls_acme_labels_refused() -> None:
    assert errors_of({**BASE, "gateway.tls.acme": "yes"}) == [
        "service shop_web: label gateway.tls.acme: 'yes': Input should be a valid boolean"]
    assert errors_of({**BASE, "gateway.tls": "acme", "gateway.tls.certificate": "a.crt"}) == [
        "service shop_web: label gateway.tls: 'acme' gets the certificate from the "
        "controller's ACME client: give either 'acme' or 'certificate', not both"]
    errors = errors_of({**BASE, "gateway.hosts": "a.example.com,localhost",
                        "gateway.tls": "acme"})
    assert len(errors) == 1
    assert errors[0].startswith("service shop_web: labels: tls: acme cannot cover localhost")
    # a wildcard is ordered by DNS-01 (the controller's --acme-dns-provider)
    route = route_from_labels("web", {**BASE, "gateway.hosts": "*.shop.example.com",
                                      "gateway.tls": "acme"})
    assert route is not None
    assert route.hosts == ("*.shop.example.com",)


def test_a_bad_tls_value_with_tls_labels_says_true_or_acme() -> None:
    errors = errors_of({**BASE, "gateway.tls": "yes", "gateway.tls.redirect": "true"})
    assert errors[0] == ("service shop_web: label gateway.tls: 'yes': give true or acme, or "
                         "only gateway.tls.* labels")


def test_a_bad_tls_value_alone_says_true_or_acme() -> None:
    errors = errors_of({**BASE, "gateway.tls": "yes"})
    assert len(errors) == 1
    assert errors[0].startswith("service shop_web: label gateway.tls: ")
    assert "true or acme" in errors[0]


def test_tls_acme_contradicted_by_tls_acme_false_is_refused() -> None:
    errors = errors_of({**BASE, "gateway.tls": "acme", "gateway.tls.acme": "false"})
    assert errors[0].startswith("service shop_web: label gateway.tls")
