from __future__ import annotations

from pathlib import Path

import pytest

from agent.core.routes import (
    MAX_ROUTES_FILE,
    RoutesError,
    RoutesUnreadable,
    Target,
    load_routes,
    parse_routes,
    parse_routes_text,
)
from agent.core.yamlfile import ALIAS_NODES

EXAMPLE = """
routes:
  - hosts: [managerhttp, Manager.Example.com]
    service: managerhttp
    port: 8888
  - hosts: [dmzhttp, "*.dmz.example.com"]
    service: dmzhttp
    port: 8888
    zone: dmz
    balance: least_conn
    connect_timeout: 500ms
    read_timeout: 2m
    max_body_size: 10m
    websocket: true
  - hosts: [api.example.com]
    path: /v1/users
    host: api.internal
    port: 80
"""


def errors_of(data: object) -> list[str]:
    with pytest.raises(RoutesError) as info:
        parse_routes(data)
    return info.value.errors


def one(**route: object) -> dict[str, object]:
    base: dict[str, object] = {"hosts": ["a.example.com"], "service": "svc", "port": 80}
    base.update(route)
    return {"routes": [base]}


def test_the_example_parses_with_defaults_and_units() -> None:
    table = parse_routes_text(EXAMPLE)
    manager, dmz, api = table.routes
    assert manager.hosts == ("managerhttp", "manager.example.com")  # host names are lowercased
    assert (manager.path, manager.balance, manager.connect_timeout) == ("/", "round_robin", 5.0)
    assert manager.target == Target("service", "managerhttp")
    assert manager.target.lookup_name == "tasks.managerhttp"
    assert (dmz.connect_timeout, dmz.read_timeout, dmz.max_body_size) == (0.5, 120.0, 10 << 20)
    assert dmz.websocket is True
    assert api.target == Target("host", "api.internal")
    assert api.target.lookup_name == "api.internal"
    assert table.targets == (Target("host", "api.internal"), Target("service", "dmzhttp"),
                             Target("service", "managerhttp"))


def test_zone_selects_only_its_routes() -> None:
    table = parse_routes_text(EXAMPLE)
    assert [r.service for r in table.for_zone("dmz").routes] == ["dmzhttp"]
    assert table.for_zone("intra").routes == ()
    assert table.for_zone(None) == table


def test_every_error_is_reported_at_once_with_its_place() -> None:
    errors = errors_of({"routes": [
        {"hosts": ["ok.example.com"], "service": "svc", "port": 8888},
        {"hosts": ["a b"], "service": "svc", "port": 0},
        {"hosts": [], "port": 80},
        {"hosts": ["x.example.com"], "service": "svc", "port": 80, "colour": "red"},
    ]})
    text = "\n".join(errors)
    assert "routes[1].hosts[0]: 'a b' is not a valid host name" in text
    assert "routes[1].port" in text
    assert "routes[2].hosts" in text
    assert "routes[2]: give exactly one of 'service'" in text or "routes[2]" in text
    assert "routes[3].colour: unknown field" in text
    assert len(errors) >= 4


@pytest.mark.parametrize("hostile", [
    "a.example.com; include /etc/passwd", "a{", "a}", "a'b", 'a"b', "$host", "a#b", "a\nb",
    "a\x00b", "a b", "a\\b", "ünïcode.example", "-a.example.com", "a..b", "*.*.example.com",
    "a.*.example.com", "x" * 64 + ".example.com", ("a." * 127) + "com", "", "~^(.*)$",
])
def test_hostile_host_names_are_refused(hostile: str) -> None:
    errors = errors_of(one(hosts=[hostile]))
    assert errors[0].startswith("routes[0].hosts[0]: ")


@pytest.mark.parametrize(("field", "value"), [
    ("service", "svc;evil"), ("service", "svc}"), ("service", "$svc"), ("service", "a b"),
    ("service", "-svc"), ("service", "s" * 64), ("service", 12), ("service", ["a"]),
    ("path", "api"), ("path", "/api/"), ("path", "/a b"), ("path", "/a;b"), ("path", "/a{b}"),
    ("path", "/$uri"), ("path", "/a/../b"), ("path", "/a//b"), ("path", "/a%20b"),
    ("path", '/a"b'), ("path", "/a\nb"), ("path", "/a#b"), ("path", "/a\\b"),
    ("zone", "DMZ"), ("zone", "dmz;"), ("zone", ""), ("port", 0), ("port", 65536),
    ("port", "8888"), ("port", True), ("port", 80.5), ("balance", "random"),
    ("connect_timeout", "5 s"), ("connect_timeout", "5;"), ("connect_timeout", 0),
    ("connect_timeout", True), ("read_timeout", "1d"), ("max_body_size", "10 m"),
    ("max_body_size", "-1"), ("max_body_size", "1t"), ("websocket", "yes"),
])
def test_hostile_or_wrong_values_are_refused_naming_the_field(field: str,
                                                              value: object) -> None:
    errors = errors_of(one(**{field: value}))
    assert any(e.startswith(f"routes[0].{field}") for e in errors), errors


def test_host_lookup_name_is_a_dns_name() -> None:
    assert errors_of(one(service=None, host="api.internal;x"))[0].startswith("routes[0].host")
    assert parse_routes(one(service=None, host="API.internal.")).routes[0].host == "api.internal"


def test_exactly_one_target() -> None:
    assert "exactly one of 'service'" in errors_of(one(host="api.internal"))[0]
    assert "exactly one of 'service'" in errors_of(one(service=None))[0]


def test_the_same_host_and_path_twice_is_refused() -> None:
    errors = errors_of({"routes": [
        {"hosts": ["a.example.com"], "service": "one", "port": 80},
        {"hosts": ["b.example.com", "A.example.com"], "service": "two", "port": 80},
        {"hosts": ["a.example.com"], "path": "/api", "service": "three", "port": 80},
        {"hosts": ["c.example.com", "c.example.com"], "service": "four", "port": 80},
    ]})
    assert errors == [
        "routes[1].hosts[1]: 'a.example.com' with path '/' is already routed by routes[0]",
        "routes[3].hosts[1]: 'c.example.com' with path '/' is already routed by this route",
    ]


def test_yaml_problems_name_the_line() -> None:
    with pytest.raises(RoutesError) as info:
        parse_routes_text("routes:\n  - hosts: [a\n    port: 80\n")
    assert "line" in info.value.errors[0]
    with pytest.raises(RoutesError) as info:
        parse_routes_text("routes:\n  - hosts: [a]\n    port: 80\n    port: 81\n    service: s\n")
    assert "duplicate key 'port' (line 4)" in info.value.errors[0]
    with pytest.raises(RoutesError) as info:
        parse_routes_text("")
    assert "empty" in info.value.errors[0]
    with pytest.raises(RoutesError) as info:
        parse_routes_text("- a\n- b\n")
    assert "expected a mapping" in info.value.errors[0]
    with pytest.raises(RoutesError) as info:
        parse_routes_text("routes: !!python/object/apply:os.system ['true']\n")
    assert "invalid YAML" in info.value.errors[0]


def test_aliases_may_repeat_what_the_file_holds_but_not_multiply_it() -> None:
    """A routes file may name a list once and repeat it; nested aliases that would expand to
    more than the file writes (plus ALIAS_NODES) are refused while the text is read, and so is
    a structure that contains itself. Either costs no more than the text."""
    hosts = ", ".join(f"h{i}.example.com" for i in range(50))
    table = parse_routes_text(
        f"routes:\n  - {{hosts: &hosts [{hosts}], service: s, port: 80}}\n" + "".join(
            f"  - {{hosts: *hosts, path: /p{i}, service: s{i}, port: 80}}\n"
            for i in range(40)))
    assert len(table.routes) == 41
    assert table.routes[40].hosts == table.routes[0].hosts
    levels = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"] + [
        f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 30)]
    bomb = "\n".join(levels) + "\nroutes: [{hosts: [a], service: a, port: *l29}]\n"
    (error,) = errors_of_text(bomb)
    assert error.startswith("line 4 column 5: invalid YAML: aliases repeat more than the file "
                            "holds (18 nodes written, 15670 more through aliases, at most "
                            f"{ALIAS_NODES} more than written)"), error
    (error,) = errors_of_text("routes: &r [{hosts: [a], service: a, port: 1, x: *r}]\n")
    assert error == ("line 1 column 9: invalid YAML: an alias of this anchor inside it: a "
                     "structure that contains itself")


@pytest.mark.parametrize(("text", "place", "tag"), [
    ("routes:\n  - port: !!int \n", "line 2 column 11", "!!int"),
    ("routes: [{hosts: [a], created: 2001-13-45}]\n", "line 1 column 32", "!!timestamp"),
    ("routes: !!float \n", "line 1 column 9", "!!float"),
    ("routes: !!timestamp x\n", "line 1 column 9", "!!timestamp"),
])
def test_a_value_yaml_cannot_construct_is_refused_at_its_place(
        text: str, place: str, tag: str) -> None:
    """PyYAML's constructors raise IndexError or ValueError on these (`!!int` of nothing, a
    13th month): a routes file holding one was an unhandled exception, not a refusal."""
    assert errors_of_text(text) == [
        f"{place}: invalid YAML: not a valid {tag} value (quote it to make it a string)"]


def errors_of_text(text: str) -> list[str]:
    with pytest.raises(RoutesError) as info:
        parse_routes_text(text)
    return info.value.errors


def test_a_routes_file_is_read_up_to_its_bound(tmp_path: Path) -> None:
    endless = tmp_path / "routes.yml"
    endless.symlink_to("/dev/zero")
    with pytest.raises(RoutesError) as info:
        load_routes(endless)
    assert info.value.errors == ["cannot read: larger than 4 MiB"]
    assert info.value.source == str(endless)
    assert MAX_ROUTES_FILE == 4 * 1024 * 1024
    # what cannot be read at all is told apart: a reader tries it again (a changed file is
    # read anew anyway)
    with pytest.raises(RoutesUnreadable):
        load_routes(tmp_path)


def test_an_empty_route_list_is_valid() -> None:
    assert parse_routes_text("routes: []\n").routes == ()


def test_load_routes_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(RoutesError) as info:
        load_routes(tmp_path / "missing.yaml")
    assert str(tmp_path / "missing.yaml") in str(info.value)
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"routes: \xff\n")
    with pytest.raises(RoutesError):
        load_routes(bad)


# -- tls: acme -------------------------------------------------------------------------------


def test_tls_acme_gets_its_certificate_from_the_controller() -> None:
    (route,) = parse_routes(one(tls="acme")).routes
    assert route.tls is not None
    assert (route.tls.acme, route.tls.redirect, route.tls.certificate) == (True, False, None)
    (route,) = parse_routes(one(tls={"acme": True, "redirect": True})).routes
    assert route.tls is not None
    assert (route.tls.acme, route.tls.redirect) == (True, True)
    # the same route written either way is the same route (they may share a host)
    assert parse_routes(one(tls="acme")) == parse_routes(one(tls={"acme": True}))
    (plain,) = parse_routes(one(tls=True)).routes
    assert plain.tls is not None
    assert plain.tls.acme is False


@pytest.mark.parametrize("tls", [{"acme": True, "certificate": "a.crt"},
                                 {"acme": True, "certificate": "a.pem", "key": "a.key"}])
def test_acme_and_a_certificate_are_refused_together(tls: dict[str, object]) -> None:
    assert errors_of(one(tls=tls)) == [
        "routes[0].tls: 'acme' gets the certificate from the controller's ACME client: give "
        "either 'acme' or 'certificate', not both"]


def test_acme_covers_a_wildcard_host_which_the_controller_orders_by_dns_01() -> None:
    (route,) = parse_routes({"routes": [
        {"hosts": ["a.example.com", "*.shop.example.com"], "service": "svc", "port": 80,
         "tls": "acme"}]}).routes
    assert route.hosts == ("a.example.com", "*.shop.example.com")
    assert route.tls is not None
    assert route.tls.acme
    # what a CA never issues stays refused under a wildcard too
    assert errors_of(one(hosts=["*.shop_1.example.com"], tls="acme")) == [
        "routes[0]: tls: acme cannot cover *.shop_1.example.com: an ACME CA issues for DNS "
        "names with a dot and no '_' only"]


@pytest.mark.parametrize("host", ["localhost", "10.0.0.1", "shop_1.example.com"])
def test_acme_covers_only_names_a_ca_issues_for(host: str) -> None:
    errors = errors_of(one(hosts=["ok.example.com", host], tls="acme"))
    assert errors == [f"routes[0]: tls: acme cannot cover {host}: an ACME CA issues for DNS "
                      "names with a dot and no '_' only"]
    parse_routes(one(hosts=[host], tls=True))  # with a certificate of one's own: fine


@pytest.mark.parametrize("tls", ["ACME", "yes", "letsencrypt", {"acme": "true"}, {"acme": 1}])
def test_other_values_for_acme_are_refused_naming_the_place(tls: object) -> None:
    assert errors_of(one(tls=tls))[0].startswith("routes[0].tls")


def test_a_large_table_made_again_after_its_parse_is_the_same_table() -> None:
    """A table of COMPACT_FROM routes or more is made again from its pickle (compact()): the
    same routes, tcp routes and derived values, every field of every route kept."""
    from agent.core.routes import COMPACT_FROM
    from agent.core.yamlfile import load_yaml

    lines = ["routes:"]
    for i in range(COMPACT_FROM):
        lines += [f"  - hosts: [h{i}.example, 'w{i}.example']", f"    service: s{i % 7}",
                  "    port: 8080", "    path: /app" if i % 2 else "    websocket: true",
                  "    tls: {redirect: true}" if i % 3 == 0 else "    read_timeout: 2m",
                  "    headers: {request: {X-A: b}}" if i % 5 == 0 else "    compress: true"]
    lines += ["tcp:", "  - listen: 5432", "    service: db", "    port: 5432"]
    text = "\n".join(lines) + "\n"
    made_again = parse_routes_text(text)
    parsed = parse_routes(load_yaml(text))
    assert made_again is not parsed
    assert made_again == parsed
    assert [r.model_dump() for r in made_again.routes] == [r.model_dump() for r in parsed.routes]
    assert [r.model_fields_set for r in made_again.routes] == \
        [r.model_fields_set for r in parsed.routes]
    assert made_again.targets == parsed.targets
    assert made_again.tls_hosts == parsed.tls_hosts
    assert len(made_again.tcp) == 1


def _file(routes: list[str]) -> str:
    return "routes:\n" + "".join(routes)


def _route(host: str, service: str, extra: str = "") -> str:
    return f"  - hosts: [{host}]\n    service: {service}\n    port: 8080\n{extra}"


def test_a_file_read_again_keeps_the_routes_whose_item_did_not_change() -> None:
    """The previous table's routes are taken as they are where their item is the same: a
    change of one route makes one route (its garbage, not ten thousand routes', is what the
    next read leaves in the agent's memory). The table is the one a fresh read gives."""
    items = [_route(f"h{i}.example", f"s{i}") for i in range(5)]
    first = parse_routes_text(_file(items))
    items[2] = _route("h2.example", "s2", "    websocket: true\n")
    items.insert(4, _route("new.example", "s9"))
    second = parse_routes_text(_file(items), previous=first)
    assert second == parse_routes_text(_file(items))
    kept = [r for r in second.routes if any(r is old for old in first.routes)]
    assert [r.hosts[0] for r in kept] == ["h0.example", "h1.example", "h3.example",
                                          "h4.example"]
    assert second.routes[2].websocket
    assert not first.routes[2].websocket
    # read again unchanged: every route is the previous one
    third = parse_routes_text(_file(items), previous=second)
    assert all(a is b for a, b in zip(third.routes, second.routes, strict=True))


def test_an_item_that_differs_in_type_only_is_not_taken_for_the_previous_one() -> None:
    """`port: 8080` and `port: "8080"` are different items: the second is refused, not
    served as the route the first made."""
    first = parse_routes_text("routes:\n  - {hosts: [a.example], service: a, port: 8080}\n")
    with pytest.raises(RoutesError, match=r"routes\[0\]\.port"):
        parse_routes_text('routes:\n  - {hosts: [a.example], service: a, port: "8080"}\n',
                          previous=first)


def test_a_kept_route_still_meets_the_conflict_rule_at_its_new_place() -> None:
    """Routes taken from the previous table are checked against the new ones: a new route
    that claims a kept route's host and path is refused, named by its place in the file."""
    first = parse_routes_text(_file([_route("a.example", "a"), _route("b.example", "b")]))
    with pytest.raises(RoutesError) as info:
        parse_routes_text(_file([_route("b.example", "b"), _route("c.example", "c"),
                                 _route("b.example", "z")]), previous=first)
    assert [e.split(":")[0] for e in info.value.errors] == ["routes[2].hosts[0]"]


def test_routes_file_read_again_after_a_change_keeps_the_other_routes(tmp_path: Path) -> None:
    """load_routes() with the table last read from the file: what the gateway and the
    controller do on each change of it."""
    path = tmp_path / "routes.yaml"
    path.write_text(_file([_route("a.example", "a"), _route("b.example", "b")]))
    first = load_routes(path)
    path.write_text(_file([_route("a.example", "a"), _route("b.example", "c")]))
    second = load_routes(path, first)
    assert second.routes[0] is first.routes[0]
    assert second.routes[1].service == "c"
