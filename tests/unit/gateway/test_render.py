from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from agent.core.routes import RoutesError, RouteTable, Target, parse_routes, parse_routes_text
from agent.gateway.drivers.tls import Certificates
from agent.gateway.model import Endpoints, TlsPlan
from agent.gateway.plan.desired import Planner
from agent.gateway.plan.filters import RenderError, nginx_token
from agent.gateway.plan.mainconf import render_main_conf
from agent.gateway.plan.naming import upstream_name
from tests.support import require_programs
from tests.support.tlsca import TestCA

ROUTES = parse_routes_text("""
routes:
  - hosts: [managerhttp, manager.example.com]
    service: managerhttp
    port: 8888
  - hosts: [dmzhttp, "*.dmz.example.com"]
    service: dmzhttp
    port: 8888
    balance: least_conn
    websocket: true
  - hosts: [manager.example.com]
    path: /api
    host: api.internal
    port: 80
    read_timeout: 2m
""")

SNAPSHOT = {
    "tasks.managerhttp": Endpoints(("10.0.1.3", "10.0.1.4"), "ok"),
    "tasks.dmzhttp": Endpoints(("10.0.2.3", "fd00::5"), "ok"),
    "api.internal": Endpoints((), "none"),
}


def renderer(**kw: object) -> Planner:
    args: dict[str, object] = {"listen": "0.0.0.0:8080", "status_listen": "127.0.0.1:9181"}
    args.update(kw)
    return Planner(**args)  # type: ignore[arg-type]


def test_rendering_is_deterministic_whatever_the_order() -> None:
    first = renderer().render(ROUTES, SNAPSHOT)
    reordered = {k: SNAPSHOT[k] for k in reversed(list(SNAPSHOT))}
    assert renderer().render(ROUTES, reordered) == first
    assert renderer().render(ROUTES, dict(SNAPSHOT)).text.encode() == first.text.encode()
    changed = renderer().render(ROUTES, {**SNAPSHOT, "tasks.managerhttp":
                                         Endpoints(("10.0.1.3",), "ok")})
    assert changed.generation != first.generation
    assert f'return 200 "{first.generation}\\n";' in first.text


def test_upstreams_list_task_addresses_with_keepalive() -> None:
    text = renderer().render(ROUTES, SNAPSHOT).text
    manager = re.search(r"upstream service_managerhttp_8888 \{(.*?)\}", text, re.S)
    assert manager is not None
    assert "server 10.0.1.3:8888" in manager.group(1)
    assert "server 10.0.1.4:8888" in manager.group(1)
    assert "keepalive 512;" in manager.group(1)
    dmz = re.search(r"upstream service_dmzhttp_8888_least_conn \{(.*?)\}", text, re.S)
    assert dmz is not None
    assert "least_conn;" in dmz.group(1)
    assert "server [fd00::5]:8888" in dmz.group(1)
    assert 'proxy_set_header Connection "";' in text
    assert "proxy_set_header Upgrade $gateway_upgrade;" in text  # the websocket route
    assert "proxy_http_version 1.1;" in text


def test_a_service_without_tasks_answers_503() -> None:
    text = renderer().render(ROUTES, SNAPSHOT).text
    api = text[text.index("location = /api {"):]
    assert api.index('return 503 "503 no running task of api.internal\\n";') < api.index("}")
    assert "upstream host_api_internal" not in text


def test_unknown_hosts_meet_the_default_server_only() -> None:
    text = renderer().render(ROUTES, SNAPSHOT).text
    assert text.count("default_server") == 1
    default = text[text.index("default_server"):]
    assert 'return 404 "404 no route for this host\\n";' in default
    assert "proxy_pass" not in default


def test_hosts_sharing_locations_share_a_server_block() -> None:
    text = renderer().render(ROUTES, SNAPSHOT).text
    assert "server_name *.dmz.example.com dmzhttp;" in text
    assert "server_name managerhttp;" in text
    # manager.example.com also has /api, so it gets its own block with both locations
    block = text[text.index("server_name manager.example.com;"):]
    block = block[: block.index("\nserver {")]
    assert "location / {" in block
    assert "location = /api {" in block
    assert "location ^~ /api/ {" in block


def test_upstream_names_do_not_collide() -> None:
    names = {upstream_name(Target("service", n), 80, "round_robin")
             for n in ("a-b", "a_b", "a.b", "A_b")}
    assert len(names) == 4
    assert upstream_name(Target("service", "web"), 80, "ip_hash") == "service_web_80_ip_hash"


@pytest.mark.parametrize("hostile", [
    "10.0.0.1;", "10.0.0.1:80 backup", "1.2.3.4}", "$host", "a\nb", "a b", "'", '"', "#", "\\"])
def test_the_nginx_filter_refuses_anything_but_a_token(hostile: str) -> None:
    with pytest.raises(RenderError):
        nginx_token(hostile)


def test_a_forged_dns_answer_cannot_reach_the_configuration() -> None:
    """Discovery only passes parsed IP addresses; the renderer refuses anything else anyway."""
    forged = {"tasks.managerhttp": Endpoints(("10.0.0.1:80; include /etc/passwd",), "ok")}
    with pytest.raises((RenderError, ValueError)):
        renderer().render(ROUTES, forged)


def test_trusted_proxies_are_rendered_as_networks() -> None:
    text = renderer(trusted_proxies=["10.0.0.0/8", "fd00::/8"]).render(ROUTES, SNAPSHOT).text
    assert "    10.0.0.0/8 1;" in text
    assert "    fd00::/8 1;" in text


# values the routes model would refuse, as if it had let them through: the filter is the second
# wall, in the built-in template and in one of your own
SLIPPED = [("hosts", ("a;b",)), ("path", "/a;b"), ("service", "a;b"), ("port", "80;"),
           ("max_body_size", "1m; include /etc/passwd"), ("balance", "x;y")]


@pytest.mark.parametrize(("field", "hostile"), SLIPPED)
def test_a_value_the_model_let_through_is_refused_by_the_filter(
        tmp_path: Path, field: str, hostile: object) -> None:
    (base,) = parse_routes({"routes": [{"hosts": ["shop.example.com"], "path": "/api",
                                        "service": "shop", "port": 80}]}).routes
    slipped = RouteTable((base.model_copy(update={field: hostile}),))  # not validated
    snapshot = {"tasks.shop": Endpoints(("10.0.0.2",), "ok"),
                "tasks.a;b": Endpoints(("10.0.0.2",), "ok")}
    mine = tmp_path / "mine.j2"
    mine.write_text("{% for s in servers %}server {{ s.names | map('nginx') | join(' ') }}"
                    "{% for loc in s.locations %} {{ loc.path | nginx }} {{ loc.target | nginx }}"
                    " {{ loc.upstream | nginx }} {{ loc.max_body_size | nginx }}{% endfor %}\n"
                    "{% endfor %}"
                    "{% for u in upstreams %}{{ u.name | nginx }} {{ u.balance | nginx }} "
                    "{{ u.port | nginx }}\n{% endfor %}"
                    "{{ generation | nginx }}\n")
    # the same template renders the valid route: it is the value that is refused
    ok = renderer(template=mine).render(RouteTable((base,)), snapshot).text
    assert "server shop.example.com /api shop service_shop_80 1048576" in ok
    for template in (None, mine):
        with pytest.raises(RenderError, match="refusing to write"):
            renderer(template=template).render(slipped, snapshot)


def test_rendered_configuration_passes_nginx_t(tmp_path: Path) -> None:
    nginx = require_programs("nginx")["nginx"]
    routes = parse_routes({"routes": [
        {"hosts": ["a" * 63 + "." + "b" * 63 + "." + "c" * 63 + ".example.com"],
         "service": "long", "port": 1},
        {"hosts": ["*.wild.example.com"], "path": "/x/y_z~1", "host": "up.internal",
         "port": 65535, "max_body_size": 0, "websocket": True, "balance": "ip_hash"},
    ]})
    snapshot = {"tasks.long": Endpoints(("10.1.2.3",), "ok"),
                "up.internal": Endpoints(("::1", "127.0.0.1"), "ok")}
    text = renderer(trusted_proxies=["10.0.0.0/8"]).render(routes, snapshot).text
    result = nginx_t(nginx, tmp_path, text)
    assert result.returncode == 0, result.stderr


def nginx_t(nginx: str, tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on this configuration, under a private prefix in `tmp_path`."""
    prefix = tmp_path / "p"
    for sub in ("conf.d", "temp/client_body", "temp/proxy", "temp/fastcgi", "temp/uwsgi",
                "temp/scgi", "logs"):
        (prefix / sub).mkdir(parents=True)
    routes_conf = prefix / "conf.d" / "gateway.conf"
    routes_conf.write_text(text)
    (prefix / "nginx.conf").write_text(render_main_conf(prefix=prefix, routes_conf=routes_conf,
                                                        worker_processes="1"))
    return subprocess.run([nginx, "-e", "stderr", "-p", f"{prefix}/", "-c",
                           str(prefix / "nginx.conf"), "-t"], capture_output=True, text=True)


def test_main_conf_refuses_an_unsafe_prefix() -> None:
    with pytest.raises(RenderError):
        render_main_conf(prefix=Path("/tmp/a b"), routes_conf=Path("/tmp/a b/x.conf"),
                         worker_processes="auto")


def test_generated_text_says_so() -> None:
    text = renderer().render(ROUTES, SNAPSHOT).text
    assert text.startswith("# Generated by gateway-agent")


# -- tls: acme: the challenges go to the controller ------------------------------------------

ACME_ROUTES = parse_routes({"routes": [
    {"hosts": ["a.example.com"], "service": "app", "port": 80,
     "tls": {"acme": True, "redirect": True}},
    {"hosts": ["c.example.com"], "path": "/api", "service": "app", "port": 80, "tls": "acme"},
    {"hosts": ["b.example.com"], "service": "app", "port": 80, "tls": True},
    {"hosts": ["plain.example.com"], "service": "app", "port": 80},
]})
CONTROLLER = (Target("host", "gateway-controller"), 9280)
ACME_SNAPSHOT = {"tasks.app": Endpoints(("10.0.1.3",), "ok"),
                 "gateway-controller": Endpoints(("10.0.0.9",), "ok")}
CHALLENGES = "location ^~ /.well-known/acme-challenge/ {"


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


def acme_plan(tmp_path: Path, ca: TestCA, routes: RouteTable = ACME_ROUTES) -> TlsPlan:
    """Certificates as a gateway has them: a.example.com and c.example.com from the controller
    (agent.gateway.drivers.source writes them), b.example.com from --certs-dir."""
    certs = Certificates(tmp_path / "certs", tmp_path / "store", None,
                         acme_dir=tmp_path / "acme")
    for directory in (certs.certs_dir, tmp_path / "acme"):
        directory.mkdir(exist_ok=True)
    ca.issue("a.example.com").write(tmp_path / "acme", "a.example.com")
    ca.issue("c.example.com").write(tmp_path / "acme", "c.example.com")
    ca.issue("b.example.com").write(certs.certs_dir, "b.example.com")
    plan = certs.plan(routes)
    assert plan is not None
    assert plan.errors == ()
    return plan


def https_renderer() -> Planner:
    return renderer(https_listen="0.0.0.0:8443")


def servers_of(text: str) -> dict[tuple[str, bool], str]:
    """Each server block by (each of its names, HTTPS or not): hosts routed alike share one."""
    out = {}
    for block in text.split("\nserver {")[1:]:
        names = re.search(r"server_name ([^;]*);", block)
        if names is None:  # the agent's status server
            continue
        for name in names.group(1).split():
            out[(name, " ssl" in block.split("\n", 2)[1])] = block
    return out


def challenge_location(block: str) -> str:
    start = block.index(CHALLENGES)
    return block[start: block.index("\n    }", start)]


def test_the_acme_challenges_of_an_acme_host_go_to_the_controller(tmp_path: Path,
                                                                   ca: TestCA) -> None:
    text = https_renderer().render(ACME_ROUTES, ACME_SNAPSHOT, tls=acme_plan(tmp_path, ca),
                                   acme=CONTROLLER).text
    upstream = re.search(r"upstream gateway_acme_controller \{(.*?)\}", text, re.S)
    assert upstream is not None
    assert "server 10.0.0.9:9280 " in upstream.group(1)
    servers = servers_of(text)
    # a redirecting host: everything redirects to HTTPS but the challenges
    a = servers[("a.example.com", False)]
    assert "proxy_pass http://gateway_acme_controller;" in challenge_location(a)
    assert "return 301" not in challenge_location(a)
    assert "return 301 https://$host$request_uri;" in a
    c = servers[("c.example.com", False)]
    assert "proxy_pass http://gateway_acme_controller;" in challenge_location(c)
    # not for a host with its own certificate, nor a plain one, nor over HTTPS
    for key in (("b.example.com", False), ("plain.example.com", False),
                ("a.example.com", True), ("b.example.com", True), ("c.example.com", True)):
        assert CHALLENGES not in servers[key], key
    assert text.count(CHALLENGES) == 2


@pytest.mark.parametrize(("address", "server"), [("10.0.0.7", "10.0.0.7:9280"),
                                                 ("fd00::7", "[fd00::7]:9280")])
def test_a_controller_given_by_its_address_needs_no_lookup(
        tmp_path: Path, ca: TestCA, address: str, server: str) -> None:
    text = https_renderer().render(ACME_ROUTES, {"tasks.app": Endpoints(("10.0.1.3",), "ok")},
                                   tls=acme_plan(tmp_path, ca),
                                   acme=(Target("host", address), 9280)).text
    upstream = re.search(r"upstream gateway_acme_controller \{(.*?)\}", text, re.S)
    assert upstream is not None
    assert f"server {server} " in upstream.group(1)


def test_a_controller_not_found_answers_the_challenges_503(tmp_path: Path,
                                                          ca: TestCA) -> None:
    text = https_renderer().render(ACME_ROUTES, {**ACME_SNAPSHOT, "gateway-controller":
                                                 Endpoints((), "nxdomain")},
                                   tls=acme_plan(tmp_path, ca), acme=CONTROLLER).text
    assert "gateway_acme_controller" not in text
    location = challenge_location(servers_of(text)[("a.example.com", False)])
    assert 'return 503 "503 the controller, which answers ACME challenges, is not known\\n";' \
        in location


def test_no_acme_host_no_controller_upstream(tmp_path: Path, ca: TestCA) -> None:
    routes = parse_routes({"routes": [{"hosts": ["b.example.com"], "service": "app",
                                       "port": 80, "tls": True}]})
    text = https_renderer().render(routes, ACME_SNAPSHOT, tls=acme_plan(tmp_path, ca, routes),
                                   acme=CONTROLLER).text
    assert "gateway_acme_controller" not in text
    assert CHALLENGES not in text


def test_a_configuration_with_acme_passes_nginx_t(tmp_path: Path, ca: TestCA) -> None:
    nginx = require_programs("nginx")["nginx"]
    plan = acme_plan(tmp_path, ca)
    for acme in (CONTROLLER, (Target("host", "fd00::7"), 9280)):
        text = https_renderer().render(ACME_ROUTES, ACME_SNAPSHOT, tls=plan, acme=acme).text
        assert CHALLENGES in text
        result = nginx_t(nginx, tmp_path / acme[0].name.replace(":", "_"), text)
        assert result.returncode == 0, result.stderr


def test_a_route_at_the_challenge_path_cannot_break_the_configuration(
        tmp_path: Path, ca: TestCA) -> None:
    nginx = require_programs("nginx")["nginx"]
    data = {"routes": [
        {"hosts": ["a.example.com"], "service": "app", "port": 80, "tls": "acme"},
        {"hosts": ["a.example.com"], "path": "/.well-known/acme-challenge", "service": "app",
         "port": 80, "tls": "acme"}]}
    try:
        routes = parse_routes(data)
    except RoutesError as exc:  # refused at the edge, naming the place: fine too
        refused = exc.errors
    else:
        refused = []
        text = https_renderer().render(routes, ACME_SNAPSHOT,
                                       tls=acme_plan(tmp_path, ca, routes), acme=CONTROLLER).text
        result = nginx_t(nginx, tmp_path, text)
        assert result.returncode == 0, result.stderr
    assert refused == [] or (refused[0].startswith("routes[1]") and
                             "path '/.well-known/acme-challenge'" in refused[0]), refused
