from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from agent.discovery import Endpoints
from agent.render import Renderer, RenderError, nginx_token, render_main_conf, upstream_name
from agent.routes import Target, parse_routes, parse_routes_text
from tests.support import require_programs

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


def renderer(**kw: object) -> Renderer:
    args: dict[str, object] = {"listen": "0.0.0.0:8080", "status_listen": "127.0.0.1:9181"}
    args.update(kw)
    return Renderer(**args)  # type: ignore[arg-type]


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
    assert "keepalive 64;" in manager.group(1)
    dmz = re.search(r"upstream service_dmzhttp_8888_least_conn \{(.*?)\}", text, re.S)
    assert dmz is not None
    assert "least_conn;" in dmz.group(1)
    assert "server [fd00::5]:8888" in dmz.group(1)
    assert 'proxy_set_header Connection "";' in text
    assert "proxy_set_header Upgrade $http_upgrade;" in text  # the websocket route
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


def test_a_user_template_gets_the_same_filter(tmp_path: Path) -> None:
    template = tmp_path / "mine.j2"
    template.write_text("{% for s in servers %}{{ s.names | join(' ') }}\n{% endfor %}"
                        "{{ 'a;b' | nginx }}\n{{ generation }}\n")
    with pytest.raises(RenderError):
        renderer(template=template).render(ROUTES, SNAPSHOT)


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
    prefix = tmp_path / "p"
    for sub in ("conf.d", "temp/client_body", "temp/proxy", "temp/fastcgi", "temp/uwsgi",
                "temp/scgi", "logs"):
        (prefix / sub).mkdir(parents=True)
    routes_conf = prefix / "conf.d" / "gateway.conf"
    routes_conf.write_text(renderer(trusted_proxies=["10.0.0.0/8"]).render(routes, snapshot)
                           .text)
    (prefix / "nginx.conf").write_text(render_main_conf(prefix=prefix, routes_conf=routes_conf,
                                                        worker_processes="1"))
    result = subprocess.run([nginx, "-e", "stderr", "-p", f"{prefix}/", "-c",
                             str(prefix / "nginx.conf"), "-t"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_main_conf_refuses_an_unsafe_prefix() -> None:
    with pytest.raises(RenderError):
        render_main_conf(prefix=Path("/tmp/a b"), routes_conf=Path("/tmp/a b/x.conf"),
                         worker_processes="auto")


def test_generated_text_says_so() -> None:
    text = renderer().render(ROUTES, SNAPSHOT).text
    assert text.startswith("# Generated by gateway-agent")
