"""The commands as a user types them, and the agent without --nginx-prefix (system layout)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import TASK_ADDRESSES, write_routes
from tests.support import require_programs, wait_until
from tests.support.gateway import Agent, Dnsmasq, Upstream


def gateway_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True,
                          text=True, timeout=60)


def test_check_exits_0_for_a_good_file_and_1_with_every_error(tmp_path: Path) -> None:
    good = write_routes(tmp_path / "good.yaml", [
        {"hosts": ["a.example.com"], "service": "a", "port": 80},
        {"hosts": ["b.example.com"], "service": "b", "port": 80, "zone": "dmz"}])
    done = gateway_agent("check", "--routes", str(good))
    assert done.returncode == 0, done.stderr
    assert "ok, 2 routes" in done.stdout
    assert "1 routes" in gateway_agent("check", "--routes", str(good), "--zone", "dmz").stdout

    bad = write_routes(tmp_path / "bad.yaml", [
        {"hosts": ["a.example.com"], "service": "a", "port": "eighty"},
        {"hosts": ["b.example.com", "{evil}"], "host": "x;y", "port": 80}])
    done = gateway_agent("check", "--routes", str(bad))
    assert done.returncode == 1
    assert "3 error(s)" in done.stderr
    for place in ("routes[0].port", "routes[1].hosts[1]", "routes[1].host"):
        assert place in done.stderr


def test_settings_come_from_the_environment_too(tmp_path: Path) -> None:
    good = write_routes(tmp_path / "good.yaml", [{"hosts": ["a"], "service": "a", "port": 1}])
    done = subprocess.run([sys.executable, "-m", "agent", "check"], capture_output=True,
                          text=True, env={"GATEWAY_ROUTES": str(good), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    done = gateway_agent("run", "--routes", str(good), "--poll-interval", "-1")
    assert done.returncode == 2
    assert "--poll-interval" in done.stderr


def test_render_prints_the_configuration_for_a_snapshot(tmp_path: Path) -> None:
    routes = write_routes(tmp_path / "routes.yaml", [
        {"hosts": ["managerhttp"], "service": "managerhttp", "port": 8888},
        {"hosts": ["dmzhttp"], "service": "dmzhttp", "port": 8888}])
    snapshot = tmp_path / "snapshot.json"
    snapshot.write_text(json.dumps({"managerhttp": ["10.0.1.4", "10.0.1.3"]}))
    # as `run` serves it: nginx resolves the tasks of a service that has some
    done = gateway_agent("render", "--routes", str(routes), "--endpoints", str(snapshot))
    assert done.returncode == 0, done.stderr
    assert "server tasks.managerhttp:8888 resolve" in done.stdout
    assert "resolver 127.0.0.1:9182 ipv6=off;" in done.stdout  # the agent's own (--resolver-listen)
    assert "no running task of dmzhttp" in done.stdout
    assert "10.0.1.3" not in done.stdout
    static = gateway_agent("render", "--routes", str(routes), "--endpoints", str(snapshot),
                           "--upstream-mode", "static")
    assert static.returncode == 0, static.stderr
    assert "server 10.0.1.3:8888" in static.stdout
    assert "server 10.0.1.4:8888" in static.stdout
    assert "resolve" not in static.stdout
    assert done.stdout == gateway_agent("render", "--routes", str(routes), "--endpoints",
                                        str(snapshot)).stdout

    snapshot.write_text(json.dumps({"managerhttp": ["10.0.1.3; include /etc/passwd"]}))
    done = gateway_agent("render", "--routes", str(routes), "--endpoints", str(snapshot))
    assert done.returncode == 1
    assert "does not appear to be an IPv4 or IPv6 address" in done.stderr


def test_system_layout_writes_conf_d_default_conf(
        tmp_path: Path, dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int) -> None:
    """Without --nginx-prefix the agent writes conf.d/default.conf beside a main nginx.conf
    that includes conf.d/*.conf, as in the official nginx image."""
    require_programs("nginx")
    conf_dir = tmp_path / "etc-nginx"
    (conf_dir / "conf.d").mkdir(parents=True)
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / "temp" / sub).mkdir(parents=True)
    (conf_dir / "nginx.conf").write_text(f"""
worker_processes 1;
pid {tmp_path}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    client_body_temp_path {tmp_path}/temp/client_body;
    proxy_temp_path {tmp_path}/temp/proxy;
    fastcgi_temp_path {tmp_path}/temp/fastcgi;
    uwsgi_temp_path {tmp_path}/temp/uwsgi;
    scgi_temp_path {tmp_path}/temp/scgi;
    access_log off;
    include {conf_dir}/conf.d/*.conf;
}}
""")
    dns.set("tasks.managerhttp", [TASK_ADDRESSES[0]])
    routes = write_routes(tmp_path / "routes.yaml", [
        {"hosts": ["managerhttp"], "service": "managerhttp", "port": upstream_port}])
    agent = Agent(tmp_path, routes, dns.nameserver)
    prefix_flag = agent.args.index("--nginx-prefix")
    del agent.args[prefix_flag:prefix_flag + 2]
    agent.args += ["--nginx-conf-dir", str(conf_dir)]
    try:
        agent.start()
        assert agent.get("managerhttp") == (200, "task1")
        live = (conf_dir / "conf.d" / "default.conf").read_text()
        assert live.startswith("# Generated by gateway-agent")
        dns.set("tasks.managerhttp", TASK_ADDRESSES[:2])
        wait_until(lambda: agent.backends_seen("managerhttp", 8) == {"task1", "task2"}, 5,
                   "the second task in the system layout")
        assert sorted(p.name for p in (conf_dir / "conf.d").iterdir()) == ["default.conf"]
    finally:
        assert agent.stop() == 0


def test_render_prints_what_run_serves_for_https_and_acme(tmp_path: Path) -> None:
    """A route with `tls` gets its HTTPS server from a certificate in --certs-dir that passes
    the checks; a `tls: acme` host sends the challenges to the controller of --routes-url."""
    from tests.support.tlsca import TestCA

    ca = TestCA()
    certs = tmp_path / "certs"
    certs.mkdir()
    ca.issue("app.example.test").write(certs, "app.example.test")
    routes = write_routes(tmp_path / "routes.yaml", [
        {"hosts": ["app.example.test"], "service": "app", "port": 80,
         "tls": {"redirect": True}},
        {"hosts": ["shop.example.com"], "service": "shop", "port": 80, "tls": "acme"}])
    bundle = ca.write_bundle(tmp_path / "roots.pem")
    snapshot = tmp_path / "snapshot.json"  # the controller's address, as discovery finds it
    snapshot.write_text(json.dumps({"gateway-controller": ["10.0.9.2"]}))
    done = gateway_agent("render", "--routes", str(routes), "--certs-dir", str(certs),
                         "--tls-ca-bundle", str(bundle), "--endpoints", str(snapshot),
                         "--routes-url", "http://gateway-controller:9280/routes")
    assert done.returncode == 0, done.stderr
    assert "listen 0.0.0.0:8443 ssl" in done.stdout
    assert "server_name app.example.test" in done.stdout
    assert "ssl_certificate " in done.stdout
    assert "/.well-known/acme-challenge/" in done.stdout
    assert "server 10.0.9.2:9280" in done.stdout
    assert "proxy_pass http://gateway_acme_controller;" in done.stdout
    # without the certificate there is no HTTPS server for the host, and without a controller
    # the challenges go nowhere
    bare = gateway_agent("render", "--routes", str(routes), "--certs-dir", str(tmp_path))
    assert bare.returncode == 0, bare.stderr
    assert "ssl_certificate " not in bare.stdout
    assert "gateway_acme_controller" not in bare.stdout
