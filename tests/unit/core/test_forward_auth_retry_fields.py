"""auth, retry, max_conns, fail_timeout: as the routes file and labels give them, and hostile
values refused naming their place (core/forwardauth.py, core/retry.py, controller/labels.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.controller.labels import LabelError, route_from_labels
from agent.core.route import RouteError, parse_route
from agent.core.routes import RoutesError, RouteTable, parse_routes, parse_routes_text
from agent.gateway.model import Endpoints
from agent.gateway.plan.desired import Planner
from agent.gateway.plan.filters import SAFE_TOKEN

BASE = {"hosts": ["web"], "service": "web", "port": 80}
LABELS = {"gateway.hosts": "web", "gateway.port": "80"}
HOSTILE = ["x;y", "a b", "$host", "{", "}", "#c", "\"q\"", "a\nb", "\\x", "'s'", "a\x00b"]


def refused(options: dict[str, object]) -> str:
    with pytest.raises(RouteError) as err:
        parse_route({**BASE, **options})
    return str(err.value)


@pytest.mark.parametrize(("options", "place"), [
    ({"auth": {"url": "https://auth/check"}}, "auth.url"),
    ({"auth": {"url": "http://auth:99999/x"}}, "auth.url"),
    ({"auth": {"url": "http://auth/x?a=1"}}, "auth.url"),
    ({"auth": {"service": "auth"}}, "auth"),
    ({"auth": {"url": "http://auth", "service": "auth", "port": 1}}, "auth"),
    ({"auth": {"url": "http://auth", "response_headers": ["Host"]}}, "auth.response_headers"),
    ({"auth": {"url": "http://auth", "signin": "javascript:x"}}, "auth.signin"),
    ({"auth": {"url": "http://auth", "response_headers": ["X-User"]},
      "headers": {"request": {"x-user": "a"}}}, "auth"),
    ({"path": "/.gateway-auth/x"}, "path"),
    ({"retry": {"on": ["error", "sometimes"]}}, "retry.on[1]"),
    ({"retry": {"tries": 0}}, "retry.tries"),
    ({"retry": {"on": []}}, "retry.on"),
    ({"max_conns": -1}, "max_conns"),
    ({"fail_timeout": "soon"}, "fail_timeout"),
])
def test_a_bad_value_is_refused_at_its_place(options: dict[str, object], place: str) -> None:
    assert refused(options).startswith(f"{place}: ") or f"; {place}: " in refused(options)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["auth.url", "auth.service", "auth.path", "auth.signin",
                        "auth.response_headers", "retry.on"]),
       st.sampled_from(HOSTILE), st.text(max_size=8))
def test_a_hostile_value_is_refused(field: str, bad: str, extra: str) -> None:
    group, key = field.split(".")
    value = {"url": "http://auth", "signin": "https://a/in", "path": "/p",
             "service": "auth"}.get(key, "") + bad + extra
    given_: dict[str, object] = {key: [value] if key in ("response_headers", "on") else value}
    if group == "auth" and key not in ("url", "service"):
        given_["url"] = "http://auth"
    if key == "service":
        given_["port"] = 1
    if key == "path":
        given_ = {"service": "auth", "port": 1, "path": value}
    with pytest.raises(RouteError):
        parse_route({**BASE, group: given_})


def test_what_renders_is_plain_tokens() -> None:
    route = parse_route({**BASE, "auth": {"service": "auth", "port": 4180, "path": "/oauth2/auth",
                                          "signin": "https://login.example/start"}})
    assert route.auth is not None
    for token in (route.auth.name, route.auth.target_path, route.auth.signin):
        assert token is not None
        assert SAFE_TOKEN.fullmatch(token)


def test_labels_give_every_option() -> None:
    route = route_from_labels("web", {
        **LABELS, "gateway.auth": "http://auth.internal:4180/oauth2/auth",
        "gateway.auth.response_headers": "X-Auth-Request-User, X-Auth-Request-Email",
        "gateway.auth.signin": "https://login.example/oauth2/start",
        "gateway.retry": "2", "gateway.retry.on": "error,http_503",
        "gateway.retry.non_idempotent": "true", "gateway.max_conns": "10",
        "gateway.fail_timeout": "3s"})
    assert route is not None
    assert route.auth is not None
    assert route.retry is not None
    assert (route.auth.name, route.auth.target_port, route.auth.target_path) == \
        ("auth.internal", 4180, "/oauth2/auth")
    assert route.auth.response_headers == ("X-Auth-Request-User", "X-Auth-Request-Email")
    assert (route.retry.tries, route.retry.on, route.retry.non_idempotent) == \
        (2, ("error", "http_503"), True)
    assert (route.max_conns, route.fail_timeout) == (10, 3.0)


@pytest.mark.parametrize(("labels", "named"), [
    ({"gateway.auth": "http://a;b/"}, "label gateway.auth: "),
    ({"gateway.auth.service": "auth"}, "label gateway.auth: "),
    ({"gateway.retry.on": "error,never"}, "label gateway.retry.on[1]: "),
    ({"gateway.retry.tries": "many"}, "label gateway.retry: "),  # the group names its field
    ({"gateway.max_conns": "lots"}, "label gateway.max_conns: "),
])
def test_a_bad_label_is_named(labels: dict[str, str], named: str) -> None:
    with pytest.raises(LabelError) as err:
        route_from_labels("web", {**LABELS, **labels})
    assert named in str(err.value)


def test_retry_on_as_a_routes_file_writes_it() -> None:
    """YAML 1.1 reads the key `on` as true; `retry: {on: [...]}` in a file still means on."""
    table = parse_routes_text("routes:\n  - {hosts: [web], service: web, port: 80,\n"
                              "     retry: {on: [error, http_503], tries: 2}}\n")
    retry = table.routes[0].retry
    assert retry is not None
    assert retry.on == ("error", "http_503")


_NASTY = st.text(st.sampled_from(list("ab/:.;{}$#\"'\\ \n\t?&=%x-_@1")), max_size=24)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["url", "path", "signin", "response_headers", "service", "on"]), _NASTY)
def test_a_hostile_value_is_refused_at_its_place_or_rendered_to_its_one_place(
        key: str, value: str) -> None:
    """Refused naming routes[0].auth or .retry, or rendered: one auth_request, one internal
    location, the value only where it belongs (the renderer refuses any other token)."""
    auth: dict[str, object] = {"service": "auth", "port": 4180}
    retry: dict[str, object] = {}
    if key == "url":
        auth = {"url": "http://auth" + value}
    elif key == "path":
        auth["path"] = "/" + value
    elif key == "signin":
        auth["signin"] = "https://login.example" + value
    elif key == "response_headers":
        auth["response_headers"] = ["X-" + value]
    elif key == "service":
        auth["service"] = "a" + value
    else:
        retry["on"] = ["error", value]
    table = parsed({"routes": [{**BASE, "auth": auth, "retry": retry}]})
    if isinstance(table, RoutesError):
        assert all(e.startswith(("routes[0].auth", "routes[0].retry")) for e in table.errors)
        assert all("\n" not in e for e in table.errors)
        return
    snapshot = {t.lookup_name: Endpoints(("10.0.0.1",), "ok") for t in table.targets}
    text = PLANNER.render(table, snapshot).text
    assert text.count("\n        auth_request ") == 1
    assert text.count("location = /.gateway-auth/") == 1
    assert text.count("server {") == 3  # the route's, the default one, the agent's status


def parsed(document: object) -> RouteTable | RoutesError:
    try:
        return parse_routes(document)
    except RoutesError as exc:
        return exc


PLANNER = Planner(listen="0.0.0.0:8080", status_listen="127.0.0.1:9181")


def test_cors_from_labels_and_its_refusals() -> None:
    route = route_from_labels("web", {
        **LABELS, "gateway.cors": "https://app.example.com, http://localhost:3000",
        "gateway.cors.methods": "GET,PUT", "gateway.cors.headers": "X-Token",
        "gateway.cors.credentials": "true", "gateway.cors.max_age": "1h"})
    assert route is not None
    assert route.cors is not None
    assert route.cors.origins == ("https://app.example.com", "http://localhost:3000")
    assert (route.cors.methods, route.cors.headers, route.cors.credentials,
            route.cors.max_age) == (("GET", "PUT"), ("X-Token",), True, 3600.0)
    with pytest.raises(LabelError) as err:
        route_from_labels("web", {**LABELS, "gateway.cors": "*",
                                  "gateway.cors.credentials": "true"})
    assert "label gateway.cors: credentials are never allowed" in str(err.value)


@pytest.mark.parametrize("cors", [
    {"origins": ["https://app.example.com/path"]}, {"origins": ["https://App.example.com"]},
    {"origins": ["*", "https://a.example"]}, {"origins": []}, {"origins": ["https://a;b"]},
    {"origins": ["https://a.example"], "methods": ["get"]},
    {"origins": ["https://a.example"], "headers": ["X Token"]},
    {"origins": ["https://a.example"], "credentials": "yes"},
])
def test_a_bad_cors_value_is_refused_at_its_place(cors: dict[str, object]) -> None:
    assert refused({"cors": cors}).startswith("cors")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["origins", "methods", "headers"]), _NASTY)
def test_a_hostile_cors_value_is_refused_or_rendered_to_its_place(key: str, value: str) -> None:
    cors: dict[str, object] = {"origins": ["https://a.example"]}
    cors[key] = [{"origins": "https://a.example", "methods": "GET",
                  "headers": "X-A"}[key] + value]
    table = parsed({"routes": [{**BASE, "cors": cors}]})
    if isinstance(table, RoutesError):
        assert all(e.startswith("routes[0].cors") for e in table.errors)
        return
    text = PLANNER.render(table, {"tasks.web": Endpoints(("10.0.0.1",), "ok")}).text
    assert text.count("map $http_origin ") == 1
    assert text.count("server {") == 3


def test_the_controller_s_copy_parses_back_the_same() -> None:
    """The controller sends routes as JSON with every default written; /status shows the same."""
    for auth in ({"url": "http://auth.internal:9091/verify", "signin": "https://a.example/in"},
                 {"service": "auth", "port": 4180, "path": "/oauth2/auth",
                  "response_headers": ["X-Auth-Request-User"]}):
        route = parse_route({**BASE, "auth": auth, "retry": {"on": ["error", "http_503"]},
                             "max_conns": 5, "fail_timeout": "9s",
                             "cors": {"origins": ["https://a.example"], "credentials": True}})
        for dumped in (route.model_dump(mode="json"),
                       route.model_dump(mode="json", exclude_none=True)):
            assert parse_route(dumped) == route
