"""The access-log records: what the template asks nginx to send, and what the agent counts."""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.core.routes import RouteTable, parse_routes
from agent.core.settings import HostPort, SettingsError
from agent.gateway import settings
from agent.gateway.discovery import Endpoints
from agent.gateway.render import Renderer, render_main_conf
from agent.gateway.traffic import (
    LOG_FORMAT,
    UNROUTED_ROOT,
    Receiver,
    Traffic,
    bind,
    kernel_drops,
    route_label,
    route_root,
)
from tests.support import require_programs

ROUTES = parse_routes({"routes": [
    {"hosts": ["managerhttp", "manager.example.com"], "service": "managerhttp", "port": 8888},
    {"hosts": ["manager.example.com"], "path": "/api", "service": "api", "port": 8888},
    {"hosts": ["*.dmz.example.com"], "path": "/x/y_z~1", "service": "dmz", "port": 80},
]})
SNAPSHOT = {"tasks.managerhttp": Endpoints(("10.0.1.3",), "ok"),
            "tasks.api": Endpoints((), "none"), "tasks.dmz": Endpoints(("10.0.2.3",), "ok")}
HEADER = b"<190>Nov 25 17:11:04 gateway: "


def record(root: str, fields: str) -> bytes:
    return HEADER + f"g1|{root}|{fields}".encode()


def samples(traffic: Traffic) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(traffic)
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def following(table: RouteTable = ROUTES) -> Traffic:
    traffic = Traffic()
    traffic.follow(lambda: table)
    return traffic


# -- the labels and the template -------------------------------------------------------------

def test_route_label_is_first_host_and_path() -> None:
    assert [route_label(r) for r in ROUTES.routes] == [
        "managerhttp/", "manager.example.com/api", "*.dmz.example.com/x/y_z~1"]


def test_template_sends_the_format_the_agent_reads() -> None:
    text = Renderer(listen="8080", status_listen="127.0.0.1:9181",
                    access_log="127.0.0.1:40000").render(ROUTES, SNAPSHOT).text
    m = re.search(r"log_format gateway_metrics ((?:'[^']*'\s*)+);", text)
    assert m is not None
    assert "".join(re.findall(r"'([^']*)'", m.group(1))) == LOG_FORMAT
    assert ("access_log syslog:server=127.0.0.1:40000,tag=gateway,nohostname gateway_metrics;"
            in text)
    # every location of a route names it; every server names no route, for the rest
    roots = re.findall(r"location (?:= |\^~ )?(\S+) \{\n\s+root (\S+);", text)
    assert ("/", route_root(ROUTES.routes[0])) in roots
    assert ("/api", route_root(ROUTES.routes[1])) in roots
    assert ("/api/", route_root(ROUTES.routes[1])) in roots  # also when it answers 503
    assert text.count(f"root {UNROUTED_ROOT};") == text.count("listen 8080")


def test_without_the_feature_nothing_changes() -> None:
    text = Renderer(listen="8080", status_listen="127.0.0.1:9181").render(ROUTES, SNAPSHOT).text
    assert "access_log" not in text.replace("access_log off;", "")
    assert "root " not in text
    main = render_main_conf(prefix=Path("/p"), routes_conf=Path("/p/g.conf"),
                            worker_processes="1")
    assert "access_log off;" in main
    assert "access_log off;" not in render_main_conf(
        prefix=Path("/p"), routes_conf=Path("/p/g.conf"), worker_processes="1", access_log=True)


def test_configuration_with_the_access_log_passes_nginx_t(tmp_path: Path) -> None:
    nginx = require_programs("nginx")["nginx"]
    prefix = tmp_path / "p"
    for sub in ("conf.d", "temp/client_body", "temp/proxy", "temp/fastcgi", "temp/uwsgi",
                "temp/scgi", "logs"):
        (prefix / sub).mkdir(parents=True)
    routes_conf = prefix / "conf.d" / "gateway.conf"
    routes_conf.write_text(Renderer(listen="127.0.0.1:8080", status_listen="127.0.0.1:9181",
                                    access_log="[::1]:40000").render(ROUTES, SNAPSHOT).text)
    (prefix / "nginx.conf").write_text(render_main_conf(
        prefix=prefix, routes_conf=routes_conf, worker_processes="1", access_log=True))
    result = subprocess.run([nginx, "-e", "stderr", "-p", f"{prefix}/", "-c",
                             str(prefix / "nginx.conf"), "-t"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# -- counting ---------------------------------------------------------------------------------

def test_nothing_is_exported_until_the_feature_is_on() -> None:
    assert samples(Traffic()) == {}


def test_records_are_counted_per_route_and_status_class() -> None:
    traffic = following()
    manager = "/gateway-route/managerhttp"  # nginx drops the trailing '/' of a root
    for fields in ("200|0.004|0.003|200|0.002|312|96", "204|0.000|0.000|204|0.000|100|80",
                   "503|0.020|-|-|-|180|70", "413|0.001|-|-|-|350|2048"):
        traffic.feed(record(manager, fields))
    traffic.feed(record("/gateway-route/manager.example.com/api", "301|1.5|1.5|301|1.4|5|6"))
    traffic.feed(record(UNROUTED_ROOT, "400|0.000|-|-|-|309|0"))
    m = samples(traffic)
    assert m['gateway_http_requests_total{route="managerhttp/",status_class="2xx"}'] == 2
    assert m['gateway_http_requests_total{route="managerhttp/",status_class="4xx"}'] == 1
    assert m['gateway_http_requests_total{route="managerhttp/",status_class="5xx"}'] == 1
    assert m['gateway_http_requests_total{route="managerhttp/",status_class="3xx"}'] == 0
    assert m['gateway_http_requests_total{route="manager.example.com/api",'
             'status_class="3xx"}'] == 1
    assert m['gateway_http_requests_total{route="unrouted",status_class="4xx"}'] == 1
    # a series for every route in use, at 0 until it has traffic
    assert m['gateway_http_requests_total{route="*.dmz.example.com/x/y_z~1",'
             'status_class="2xx"}'] == 0
    assert m['gateway_http_request_duration_seconds_count{route="managerhttp/"}'] == 4
    assert m['gateway_http_request_duration_seconds_bucket{le="0.001",route="managerhttp/"}'] \
        == 2
    assert m['gateway_http_request_duration_seconds_bucket{le="0.005",route="managerhttp/"}'] \
        == 3
    assert m['gateway_http_request_duration_seconds_sum{route="managerhttp/"}'] == \
        pytest.approx(0.025)
    assert m['gateway_upstream_response_duration_seconds_count{route="managerhttp/"}'] == 2
    assert m['gateway_http_response_bytes_total{route="managerhttp/"}'] == 312 + 100 + 180 + 350
    assert m['gateway_http_request_bytes_total{route="managerhttp/"}'] == 96 + 80 + 70 + 2048
    assert m['gateway_access_log_records_total{result="ok"}'] == 6


def test_retries_and_errors_come_from_the_list_of_tries() -> None:
    traffic = following()
    api = "/gateway-route/manager.example.com/api"
    traffic.feed(record(api, "200|0.010|0.000, 0.000, 0.008|502, 504, 200|-, -, 0.007|9|9"))
    traffic.feed(record(api, "502|3.000|0.000, 3.000 : 0.001|502, 504 : 502|-, - : -|9|9"))
    traffic.feed(record(api, "200|0.002|0.002|200|0.001|9|9"))
    m = samples(traffic)
    route = 'route="manager.example.com/api"'
    assert m[f"gateway_upstream_retries_total{{{route}}}"] == 2 + 2
    assert m[f"gateway_upstream_errors_total{{{route}}}"] == 2 + 3
    assert m[f"gateway_upstream_response_duration_seconds_sum{{{route}}}"] == \
        pytest.approx(0.008 + 3.001 + 0.002)


@pytest.mark.parametrize("datagram", [
    b"",
    b"hello",
    HEADER + b"g2|/gateway-route/managerhttp|200|0.1|-|-|-|1|1",  # another format
    b"<190>Nov 25 17:11:04 other: g1|/gateway-route/managerhttp|200|0.1|-|-|-|1|1",
    record("/gateway-route/managerhttp", "200|0.1|-|-|-|1"),
    record("/gateway-route/managerhttp", "200|0.1|-|-|-|1|1|extra"),
    record("/gateway-route/managerhttp", "2000|0.1|-|-|-|1|1"),
    record("/gateway-route/managerhttp", "600|0.1|-|-|-|1|1"),
    record("/gateway-route/managerhttp", "20x|0.1|-|-|-|1|1"),
    record("/gateway-route/managerhttp", "200|nan|-|-|-|1|1"),
    record("/gateway-route/managerhttp", "200|inf|-|-|-|1|1"),
    record("/gateway-route/managerhttp", "200|-0.5|-|-|-|1|1"),
    record("/gateway-route/managerhttp", "200|0.1|-|-|-|-1|1"),
    record("/gateway-route/managerhttp", "200|0.1|x|200|0.1|1|1"),
    record("/gateway-route/managerhttp", "200|0.1|0.1, y|200|0.1|1|1"),
])
def test_a_malformed_record_counts_as_malformed_and_nothing_else(datagram: bytes) -> None:
    traffic = following()
    before = samples(traffic)
    traffic.feed(datagram)
    after = samples(traffic)
    assert after.pop('gateway_access_log_records_total{result="malformed"}') == 1
    before.pop('gateway_access_log_records_total{result="malformed"}')
    assert after == before


def test_a_record_naming_no_route_in_use_creates_no_series() -> None:
    traffic = following()
    traffic.feed(record("/gateway-route/attacker.example.com", "200|0.1|-|-|-|1|1"))
    traffic.feed(record("/etc", "200|0.1|-|-|-|1|1"))
    m = samples(traffic)
    assert m['gateway_access_log_records_total{result="unknown_route"}'] == 2
    routes = {re.search(r'route="([^"]*)"', k).group(1)  # type: ignore[union-attr]
              for k in m if "route=" in k}
    assert routes == {route_label(r) for r in ROUTES.routes} | {"unrouted"}


def test_series_follow_the_routes_in_use() -> None:
    table = [ROUTES]
    traffic = Traffic()
    traffic.follow(lambda: table[0])
    traffic.feed(record("/gateway-route/managerhttp", "200|0.1|-|-|-|1|1"))
    table[0] = RouteTable(ROUTES.routes[:1])
    traffic.feed(record("/gateway-route/managerhttp", "200|0.1|-|-|-|1|1"))
    m = samples(traffic)  # the routes that stayed keep counting; removed ones go
    assert m['gateway_http_requests_total{route="managerhttp/",status_class="2xx"}'] == 2
    assert not any("manager.example.com/api" in k for k in m)
    table[0] = parse_routes({"routes": [{"hosts": ["new"], "service": "n", "port": 1}]})
    m = samples(traffic)
    assert m['gateway_http_requests_total{route="new/",status_class="2xx"}'] == 0
    assert not any('"managerhttp/"' in k for k in m)


def test_exposition_passes_promtool_check_metrics() -> None:
    promtool = require_programs("promtool")["promtool"]
    traffic = following()
    traffic.feed(record("/gateway-route/managerhttp", "200|0.1|0.1|200|0.1|1|1"))
    registry = CollectorRegistry()
    registry.register(traffic)
    check = subprocess.run([promtool, "check", "metrics"], input=generate_latest(registry),
                           capture_output=True)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


# -- the socket -------------------------------------------------------------------------------

async def wait_counted(traffic: Traffic, total: int) -> dict[str, float]:
    for _ in range(500):
        m = samples(traffic)
        if sum(m[f'gateway_access_log_records_total{{result="{r}"}}']
               for r in ("ok", "dropped")) >= total:
            break
        await asyncio.sleep(0.01)
    return m


async def test_receiver_counts_every_datagram_that_arrives() -> None:
    traffic = following()
    receiver = Receiver(bind("127.0.0.1", 0), traffic)
    receiver.start()
    try:
        host, port = receiver.address.split(":")
        assert port != "0"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            for _ in range(30):  # more than one batch of reads in all
                for _ in range(100):
                    out.sendto(record("/gateway-route/managerhttp", "200|0.001|-|-|-|1|1"),
                               (host, int(port)))
                await asyncio.sleep(0.001)  # the receiver's turn
        m = await wait_counted(traffic, 3000)
        assert m['gateway_access_log_records_total{result="ok"}'] == 3000
        assert m['gateway_access_log_records_total{result="dropped"}'] == 0
    finally:
        receiver.close()


async def test_datagrams_the_kernel_dropped_are_counted_as_dropped() -> None:
    sock = bind("127.0.0.1", 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # room for a few records
    traffic = following()
    receiver = Receiver(sock, traffic)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            for _ in range(500):  # nobody reads yet: most overflow the queue
                out.sendto(record("/gateway-route/managerhttp", "200|0.001|-|-|-|1|1"),
                           sock.getsockname())
        receiver.start()
        m = await wait_counted(traffic, 500)
        ok = m['gateway_access_log_records_total{result="ok"}']
        dropped = m['gateway_access_log_records_total{result="dropped"}']
        assert ok > 0
        assert dropped > 0
        assert ok + dropped == 500
    finally:
        receiver.close()


def test_kernel_drops_are_read_for_this_socket_only(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        assert kernel_drops(sock) == 0  # the real /proc/net/udp
        inode = Path(f"/proc/self/fd/{sock.fileno()}").readlink().name.strip("socket:[]")
        (tmp_path / "udp").write_text(
            "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   "
            "uid  timeout inode ref pointer drops\n"
            "  1: 0100007F:A000 00000000:0000 07 00000000:00000000 00:00000000 00000000     "
            "0        0 1 2 0000000000000000 99\n"
            f"  2: 0100007F:9C40 00000000:0000 07 00000000:00000000 00:00000000 00000000     "
            f"0        0 {inode} 2 0000000000000000 17\n")
        assert kernel_drops(sock, tmp_path) == 17
        assert kernel_drops(sock, tmp_path / "missing") is None


def test_bind_fails_on_a_port_in_use() -> None:
    first = bind("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        with pytest.raises(OSError, match="in use"):
            bind("127.0.0.1", port)
    finally:
        first.close()



# -- the settings -----------------------------------------------------------------------------

def parse(argv: list[str], env: dict[str, str] | None = None) -> settings.GatewaySettings:
    p = argparse.ArgumentParser()
    settings.add_arguments(p)
    return settings.from_sources(p.parse_args(argv), env or {})


def test_settings_default_to_off_and_a_free_loopback_port() -> None:
    s = parse([])
    assert s.access_log_metrics is False
    assert s.access_log_listen == HostPort("127.0.0.1", 0)
    s = parse(["--access-log-listen", "[::1]:0"], {"GATEWAY_ACCESS_LOG_METRICS": "on"})
    assert s.access_log_metrics is True
    assert s.access_log_listen == HostPort("::1", 0)
    assert parse(["--access-log-listen", "127.0.0.2:9182"]).access_log_listen == \
        HostPort("127.0.0.2", 9182)


def test_settings_refuse_a_non_loopback_address_or_a_bad_switch() -> None:
    with pytest.raises(SettingsError) as info:
        parse(["--access-log-listen", "0.0.0.0:9182"], {"GATEWAY_ACCESS_LOG_METRICS": "maybe"})
    assert "--access-log-listen" in str(info.value)
    assert "loopback" in str(info.value)
    assert "GATEWAY_ACCESS_LOG_METRICS" in str(info.value)
