"""What a route may ask of nginx beyond where to send traffic: the model, its labels, its text.

Each option is checked three ways here: the routes file and the labels refuse the same bad values
with the same place, and a route renders the option's directives only when it asks for it. The
integration tests (tests/integration/test_route_features.py) show what a client notices.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import pytest

from agent.controller.labels import LabelError, route_from_labels
from agent.core.options import BasicAuth, Headers, RateLimit, Redirect, Sticky
from agent.core.routes import Route, RoutesError, RouteTable, parse_routes
from agent.core.wire import route_item
from agent.gateway.drivers.htpasswd import check_file, check_hash, crypt_checks
from agent.gateway.drivers.routefiles import RouteFiles
from agent.gateway.drivers.tls import Certificates
from agent.gateway.model import Endpoints, FilesPlan, RouteFile
from agent.gateway.plan.desired import Planner
from agent.gateway.plan.filters import RenderError, nginx_quoted
from agent.gateway.plan.naming import sticky_var
from tests.support.tlsca import TestCA
from tests.unit.core.test_hostile import NginxTest

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
    renderer = Planner(listen="0.0.0.0:8080", status_listen="127.0.0.1:9181",
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
    (["255.255.255.255"], "routes[0].allow[0]", "the broadcast address is never a client"),
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


def test_allow_renders_a_geo_of_its_networks_and_a_refusal_only_on_its_route() -> None:
    text = rendered(route(allow=["10.0.0.0/8", "2001:db8::/32"]),
                    route(hosts=["b.example.com"]))
    (var,) = re.findall(r"^geo \$(gateway_allow_\w+) \{\n    default 0;\n"
                        r"    10\.0\.0\.0/8 1;\n    2001:db8::/32 1;\n\}$", text, re.M)
    a, b = text.split("server_name b.example.com;")
    # a refusal by `return`, which writes no error-log line per request (`deny` does)
    assert f"        if (${var} = 0) {{\n            return 403;\n        }}\n" in location(a)
    assert "gateway_allow" not in location(b)
    assert "deny all" not in text
    assert "real_ip" not in text  # no trusted proxy: the peer is the client
    assert "    proxy " not in text


def test_allow_behind_trusted_proxies_checks_the_forwarded_client() -> None:
    text = rendered(route(allow=["10.0.0.0/8"]), route(hosts=["b.example.com"]),
                    trusted=("192.0.2.0/24", "fd00::/8"))
    a, b = text.split("server_name b.example.com;")
    # the geo takes the client as realip does: from X-Forwarded-For, trusted proxies skipped
    assert re.search(r"^geo \$gateway_allow_\w+ \{\n    default 0;\n    proxy 192\.0\.2\.0/24;\n"
                     r"    proxy fd00::/8;\n    proxy_recursive;\n    10\.0\.0\.0/8 1;\n\}$",
                     text, re.M)
    # realip still gives the location's other checks (rate_limit) the forwarded client
    assert ("        set_real_ip_from 192.0.2.0/24;\n        set_real_ip_from fd00::/8;\n"
            "        real_ip_header X-Forwarded-For;\n        real_ip_recursive on;\n"
            "        if ($gateway_allow_") in location(a)
    assert "real_ip" not in location(b)
    # the trust decision and the forwarded chain are about the peer, whatever realip made of
    # $remote_addr
    assert "geo $realip_remote_addr $gateway_trusted_peer {" in text
    assert '"$http_x_forwarded_for, $realip_remote_addr"' in text
    # said once for every location (plan/scale.py), which b inherits
    assert "\nproxy_set_header X-Real-IP $realip_remote_addr;\n" in text
    assert "proxy_set_header" not in location(b)


# -- basic_auth ------------------------------------------------------------------------------------

SHA_ALICE = "{SHA}" + base64.b64encode(hashlib.sha1(b"alice-pw").digest()).decode()


def test_basic_auth_is_a_file_name_or_a_file_and_a_realm() -> None:
    assert route(basic_auth="users.htpasswd").basic_auth == BasicAuth(file="users.htpasswd",
                                                                       realm="restricted")
    given = route(basic_auth={"file": "u.htpasswd", "realm": "Shop admin (staff)"}).basic_auth
    assert given == BasicAuth(file="u.htpasswd", realm="Shop admin (staff)")


@pytest.mark.parametrize(("value", "place", "message"), [
    ("../etc/shadow", "routes[0].basic_auth.file",
     "is not a file name basic_auth takes (a file of --route-files-dir"),
    ("gateway-admin-token", "routes[0].basic_auth.file", "ending in .htpasswd"),
    (".x.htpasswd", "routes[0].basic_auth.file", "starting alphanumeric"),
    ("shop.html", "routes[0].basic_auth.file", "ending in .htpasswd"),
    ({"realm": "x"}, "routes[0].basic_auth.file", "required field is missing"),
    ({"file": "u.htpasswd", "realm": 'a" ; b'}, "routes[0].basic_auth.realm",
     "is not a valid realm"),
    ({"file": "u.htpasswd", "realm": "$host"}, "routes[0].basic_auth.realm",
     "is not a valid realm"),
    ({"file": "u.htpasswd", "realm": " padded"}, "routes[0].basic_auth.realm",
     "is not a valid realm"),
    ({"file": "u.htpasswd", "user": "x"}, "routes[0].basic_auth.user", "unknown field"),
    (5, "routes[0].basic_auth", "give the htpasswd file's name"),
])
def test_basic_auth_refuses_with_the_place(value: object, place: str, message: str) -> None:
    (error,) = errors(basic_auth=value)
    assert error.startswith(place + ": "), error
    assert message in error


def test_basic_auth_labels() -> None:
    labelled = route_from_labels("svc", {**LABELS, "gateway.basic_auth": "u.htpasswd",
                                         "gateway.basic_auth.realm": "Shop admin"})
    assert labelled is not None
    assert labelled.basic_auth == BasicAuth(file="u.htpasswd", realm="Shop admin")
    assert label_errors(**{"basic_auth": "../x", "basic_auth.realm": "a;b"}) == [
        "service svc: label gateway.basic_auth: '../x' is not a file name basic_auth takes (a "
        "file of --route-files-dir: letters, digits, '_', '.', '-', starting alphanumeric, "
        "ending in .htpasswd; no '/' or '..')",
        "service svc: label gateway.basic_auth.realm: 'a;b' is not a valid realm (1 to 64 "
        "letters, digits, spaces inside, and _ . , : ( ) / @ + -)"]
    assert label_errors(**{"basic_auth.realm": "x"}) == [
        "service svc: label gateway.basic_auth: required label is missing"]


def test_basic_auth_renders_the_checked_copy_and_locks_the_route_without_one() -> None:
    protected = route(basic_auth={"file": "u.htpasswd", "realm": "Shop admin"})
    plan = FilesPlan((RouteFile("u.htpasswd", Path("/run/gw/htpasswd/abc.htpasswd"), None),))
    renderer = Planner(listen="0.0.0.0:8080", status_listen="127.0.0.1:9181")
    text = renderer.render(RouteTable((protected, route(hosts=["b.example.com"]))), SNAPSHOT,
                           files=plan).text
    a, b = text.split("server_name b.example.com;")
    assert ('        auth_basic "Shop admin";\n'
            "        auth_basic_user_file /run/gw/htpasswd/abc.htpasswd;\n") in location(a)
    assert "auth_basic" not in b
    # no good copy of the file (refused, missing, or no plan at all): the route is locked
    for auth in (None, FilesPlan((RouteFile("u.htpasswd", None, "u.htpasswd: not found"),))):
        body = location(renderer.render(RouteTable((protected,)), SNAPSHOT, files=auth).text)
        assert body.split("\n")[-1].strip() == \
            'return 503 "503 the password file of this route cannot be used\\n";'
        assert "proxy_pass" not in body


@pytest.mark.parametrize("text", ['a"b', "a\\b", "$x", "{", "}", "a\nb", "\x00", "é"])
def test_the_quoting_filter_refuses_what_could_end_the_string(text: str) -> None:
    with pytest.raises(RenderError):
        nginx_quoted(text)
    assert nginx_quoted("Shop admin (staff) #1") == '"Shop admin (staff) #1"'
    # between quotes nginx's parser reads ';' as text (ngx_conf_read_token)
    assert nginx_quoted("no-cache; max-age=0") == '"no-cache; max-age=0"'


def test_htpasswd_hashes_nginx_checks_are_accepted() -> None:
    apr1 = "$apr1$Kq0Xj2mE$0GzWcOg0nXQ5CJqD8A1Ns/"
    sha512 = "$6$abcdefgh$" + "a" * 86
    assert check_file(f"# admins\nalice:{SHA_ALICE}\nbob:{apr1}:comment\r\n\n"
                      f"carol:{sha512}\n".encode()) == (3, [])


@pytest.mark.parametrize(("line", "problem"), [
    ("dave:{PLAIN}secret", "line 1 (user 'dave'): a password in plain text"),
    ("dave:secret", "line 1 (user 'dave'): not a hash the gateway accepts"),
    ("dave:$2y$13$" + "a" * 53, "bcrypt cost 13 is above 12"),
    ("dave:$6$rounds=999999$abc$" + "a" * 86, "999999 rounds is above 100000"),
    ("dave:$y$j9T$abc$def", "not a hash the gateway accepts"),
    ("dave:{SHA}bm90IGJhc2U2NA", "not base64"),
    ("dave", "line 1: not 'user:hash'"),
    (":" + SHA_ALICE, "line 1: not 'user:hash'"),
    (f"alice:{SHA_ALICE}\nalice:{SHA_ALICE}", "line 2: user 'alice' again"),
    ("# nobody", "no user in the file"),
])
def test_htpasswd_problems_name_the_line_and_user_never_the_hash(line: str,
                                                                 problem: str) -> None:
    _, problems = check_file(line.encode() + b"\n")
    assert len(problems) == 1, problems
    assert problem in problems[0]
    assert "secret" not in problems[0]


def test_bcrypt_is_refused_exactly_when_this_crypt_cannot_check_it() -> None:
    hashed = "$2y$05$" + "a" * 53
    problem = check_hash(hashed)
    assert (problem is None) is crypt_checks("bcrypt")
    if problem is not None:
        assert "cannot check it" in problem


def test_password_files_are_copied_checked_and_the_last_good_one_kept(tmp_path: Path) -> None:
    files_dir, store = tmp_path / "files", tmp_path / "store"
    files_dir.mkdir()
    files = RouteFiles(files_dir, store)
    table = RouteTable((route(basic_auth="u.htpasswd"),))
    first = files.plan(table)
    assert first is not None
    assert first.files == (RouteFile("u.htpasswd", None, f"u.htpasswd: not found in {files_dir}"
                                     " (basic_auth of a.example.com/)"),)
    (files_dir / "u.htpasswd").write_text(f"alice:{SHA_ALICE}\n")
    good = files.plan(table)
    assert good is not None
    (entry,) = good.files
    assert entry.error is None
    assert entry.path is not None
    assert entry.path.read_text() == f"alice:{SHA_ALICE}\n"
    assert entry.path.parent == store / "htpasswd"
    # readable by nginx's workers only (here the test's user), the folders not listable
    assert entry.path.stat().st_mode & 0o777 == 0o600
    assert {store.stat().st_mode & 0o777, entry.path.parent.stat().st_mode & 0o777} == {0o711}
    files.applied(good)
    (files_dir / "u.htpasswd").write_text("alice:{PLAIN}x\n")
    kept = files.plan(table)
    assert kept is not None
    assert kept.files[0].path == entry.path
    assert "plain text" in (kept.files[0].error or "")
    assert files.plan(RouteTable((route(),))) is None
    files.applied(None)
    assert not entry.path.exists()  # no configuration refers to it any more


# -- rate_limit ------------------------------------------------------------------------------------


def test_rate_limit_is_a_rate_or_a_rate_and_a_burst() -> None:
    assert route(rate_limit="10r/s").rate_limit == RateLimit(rate="10r/s", burst=0)
    assert route(rate_limit={"rate": "600r/m", "burst": 20}).rate_limit == RateLimit(
        rate="600r/m", burst=20)


@pytest.mark.parametrize(("value", "place", "message"), [
    ("0r/s", "routes[0].rate_limit.rate", "is not a rate"),
    ("10r/h", "routes[0].rate_limit.rate", "is not a rate"),
    ("10r/s burst=5", "routes[0].rate_limit.rate", "is not a rate"),
    ({"rate": "1r/s", "burst": -1}, "routes[0].rate_limit.burst", "greater than or equal to 0"),
    ({"rate": "1r/s", "burst": "5"}, "routes[0].rate_limit.burst", "valid integer"),
    ({"burst": 5}, "routes[0].rate_limit.rate", "required field is missing"),
    ({"rate": "1r/s", "key": "$http_x"}, "routes[0].rate_limit.key", "unknown field"),
    (10, "routes[0].rate_limit", "give a rate"),
])
def test_rate_limit_refuses_with_the_place(value: object, place: str, message: str) -> None:
    (error,) = errors(rate_limit=value)
    assert error.startswith(place + ": "), error
    assert message in error


def test_rate_limit_labels() -> None:
    labelled = route_from_labels("svc", {**LABELS, "gateway.rate_limit": "10r/s",
                                         "gateway.rate_limit.burst": "20"})
    assert labelled is not None
    assert labelled.rate_limit == RateLimit(rate="10r/s", burst=20)
    assert label_errors(**{"rate_limit": "10r/h", "rate_limit.burst": "x"}) == [
        "service svc: label gateway.rate_limit: '10r/h' is not a rate (requests per second or "
        "minute: '10r/s', '600r/m'; 1 to 999999)",
        "service svc: label gateway.rate_limit.burst: 'x': Input should be a valid integer"]


def test_rate_limit_renders_a_zone_per_route_only_where_asked() -> None:
    limited = route(rate_limit={"rate": "10r/s", "burst": 20})
    other = route(hosts=["b.example.com"], rate_limit="10r/s")
    text = rendered(limited, other, route(hosts=["c.example.com"]))
    zones = re.findall(r"^limit_req_zone \$binary_remote_addr zone=(gateway_rate_\w+):1m "
                       r"rate=10r/s;$", text, re.M)
    assert len(set(zones)) == 2, "each route counts on its own"
    a, rest = text.split("server_name b.example.com;")
    b, c = rest.split("server_name c.example.com;")
    assert f"limit_req zone={zones[0]} burst=20 nodelay;\n        limit_req_status 429;" in \
        location(a) or f"limit_req zone={zones[1]} burst=20 nodelay;" in location(a)
    assert re.search(r"limit_req zone=gateway_rate_\w+ nodelay;", location(b))  # nginx: no burst=0
    assert "limit_req" not in c
    assert "limit_req_zone" not in rendered(route()), "no zone when no route limits"
    # with trusted proxies the count is per forwarded client
    assert "real_ip_header X-Forwarded-For;" in location(rendered(limited, trusted=("10.0.0.0/8",)))


# -- strip_prefix ----------------------------------------------------------------------------------


def test_strip_prefix_needs_a_path_and_a_boolean() -> None:
    assert route(path="/api", strip_prefix=True).strip_prefix is True
    assert route().strip_prefix is False
    assert errors(strip_prefix=True) == [
        "routes[0].strip_prefix: the route's path is '/': there is no prefix to strip "
        "(give 'path', e.g. /api)"]
    assert errors(path="/api", strip_prefix="yes") == [
        "routes[0].strip_prefix: 'yes': Input should be a valid boolean"]
    # a refused path is said once, not again as "nothing to strip"
    assert [e.split(":")[0] for e in errors(path="a b", strip_prefix=True)] == ["routes[0].path"]
    labelled = route_from_labels("svc", {**LABELS, "gateway.path": "/api",
                                         "gateway.strip_prefix": "true"})
    assert labelled is not None
    assert labelled.strip_prefix is True
    assert label_errors(strip_prefix="true") == [
        "service svc: label gateway.strip_prefix: the route's path is '/': there is no prefix "
        "to strip (give 'path', e.g. /api)"]


def test_strip_prefix_renders_a_proxy_pass_with_a_uri_only_on_its_route() -> None:
    text = rendered(route(path="/api", strip_prefix=True), route(path="/kept"))
    for loc in (location(text, "= /api"), location(text, "^~ /api/")):
        assert "proxy_pass http://service_svc_80/;" in loc
        assert "proxy_set_header X-Forwarded-Prefix $gateway_forwarded_prefix/api;" in loc
    for loc in (location(text, "= /kept"), location(text, "^~ /kept/")):
        assert "proxy_pass http://service_svc_80;" in loc
        assert "proxy_set_header" not in loc  # the http level's, without a prefix
    assert "\nproxy_set_header X-Forwarded-Prefix $gateway_forwarded_prefix;\n" in text


# -- headers ---------------------------------------------------------------------------------------


def test_headers_set_or_remove_each_way() -> None:
    headers = route(headers={"request": {"X-Api-Version": "2 (beta)", "X-Debug": None},
                             "response": {"X-Frame-Options": "DENY", "X-Powered-By": ""}}
                    ).headers
    assert headers is not None
    assert headers.request == (("X-Api-Version", "2 (beta)"), ("X-Debug", None))
    assert headers.response == (("X-Frame-Options", "DENY"), ("X-Powered-By", None))


@pytest.mark.parametrize(("value", "place", "message"), [
    ({"request": {"X Api": "1"}}, "routes[0].headers.request", "'X Api' is not a header name"),
    ({"request": {"X-A": 'a"b'}}, "routes[0].headers.request", "is not a header value"),
    ({"request": {"X-A": 'a"; b'}}, "routes[0].headers.request", "is not a header value"),
    ({"request": {"X-A": "a; {b}"}}, "routes[0].headers.request", "is not a header value"),
    ({"request": {"X-A": "a\\; b"}}, "routes[0].headers.request", "is not a header value"),
    ({"request": {"X-A": "$host"}}, "routes[0].headers.request", "is not a header value"),
    ({"request": {"X-A": "a\r\nX-B: c"}}, "routes[0].headers.request", "is not a header value"),
    ({"request": {"X-A": " a"}}, "routes[0].headers.request", "no space at either end"),
    ({"request": {"X-A": "é"}}, "routes[0].headers.request", "is not a header value"),
    ({"request": {"X-A": ["a"]}}, "routes[0].headers.request", "is not a header value"),
    ({"request": {"X-Forwarded-For": "1.2.3.4"}}, "routes[0].headers.request",
     "is set by the gateway itself"),
    ({"request": {"x-a": "1", "X-A": "2"}}, "routes[0].headers.request", "given twice"),
    ({"response": {"Strict-Transport-Security": "max-age=1"}}, "routes[0].headers.response",
     "give it with tls.hsts"),
    ({"response": {"Server": "x"}}, "routes[0].headers.response", "nginx writes it itself"),
    ({"response": "x"}, "routes[0].headers.response", "give a mapping"),
    ({"both": {}}, "routes[0].headers.both", "unknown field"),
])
def test_headers_refuse_with_the_place(value: object, place: str, message: str) -> None:
    (error,) = errors(headers=value)
    assert error.startswith(place + ": "), error
    assert message in error
    assert "\n" not in error


def test_every_header_problem_at_once() -> None:
    (error,) = errors(headers={"request": {"Host": "x", "a b": "c", "X-A": "$x"}})
    assert error.count("; ") >= 2, error


def test_headers_labels() -> None:
    labelled = route_from_labels("svc", {**LABELS, "gateway.headers.request.x-api": "2",
                                         "gateway.headers.response.x-powered-by": ""})
    assert labelled is not None
    assert labelled.headers == Headers.model_validate(
        {"request": {"x-api": "2"}, "response": {"x-powered-by": None}})
    assert label_errors(**{"headers.request.host": "x"}) == [
        "service svc: label gateway.headers.request: 'host' is set by the gateway itself"]
    assert label_errors(**{"headers.request": "x"}) == [
        "service svc: label gateway.headers.request: not a gateway option "
        "(docs/labels.md lists them)"]


def test_headers_render_only_on_their_route() -> None:
    text = rendered(route(headers={"request": {"X-Api": "2 (beta)", "X-Debug": None},
                                   "response": {"X-Frame-Options": "DENY", "X-Powered-By": None}}),
                    route(hosts=["b.example.com"]))
    a, b = text.split("server_name b.example.com;")
    assert ('        proxy_set_header X-Api "2 (beta)";\n'
            '        proxy_set_header X-Debug "";\n'
            "        proxy_hide_header X-Frame-Options;\n"
            '        add_header X-Frame-Options "DENY" always;\n'
            "        proxy_hide_header X-Powered-By;\n") in location(a) + "\n"
    # route b has only the gateway's own X-Request-Id (plan/observe.py), and hides it by the
    # http level's proxy_hide_header (plan/scale.py)
    assert location(b).count("add_header") == 1
    assert "proxy_hide_header" not in location(b)
    assert "X-Frame-Options" not in location(b)
    assert "X-Powered-By" not in location(b)


def test_response_headers_on_https_keep_hsts(tmp_path: Path) -> None:
    """nginx forgets the server's add_header in a location with its own: HSTS is said again."""
    ca = TestCA()
    certs = tmp_path / "certs"
    certs.mkdir()
    ca.issue("a.example.com").write(certs, "a.example.com")
    with_headers = route(tls={"hsts": 600}, headers={"response": {"X-Frame-Options": "DENY"}})
    renderer = Planner(listen="0.0.0.0:8080", status_listen="127.0.0.1:9181",
                        https_listen="0.0.0.0:8443")
    table = RouteTable((with_headers,))
    plan = Certificates(certs, tmp_path / "store", None).plan(table)
    assert plan is not None
    assert not plan.errors
    text = renderer.render(table, SNAPSHOT, tls=plan).text
    https = text[text.index("listen 0.0.0.0:8443 ssl"):]
    assert '    add_header Strict-Transport-Security "max-age=600" always;' in https
    assert ('        add_header X-Frame-Options "DENY" always;\n'
            '        add_header Strict-Transport-Security "max-age=600" always;\n') in \
        location(https) + "\n"


# -- the controller's copy -------------------------------------------------------------------------


def test_every_option_survives_the_trip_from_the_controller_to_the_gateways() -> None:
    """The controller serves label routes as JSON (source); a gateway parses them again."""
    full = route(path="/api", allow=["10.0.0.0/8", "192.0.2.7"], strip_prefix=True,
                 basic_auth={"file": "u.htpasswd", "realm": "Shop admin"},
                 rate_limit={"rate": "10r/s", "burst": 5},
                 headers={"request": {"X-Api": "2", "X-Debug": None},
                          "response": {"X-Frame-Options": "DENY", "X-Powered-By": ""}})
    others = [route(compress=True, sticky="sid", error_page="p.html", maintenance=True),
              route(protocol="grpc", tls=True)]
    for original in (full, *others):
        item = json.loads(json.dumps(route_item("service svc", original)))
        (again,) = parse_routes({"routes": [item["route"]]}).routes
        assert again == original


# -- redirect --------------------------------------------------------------------------------------


def only(**fields: object) -> dict[str, object]:
    return {"routes": [{"hosts": ["www.example.com"], **fields}]}


def test_redirect_is_a_url_or_a_url_code_and_whether_the_path_follows() -> None:
    (r,) = parse_routes(only(redirect="https://example.com")).routes
    assert r.redirect == Redirect(to="https://example.com", code=308, keep_path=True)
    assert not r.proxies
    assert r.port is None
    (r,) = parse_routes(only(path="/old", redirect={
        "to": "http://example.com:8080/new/", "code": 301, "keep_path": False})).routes
    assert r.redirect is not None
    assert (r.redirect.code, r.redirect.target) == (301, "http://example.com:8080/new/")
    assert parse_routes(only(redirect="https://example.com")).targets == ()


@pytest.mark.parametrize(("fields", "place", "message"), [
    ({"redirect": "ftp://example.com"}, "routes[0].redirect.to", "is not a URL"),
    ({"redirect": "https://example.com/a?b=1"}, "routes[0].redirect.to", "is not a URL"),
    ({"redirect": "https://exa mple.com"}, "routes[0].redirect.to", "is not a valid host name"),
    ({"redirect": "https://*.example.com"}, "routes[0].redirect.to", "is not a valid host name"),
    ({"redirect": "https://example.com/$host"}, "routes[0].redirect.to", "not a valid path"),
    ({"redirect": "https://example.com:0"}, "routes[0].redirect.to", "out of range"),
    ({"redirect": {"to": "https://example.com", "code": 200}}, "routes[0].redirect.code",
     "Input should be 301, 302, 303, 307 or 308"),
    ({"redirect": {"to": "https://example.com", "keep_path": "no"}},
     "routes[0].redirect.keep_path", "valid boolean"),
    ({"redirect": "https://example.com", "service": "web", "port": 80}, "routes[0].redirect",
     "leave out 'service', 'port'"),
    ({"redirect": 5}, "routes[0].redirect", "give a URL"),
])
def test_redirect_refuses_with_the_place(fields: dict[str, object], place: str,
                                         message: str) -> None:
    with pytest.raises(RoutesError) as info:
        parse_routes(only(**fields))
    (error,) = info.value.errors  # a refused redirect is not also told it lacks a port
    assert error.startswith(place + ": "), error
    assert message in error


def test_a_route_without_redirect_still_needs_its_port_and_target() -> None:
    assert errors(port=None) == ["routes[0].port: required field is missing"]
    with pytest.raises(RoutesError) as info:
        parse_routes({"routes": [{"hosts": ["a"], "port": 80}]})
    assert info.value.errors == [
        "routes[0]: give exactly one of 'service' (a swarm service) or 'host' (a DNS name "
        "resolved as it is), or 'redirect'"]


def test_redirect_labels_make_the_service_a_redirect_only() -> None:
    labelled = route_from_labels("svc", {"gateway.hosts": "www.example.com",
                                         "gateway.redirect": "https://example.com",
                                         "gateway.redirect.code": "301"})
    assert labelled is not None
    assert labelled.redirect == Redirect(to="https://example.com", code=301)
    assert labelled.service is None
    assert label_errors(**{"redirect": "https://example.com"}) == [
        "service svc: label gateway.redirect: the route only redirects, it sends no request "
        "on: leave out 'port'"]


def test_redirect_renders_a_return_only() -> None:
    text = rendered(parse_routes(only(redirect="https://example.com")).routes[0],
                    parse_routes({"routes": [{"hosts": ["example.com"], "path": "/old",
                                              "redirect": {"to": "https://example.com/new",
                                                           "code": 301, "keep_path": False}}]}
                                 ).routes[0])
    assert location(text.split("server_name www.example.com;")[1]) == \
        "        return 308 https://example.com$request_uri;"
    assert location(text, "= /old") == "        return 301 https://example.com/new;"
    assert not re.search(r"^upstream ", text, re.M)


def test_a_redirect_survives_the_trip_from_the_controller() -> None:
    (r,) = parse_routes(only(path="/a", redirect={"to": "https://example.com/b", "code": 302,
                                                  "keep_path": False})).routes
    item = json.loads(json.dumps(route_item("service svc", r)))
    assert parse_routes({"routes": [item["route"]]}).routes == (r,)


# -- compress --------------------------------------------------------------------------------------


def test_compress_is_a_boolean_rendered_only_on_its_route() -> None:
    assert route(compress=True).compress is True
    assert errors(compress="yes") == ["routes[0].compress: 'yes': Input should be a valid boolean"]
    labelled = route_from_labels("svc", {**LABELS, "gateway.compress": "true"})
    assert labelled is not None
    assert labelled.compress is True
    assert label_errors(compress="on") == [
        "service svc: label gateway.compress: 'on': Input should be a valid boolean"]
    text = rendered(route(compress=True), route(hosts=["b.example.com"]))
    a, b = text.split("server_name b.example.com;")
    assert "        gzip on;\n        gzip_types text/plain text/css" in location(a)
    assert "gzip_proxied any;" in location(a)
    assert "gzip" not in b


# -- sticky ----------------------------------------------------------------------------------------


def test_sticky_is_a_cookie_name_and_replaces_balance() -> None:
    assert route(sticky="JSESSIONID").sticky == Sticky(cookie="JSESSIONID")
    assert route(sticky={"cookie": "gateway_task"}).sticky == Sticky(cookie="gateway_task")
    assert errors(sticky="a-b") == [
        "routes[0].sticky.cookie: 'a-b' is not a cookie name the gateway reads (1 to 64 "
        "letters, digits and '_')"]
    assert errors(sticky={"cookie": "x", "ttl": 5}) == ["routes[0].sticky.ttl: unknown field"]
    assert errors(sticky="x", balance="least_conn") == [
        "routes[0].sticky: sticky chooses the task by its cookie: leave out balance "
        "'least_conn'"]
    labelled = route_from_labels("svc", {**LABELS, "gateway.sticky": "gateway_task"})
    assert labelled is not None
    assert labelled.sticky == Sticky(cookie="gateway_task")
    assert label_errors(sticky="a;b") == [
        "service svc: label gateway.sticky: 'a;b' is not a cookie name the gateway reads (1 to "
        "64 letters, digits and '_')"]


def test_sticky_renders_a_hashed_upstream_of_its_own() -> None:
    text = rendered(route(sticky="Sid"), route(hosts=["b.example.com"]))
    var = sticky_var("Sid")
    sticky_up = re.search(r"upstream (service_svc_80_sticky_sid_\w+) \{\n    hash \$" + var +
                          r" consistent;\n", text)
    assert sticky_up is not None
    assert re.search(r"upstream service_svc_80 \{\n    server ", text), "the other one: plain"
    a, b = text.split("server_name b.example.com;")
    assert f"proxy_pass http://{sticky_up.group(1)};" in location(a)
    assert f"        add_header Set-Cookie ${var}_set;" in location(a)
    assert "Set-Cookie" not in b
    assert '""      "Sid=$request_id; Path=/; HttpOnly; SameSite=Lax";' in text
    assert "hash $" not in rendered(route()), "no sticky route, no hash, no cookie map"


# -- error_page, maintenance -----------------------------------------------------------------------


def test_error_page_and_maintenance_fields() -> None:
    assert route(error_page="shop.html").error_page == "shop.html"
    assert route(maintenance=True).maintenance is True
    (error,) = errors(error_page="../shop.html")
    assert error.startswith("routes[0].error_page: '../shop.html' is not a file name "
                            "error_page takes (a file of --route-files-dir")
    for name in ("gateway-admin-token", "demo.key", "users.htpasswd", ".hidden.html", "a/b.html"):
        (error,) = errors(error_page=name)
        assert error.startswith(f"routes[0].error_page: {name!r} is not a file name"), error
    assert errors(maintenance="yes") == [
        "routes[0].maintenance: 'yes': Input should be a valid boolean"]
    assert errors(path="/.gateway-error-pages") == [
        "routes[0]: path '/.gateway-error-pages': the gateway serves its error pages there"]
    labelled = route_from_labels("svc", {**LABELS, "gateway.error_page": "shop.html",
                                         "gateway.maintenance": "true"})
    assert labelled is not None
    assert (labelled.error_page, labelled.maintenance) == ("shop.html", True)


def test_error_pages_are_checked_and_copied_like_password_files(tmp_path: Path) -> None:
    files_dir = tmp_path / "files"
    files_dir.mkdir()
    files = RouteFiles(files_dir, tmp_path / "store")
    table = RouteTable((route(error_page="p.html"),))
    (files_dir / "p.html").write_bytes(b"\xff not utf-8")
    plan = files.plan(table)
    assert plan is not None
    (refused,) = plan.files
    assert refused.error == "p.html: not UTF-8 text (byte 0) (error_page of a.example.com/)"
    (files_dir / "p.html").write_text("<h1>back soon</h1>")
    plan = files.plan(table)
    assert plan is not None
    page = plan.path("p.html", "page")
    assert page is not None
    assert page.suffix == ".html"
    assert page.parent == tmp_path / "store" / "pages"  # apart from the password files
    assert page.read_text() == "<h1>back soon</h1>"


def test_error_page_renders_an_internal_location_and_the_error_page_directive() -> None:
    page = Path("/run/gw/route-files/abc.html")
    plan = FilesPlan((RouteFile("p.html", page, None, "page"),))
    renderer = Planner(listen="0.0.0.0:8080", status_listen="127.0.0.1:9181")
    table = RouteTable((route(error_page="p.html"), route(hosts=["b.example.com"]),
                        route(path="/m", maintenance=True)))
    text = renderer.render(table, SNAPSHOT, files=plan).text
    a, b = text.split("server_name b.example.com;")
    assert ("    location ^~ /.gateway-error-pages/ {\n        internal;\n"
            "        alias /run/gw/route-files/;\n        default_type text/html;\n") in a
    assert "        error_page 502 503 504 /.gateway-error-pages/abc.html;\n" in location(a)
    assert location(a, "= /m").endswith('return 503 "503 down for maintenance\\n";')
    assert "error_page" not in b
    assert "proxy_pass" not in location(a, "= /m")
    # without a usable copy of the page, nginx's own text: the route still serves
    text = renderer.render(table, SNAPSHOT, files=None).text
    assert "error_page" not in text
    assert "proxy_pass http://service_svc_80;" in location(text)


# -- protocol: grpc --------------------------------------------------------------------------------


def test_grpc_needs_tls_and_leaves_out_what_only_http_proxying_does() -> None:
    assert route(protocol="grpc", tls=True).protocol == "grpc"
    assert route().protocol == "http"
    assert errors(protocol="grpc") == [
        "routes[0].protocol: gRPC clients speak HTTP/2, which the gateway offers on HTTPS: "
        "give the route 'tls'"]
    assert errors(protocol="grpc", tls=True, websocket=True, compress=True) == [
        "routes[0].protocol: not with grpc (yet): leave out 'websocket', 'compress'"]
    assert errors(protocol="h2", tls=True) == [
        "routes[0].protocol: 'h2': Input should be 'http', 'grpc' or 'h2c'"]
    # HTTP/2 to clients is every HTTPS server's already; nginx passes no other HTTP/2 on
    assert errors(protocol="http2") == [
        "routes[0].protocol: 'http2' is not a protocol of its own: every route with 'tls' "
        "speaks HTTP/2 (and HTTP/1.1) to clients already; to the tasks nginx speaks HTTP/1.1 "
        "('http'), gRPC ('grpc') or HTTP/2 without TLS ('h2c')"]
    labelled = route_from_labels("svc", {**LABELS, "gateway.protocol": "grpc",
                                         "gateway.tls": "true"})
    assert labelled is not None
    assert labelled.protocol == "grpc"


def test_grpc_renders_grpc_pass_on_https_and_nginx_accepts_it(tmp_path: Path) -> None:
    ca = TestCA()
    certs = tmp_path / "certs"
    certs.mkdir()
    ca.issue("a.example.com").write(certs, "a.example.com")
    table = RouteTable((route(protocol="grpc", tls=True, allow=["10.0.0.0/8"],
                              rate_limit="100r/s"),))
    plan = Certificates(certs, tmp_path / "store", None).plan(table)
    renderer = Planner(listen="127.0.0.1:8080", status_listen="127.0.0.1:9181",
                        https_listen="127.0.0.1:8443", trusted_proxies=("192.0.2.0/24",))
    text = renderer.render(table, SNAPSHOT, tls=plan).text
    https = text[text.index("listen 127.0.0.1:8443 ssl;"):]
    body = location(https)
    assert "        grpc_pass grpc://service_svc_80;\n" in body
    assert "proxy_pass" not in body
    assert "        if ($gateway_allow_" in body
    assert "limit_req zone=" in body
    assert "grpc_set_header X-Forwarded-For $gateway_forwarded_for;" in body
    checker = NginxTest(tmp_path / "nginx")
    checker.check(text)
