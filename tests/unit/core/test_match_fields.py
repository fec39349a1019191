"""match: as the routes file and labels give it, who may share a host and path, the nginx maps
that choose (core/match.py, core/claims.py, plan/match.py), and hostile values refused naming
their place or rendered inert (nginx -t, the value in its one map only)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent.controller.labels import LabelError, route_from_labels
from agent.core.match import as_pattern
from agent.core.merge import merge
from agent.core.route import RouteError, parse_route
from agent.core.routes import RoutesError, RouteTable, parse_routes
from agent.gateway.model import Endpoints
from agent.gateway.plan.desired import Planner
from agent.gateway.plan.filters import RenderError, nginx_regex
from agent.gateway.plan.match import UNMATCHED, conditions, dispatch
from tests.unit.core.test_hostile import (
    NginxTest,
    hostile_text,
    nginx_t,  # noqa: F401  (the fixture)
    parse_conf,
    poisoned,
)

BASE = {"hosts": ["shop"], "path": "/api", "service": "shop", "port": 80}
LABELS = {"gateway.hosts": "shop", "gateway.path": "/api", "gateway.port": "80"}
PLANNER = Planner(listen="0.0.0.0:8080", status_listen="127.0.0.1:9181")


def parsed(document: object) -> RouteTable | RoutesError:
    try:
        return parse_routes(document)
    except RoutesError as exc:
        return exc


def refused(match: object) -> str:
    with pytest.raises(RouteError) as err:
        parse_route({**BASE, "match": match})
    return str(err.value)


@pytest.mark.parametrize(("match", "place"), [
    ("GET", "match"),
    ({}, "match"),
    ({"headers": {}, "methods": []}, "match"),
    ({"other": 1}, "match.other"),
    ({"methods": ["get"]}, "match.methods"),
    ({"methods": ["GET", "GET"]}, "match.methods"),
    ({"methods": "FETCH"}, "match.methods"),
    ({"headers": ["X-Env"]}, "match.headers"),
    ({"headers": {"X Env": "a"}}, "match.headers"),
    ({"headers": {"X-Env": "a", "x-env": "b"}}, "match.headers"),
    ({"headers": {"X-Env": True}}, "match.headers"),
    ({"headers": {"X-Env": " a"}}, "match.headers"),
    ({"headers": {"X-Env": 'a"b'}}, "match.headers"),
    ({"headers": {"X-Env": "a\\b"}}, "match.headers"),
    ({"headers": {"X-Env": "caf\u00e9"}}, "match.headers"),
    ({"headers": {"X-Env": "~beta"}}, "match.headers"),  # not anchored
    ({"headers": {"X-Env": "~^beta"}}, "match.headers"),
    ({"headers": {"X-Env": "~^beta\\$"}}, "match.headers"),
    ({"headers": {"X-Env": "~^(beta$"}}, "match.headers"),  # not a regular expression
    ({"headers": {"X-Env": "~^(?<gateway_rid>.*)$"}}, "match.headers"),  # sets a variable
    ({"headers": {"X-Env": "~^(?P<x>.*)$"}}, "match.headers"),
    ({"headers": {"X-Env": "~^a(?i)b$"}}, "match.headers"),  # (?i) first only
    ({"headers": {"X-Env": "~^a\\nb$"}}, "match.headers"),  # nginx would unescape it
    ({"headers": {"X-Env": "~^a\\\"b$"}}, "match.headers"),
    ({"headers": {f"X-{i}": "a" for i in range(9)}}, "match.headers"),
])
def test_a_bad_match_is_refused_at_its_place(match: object, place: str) -> None:
    text = refused(match)
    assert text.startswith(f"{place}: "), text


def test_a_match_as_written_and_as_the_controller_copies_it() -> None:
    route = parse_route({**BASE, "match": {
        "headers": {"X-Env": "beta", "Accept": "~^application/(json|xml)$", "X-N": 2},
        "methods": ["POST", "GET"]}})
    assert route.match is not None
    assert route.match.headers == (("Accept", "~^application/(json|xml)$"),
                                   ("X-Env", "beta"), ("X-N", "2"))
    assert route.match.methods == ("GET", "POST")
    assert parse_route(route.model_dump(mode="json", exclude_none=True)) == route
    assert parse_route({**BASE, "match": {"methods": "GET"}}).match.methods == ("GET",)  # type: ignore[union-attr]
    # the case of a header's name does not make another match
    a = parse_route({**BASE, "match": {"headers": {"X-Env": "beta"}}})
    b = parse_route({**BASE, "match": {"headers": {"x-env": "beta"}}})
    assert a.match is not None
    assert b.match is not None
    assert a.match.key == b.match.key


def test_labels_give_a_match_and_name_a_bad_one() -> None:
    route = route_from_labels("shop-beta", {
        **LABELS, "gateway.match.headers.X-Env": "beta",
        "gateway.match.headers.Accept": "~^application/json$",
        "gateway.match.methods": "GET, HEAD"})
    assert route is not None
    assert route.match is not None
    assert dict(route.match.headers) == {"X-Env": "beta", "Accept": "~^application/json$"}
    assert route.match.methods == ("GET", "HEAD")
    for labels, named in (
            ({"gateway.match.methods": "GET,FETCH"}, "label gateway.match.methods: 'FETCH'"),
            ({"gateway.match.headers.X-Env": "~beta"}, "label gateway.match.headers: 'X-Env'"),
            ({"gateway.match.headers.X_Env": "a"}, "label 'gateway.match.headers.X_Env'"),
            ({"gateway.match": "GET"}, "label gateway.match: 'GET'"),
            ({"gateway.match.header": "a"}, "label gateway.match.header: not a gateway option")):
        with pytest.raises(LabelError) as err:
            route_from_labels("shop", {**LABELS, **labels})
        assert named in str(err.value), str(err.value)


def test_routes_of_one_path_may_share_it_when_they_differ_by_match() -> None:
    beta = {**BASE, "service": "beta", "match": {"headers": {"X-Env": "beta"}}}
    writer = {**BASE, "service": "writer", "match": {"methods": ["POST"]}}
    table = parsed({"routes": [beta, writer, BASE]})
    assert isinstance(table, RouteTable)
    # the same match twice, or two without: refused, naming the place and the other route
    for routes, said in (([beta, {**beta, "service": "other"}], "with the same 'match'"),
                         ([BASE, beta, BASE], "already routed by routes[0]"),
                         ([{**BASE, "strip_prefix": True}, beta], "strip the prefix"),
                         # nginx checks a Content-Length where the path is found, before the
                         # route is chosen: one limit for the path's routes
                         ([{**BASE, "max_body_size": "100m"}, beta], "'max_body_size'")):
        found = parsed({"routes": routes})
        assert isinstance(found, RoutesError)
        assert [e.split(":")[0] for e in found.errors] == [f"routes[{len(routes) - 1}].hosts[0]"]
        assert said in found.errors[0]
    # across sources: a labelled service's route beside another's, by match
    merged = merge([("service a", parse_route(BASE)), ("service b", parse_route(beta)),
                    ("service c", parse_route({**beta, "service": "c"}))])
    assert merged.sources == ("service a", "service b")
    assert merged.errors == ("service c: not routed: 'shop' with path '/api' is already "
                             "routed by service b with the same 'match'",)


def test_the_most_specific_route_is_chosen_first_and_the_rest_go_to_the_route_without() -> None:
    table = parsed({"routes": [
        {**BASE, "service": "one", "match": {"methods": ["GET"]}},
        {**BASE, "service": "two", "match": {"methods": ["GET"], "headers": {"X-A": "1"}}},
        BASE,
        {**BASE, "path": "/admin", "service": "admin", "match": {"headers": {"X-A": "1"}}},
        {**BASE, "path": "/plain"}]})
    assert isinstance(table, RouteTable)
    snapshot = {t.lookup_name: Endpoints(("10.0.0.1",), "ok") for t in table.targets}
    text = PLANNER.render(table, snapshot).text
    conf = parse_conf(text)
    maps = {d.args[1]: d for d in conf if d.name == "map" and
            d.args[1].startswith("$gateway_route_choice_")}
    assert len(maps) == 2
    api, admin = sorted(maps.values(), key=lambda d: len(d.block or ()), reverse=True)
    entries = [d.name for d in api.block or ()]
    # the key is the conditions' digits; the route with two conditions is tried first
    assert entries[0] == "default"
    assert [e.count("1") for e in entries[1:]] == [2, 1]
    assert (admin.block or ())[0].args == (UNMATCHED,)
    server = next(s for s in conf if s.name == "server" and "shop" in s.one("server_name").args)
    plain = [loc.args for loc in server.children("location")]
    assert ("=", "/plain") in plain
    assert ("^~", "/plain/") in plain
    named = [a for a in plain if a[0].startswith("@")]
    assert len(named) == 5  # the four routes of /api and /admin, and the 404
    for location in server.children("location"):
        if location.args in (("=", "/api"), ("^~", "/api/")):
            assert location.one("error_page").args == ("418", "=", api.args[1])


def test_conditions_are_one_map_each_and_exact_values_are_escaped() -> None:
    route = parse_route({**BASE, "match": {"headers": {"X-Version": "v2.1 (rc)+[x]{1}|a/b^c$",
                                                       "Accept": "~(?i)^text/.*$"},
                                           "methods": ["HEAD", "GET"]}})
    found = {c.source: c.pattern for c in conditions(route.match)}
    assert found == {"http_accept": "(?i)^text/.*$",
                     "http_x_version": "^v2\\.1 \\(rc\\)\\+\\[x\\]\\{1\\}\\|a\\/b\\^c\\$$",
                     "request_method": "^(GET|HEAD)$"}
    assert re.fullmatch(found["http_x_version"][1:-1], "v2.1 (rc)+[x]{1}|a/b^c$")
    assert as_pattern("") == "^$"  # an empty value: the header absent (or empty)
    _, dispatches = dispatch([])
    assert dispatches == []


@pytest.mark.parametrize("text", ['a"b', "a\\nb", "a\\\\b", "(?<x>a)", "(?P<x>a)", "a\nb",
                                  "a\\", "\u00e9"])
def test_the_regex_filter_refuses_what_could_leave_its_string(text: str) -> None:
    with pytest.raises(RenderError):
        nginx_regex(text)


# -- hostile values ----------------------------------------------------------------------------

_PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7f))
_NAME = st.one_of(st.just("X-Env"), st.just("X-Env"), poisoned(st.just("X-Env")), hostile_text())
_VALUE = st.one_of(
    hostile_text(), poisoned(st.just("beta")), poisoned(st.just("~^beta(-[0-9]+)?$")),
    st.builds(lambda s: "~^" + s + "$", st.text(st.sampled_from(_PRINTABLE), max_size=20)),
    st.text(st.sampled_from(_PRINTABLE), max_size=30), st.integers(), st.booleans(),
    st.none())
# (mostly valid: an exact value, and a regular expression of PCRE's pieces)
_VALID_VALUE = st.one_of(
    st.text(st.sampled_from(_PRINTABLE.replace('"', "").replace("\\", "")), max_size=40),
    st.lists(st.sampled_from(["a", "Z", "0", "[0-9]", "[^;]", "+", "*", "?", ".", "\\.",
                              "(x|y)", "{1,3}", "/", " ", ";", "#", "'", "$", "{", "}",
                              "(?:", ")", "\\d", "\\$", "\\(", "|", "(?i)"]),
             max_size=12).map(lambda parts: "~^" + "".join(parts) + "$"))
_METHOD = st.one_of(st.sampled_from(["GET", "POST"]), poisoned(st.just("GET")), hostile_text())
_QUIET = [HealthCheck.too_slow, HealthCheck.filter_too_much]


@settings(max_examples=250, deadline=None, suppress_health_check=_QUIET)
@given(st.sampled_from(["name", "value", "methods", "none"]), _NAME,
       st.one_of(_VALUE, _VALID_VALUE), _VALID_VALUE, st.lists(_METHOD, min_size=1, max_size=3))
def test_a_hostile_match_is_refused_at_its_place_or_rendered_to_its_one_map(
        nginx_t: NginxTest, hostile: str, name: Any, value: Any, valid: str,  # noqa: F811
        methods: list[Any]) -> None:
    """Refused naming routes[0].match, or rendered: nginx accepts it, and each value is the
    one pattern of its own map, the route still one named location behind its path."""
    if hostile != "name":
        name = "X-Env"
    if hostile != "value":
        value = valid
    if hostile != "methods":
        methods = ["GET", "POST"] if hostile == "none" else []
    match: dict[str, Any] = {"headers": {name: value}}
    if methods:
        match["methods"] = methods
    table = parsed({"routes": [{**BASE, "match": match}]})
    if isinstance(table, RoutesError):
        assert all(e.startswith("routes[0].match") for e in table.errors), table.errors
        assert all("\n" not in e for e in table.errors)
        return
    snapshot = {t.lookup_name: Endpoints(("10.0.0.1",), "ok") for t in table.targets}
    text = PLANNER.render(table, snapshot).text
    conf = parse_conf(text)
    matches = [d for d in conf if d.name == "map" and d.args[1].startswith("$gateway_match_")]
    assert len(matches) == (2 if methods else 1)
    for m in matches:
        assert next(d.name for d in m.block or ()) == "default"
        assert len(m.block or ()) == 2
        assert (m.block or ())[1].args == ("1",)
    assert text.count("error_page 418 = $gateway_route_choice_") == 2
    assert text.count("location @gateway_route_") == 1
    nginx_t.check(text)
    event("rendered")
