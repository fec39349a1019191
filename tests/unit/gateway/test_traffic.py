"""The access-log lines: what the template asks nginx to write, what the agent reads and counts."""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from agent.core.routes import RouteTable, parse_routes
from agent.core.settings import SettingsError
from agent.gateway import settings
from agent.gateway.drivers.logfile import ROTATE_SIZE, LogFile, log_path
from agent.gateway.model import Endpoints
from agent.gateway.observe.traffic import (
    _HTTP_FAMILIES,
    DURATION_BUCKETS,
    LOG_FORMAT,
    STATUS_CLASSES,
    Traffic,
    _label,
)
from agent.gateway.plan.desired import Planner
from agent.gateway.plan.mainconf import render_main_conf
from agent.gateway.plan.naming import UNROUTED_ROOT, route_label, route_root
from tests.support import require_programs
from tests.support.logwriter import NginxWriter

ROUTES = parse_routes({"routes": [
    {"hosts": ["managerhttp", "manager.example.com"], "service": "managerhttp", "port": 8888},
    {"hosts": ["manager.example.com"], "path": "/api", "service": "api", "port": 8888},
    {"hosts": ["*.dmz.example.com"], "path": "/x/y_z~1", "service": "dmz", "port": 80},
]})
SNAPSHOT = {"tasks.managerhttp": Endpoints(("10.0.1.3",), "ok"),
            "tasks.api": Endpoints((), "none"), "tasks.dmz": Endpoints(("10.0.2.3",), "ok")}


def record(root: str, fields: str) -> bytes:
    return f"g1|{root}|{fields}".encode()


def exposition(traffic: Traffic) -> str:
    """What the agent's /metrics writes of `traffic`: prometheus_client's text of collect(),
    then the per-route http families."""
    registry = CollectorRegistry()
    registry.register(traffic)
    return generate_latest(registry).decode() + traffic.http_text()


def samples(traffic: Traffic) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(exposition(traffic)):
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


def test_template_writes_the_format_the_agent_reads() -> None:
    text = Planner(listen="8080", status_listen="127.0.0.1:9181",
                    access_log="/p/logs/gateway-metrics.log").render(ROUTES, SNAPSHOT).text
    m = re.search(r"log_format gateway_metrics ((?:'[^']*'\s*)+);", text)
    assert m is not None
    assert "".join(re.findall(r"'([^']*)'", m.group(1))) == LOG_FORMAT
    assert ("access_log /p/logs/gateway-metrics.log gateway_metrics buffer=64k flush=1s;"
            in text)
    # every location of a route names it; every server names no route, for the rest
    roots = re.findall(r"location (?:= |\^~ )?(\S+) \{\n\s+root (\S+);", text)
    assert ("/", route_root(ROUTES.routes[0])) in roots
    assert ("/api", route_root(ROUTES.routes[1])) in roots
    assert ("/api/", route_root(ROUTES.routes[1])) in roots  # also when it answers 503
    # (said once at the http level, which servers inherit)
    assert text.count(f"\nroot {UNROUTED_ROOT};\n") == 1
    assert text.index(f"root {UNROUTED_ROOT};") < text.index("server {")


def test_without_the_feature_nothing_changes() -> None:
    text = Planner(listen="8080", status_listen="127.0.0.1:9181").render(ROUTES, SNAPSHOT).text
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
    routes_conf.write_text(Planner(listen="127.0.0.1:8080", status_listen="127.0.0.1:9181",
                                    access_log=str(prefix / "logs" / "m.log"),
                                    ).render(ROUTES, SNAPSHOT).text)
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


@pytest.mark.parametrize("line", [
    b"",
    b"hello",
    b"g2|/gateway-route/managerhttp|200|0.1|-|-|-|1|1",  # another format
    b"<190>Nov 25 17:11:04 gateway: g1|/gateway-route/managerhttp|200|0.1|-|-|-|1|1",
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
def test_a_malformed_record_counts_as_malformed_and_nothing_else(line: bytes) -> None:
    traffic = following()
    before = samples(traffic)
    traffic.feed(line)
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
    check = subprocess.run([promtool, "check", "metrics"], input=exposition(traffic).encode(),
                           capture_output=True)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


class Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def _cumulative(counts: list[int]) -> list[tuple[str, float]]:
    out, total = [], 0
    for bound, count in zip((*DURATION_BUCKETS, math.inf), counts, strict=True):
        total += count
        out.append(("+Inf" if bound == math.inf else repr(bound), float(total)))
    return out


def _written_by_prometheus_client(traffic: Traffic) -> str:
    """The per-route http families as prometheus_client writes them: the oracle of
    Traffic.http_text, from the same counts."""
    counters = {name: CounterMetricFamily(
        name, text, labels=["route", "status_class"] if name == "gateway_http_requests"
        else ["route"]) for name, kind, text in _HTTP_FAMILIES if kind == "counter"}
    histograms = {name: HistogramMetricFamily(name, text, labels=["route"])
                  for name, kind, text in _HTTP_FAMILIES if kind == "histogram"}
    requests, retries, errors, bytes_in, bytes_out = counters.values()
    duration, upstream = histograms.values()
    traffic.sync()
    for key, stats in traffic._routes.items():
        route = traffic._labels[key]
        for klass, count in zip(STATUS_CLASSES, stats.classes, strict=True):
            requests.add_metric([route, klass], count)
        duration.add_metric([route], _cumulative(stats.duration), stats.duration_sum)
        upstream.add_metric([route], _cumulative(stats.upstream), stats.upstream_sum)
        retries.add_metric([route], stats.retries)
        errors.add_metric([route], stats.errors)
        bytes_in.add_metric([route], stats.bytes_in)
        bytes_out.add_metric([route], stats.bytes_out)
    registry = CollectorRegistry()
    registry.register(Fixed([counters[name] if name in counters else histograms[name]
                             for name, _, _ in _HTTP_FAMILIES]))
    return generate_latest(registry).decode()


def test_the_agent_writes_the_per_route_families_as_prometheus_client_would() -> None:
    """/metrics writes these itself (Traffic.http_text, kept per route until its counts
    change): byte for byte what prometheus_client writes, hostile labels and large counts
    included, and after every change of counts or routes."""
    table = [parse_routes({"routes": [
        {"hosts": ["managerhttp", "manager.example.com"], "service": "managerhttp",
         "port": 8888},
        {"hosts": ["*.dmz.example.com"], "path": "/x/y_z~1+a,b:c@d", "service": "dmz",
         "port": 80},
    ]})]
    traffic = Traffic()
    traffic.follow(lambda: table[0])
    assert traffic.http_text() == _written_by_prometheus_client(traffic)  # all at 0
    roots = [route_root(r) for r in table[0].routes]
    for i, fields in enumerate(["200|0.004|0.003|200|0.003|120|80",
                                "502|1.5|0.5, 1.0|502, 502|0.5, 1.0|9|8",
                                "404|0.0|-|-|-|99|0",
                                "200|0.2|0.2|200|0.2|1234567890123|1"]):
        traffic.feed(record(roots[i % len(roots)].removesuffix("/"), fields), n=1000 * i + 1)
        assert traffic.http_text() == _written_by_prometheus_client(traffic), fields
    table[0] = parse_routes({"routes": [{"hosts": ["new"], "service": "n", "port": 1}]})
    assert traffic.http_text() == _written_by_prometheus_client(traffic)
    assert "managerhttp" not in traffic.http_text()
    only = traffic.http_text(["gateway_upstream_errors_total"])
    assert only.splitlines()[:2] == [
        "# HELP gateway_upstream_errors_total Upstream tries that got no response header "
        "(refused, reset, timed out)", "# TYPE gateway_upstream_errors_total counter"]
    assert all(ln.startswith(("#", "gateway_upstream_errors_total{")) for ln in only.splitlines())


def test_a_label_is_escaped_as_prometheus_client_escapes_it() -> None:
    value = 'a"b\\c\nd'
    family = CounterMetricFamily("x", "x", labels=["route"])
    family.add_metric([value], 1)
    registry = CollectorRegistry()
    registry.register(Fixed([family]))
    line = generate_latest(registry).decode().splitlines()[-1]
    assert line == f'x_total{{route="{_label(value)}"}} 1.0'


# -- the file --------------------------------------------------------------------------------

OK = record("/gateway-route/managerhttp", "200|0.001|0.001|200|0.001|10|10") + b"\n"
FAILED = record("/gateway-route/managerhttp", "502|0.001|0.001|502|0.001|10|10") + b"\n"


def reader(nginx: NginxWriter, rotate_size: int = ROTATE_SIZE) -> tuple[LogFile, Traffic]:
    traffic = following()
    return LogFile(nginx.path, traffic, nginx_pids=nginx.pids, reopen=nginx.reopen,
                   rotate_size=rotate_size), traffic


def counted(traffic: Traffic) -> dict[str, float]:
    m = samples(traffic)
    return {k: m[f'gateway_http_requests_total{{route="managerhttp/",status_class="{k}"}}']
            for k in ("2xx", "5xx")}


def test_each_poll_counts_what_was_appended_once(nginx: NginxWriter) -> None:
    tail, traffic = reader(nginx)
    nginx.write(OK * 1000 + FAILED * 3)
    tail.poll()
    assert counted(traffic) == {"2xx": 1000, "5xx": 3}
    tail.poll()  # nothing new: nothing counted twice
    assert counted(traffic) == {"2xx": 1000, "5xx": 3}
    nginx.write(OK + FAILED[:20])  # a line cut in two by the read waits for its end
    tail.poll()
    assert counted(traffic) == {"2xx": 1001, "5xx": 3}
    nginx.write(FAILED[20:])
    tail.poll()
    assert counted(traffic) == {"2xx": 1001, "5xx": 4}
    assert samples(traffic)['gateway_access_log_records_total{result="malformed"}'] == 0
    tail.close()


def test_rotation_loses_nothing_and_removes_the_old_file(nginx: NginxWriter) -> None:
    tail, traffic = reader(nginx, rotate_size=len(OK) * 100)
    nginx.write(OK * 150)
    tail.poll()
    assert nginx.reopens == 1, "past the size: renamed, and nginx asked to reopen"
    assert (nginx.path.parent / "gateway-metrics.log.1").exists()
    old = os.open(nginx.path.parent / "gateway-metrics.log.1", os.O_WRONLY | os.O_APPEND)
    os.write(old, FAILED * 7)  # a worker's buffer, written to the old file after the rename
    os.close(old)
    nginx.write(OK * 20)  # the new file
    tail.poll()
    assert counted(traffic) == {"2xx": 170, "5xx": 7}
    assert not (nginx.path.parent / "gateway-metrics.log.1").exists()
    assert nginx.path.stat().st_size == len(OK) * 20
    for _ in range(5):  # more rotations, still exact
        nginx.write(OK * 120)
        tail.poll()
        tail.poll()
    assert counted(traffic) == {"2xx": 770, "5xx": 7}
    assert tail.rotations == 6
    tail.close()


def test_the_old_file_is_read_until_nginx_lets_go_of_it(nginx: NginxWriter) -> None:
    tail, traffic = reader(nginx, rotate_size=len(OK) * 10)
    nginx.write(OK * 10)
    tail.poll()
    rotated = nginx.path.parent / "gateway-metrics.log.1"
    holder = subprocess.Popen(["sleep", "60"], pass_fds=[fd := os.open(rotated, os.O_WRONLY
                                                                       | os.O_APPEND)])
    try:
        tail.nginx_pids = lambda: {holder.pid}  # an old worker, finishing its requests
        tail.poll()
        assert rotated.exists(), "an old worker still holds it: it may still write"
        os.write(fd, FAILED * 2)
        holder.kill()
        holder.wait()
        os.close(fd)
        tail.poll()
        assert not rotated.exists()
        assert counted(traffic) == {"2xx": 10, "5xx": 2}
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    tail.close()


def test_a_deleted_file_is_read_to_its_end_and_nginx_reopens(nginx: NginxWriter) -> None:
    tail, traffic = reader(nginx)
    nginx.write(OK * 5)
    tail.poll()
    nginx.write(OK * 3)
    nginx.path.unlink()  # by hand; nginx goes on writing into the deleted file
    nginx.write(OK * 2)
    tail.poll()
    assert nginx.reopens == 1
    assert nginx.path.exists()
    nginx.write(FAILED)
    tail.poll()
    assert counted(traffic) == {"2xx": 10, "5xx": 1}
    tail.close()


def test_no_file_yet_counts_nothing_and_reset_removes_a_previous_run(tmp_path: Path) -> None:
    traffic = following()
    path = tmp_path / "gateway-metrics.log"
    tail = LogFile(path, traffic, nginx_pids=set, reopen=lambda: None)
    tail.poll()
    assert counted(traffic) == {"2xx": 0, "5xx": 0}
    path.write_bytes(OK)
    (tmp_path / "gateway-metrics.log.1").write_bytes(OK)
    tail.reset()
    assert list(tmp_path.iterdir()) == []


def test_the_file_is_in_the_prefix_or_beside_the_configuration() -> None:
    assert log_path(Path("/p"), Path("/etc/nginx")) == Path("/p/logs/gateway-metrics.log")
    assert log_path(None, Path("/etc/nginx")) == Path("/etc/nginx/gateway-metrics.log")

# -- the settings -----------------------------------------------------------------------------

def parse(argv: list[str], env: dict[str, str] | None = None) -> settings.GatewaySettings:
    p = argparse.ArgumentParser()
    settings.add_arguments(p)
    return settings.from_sources(p.parse_args(argv), env or {})


def test_settings_default_to_on() -> None:
    s = parse([])
    assert s.access_log_metrics is True
    assert s.access_log_rotate_size == ROTATE_SIZE
    s = parse(["--access-log-rotate-size", "65536"], {"GATEWAY_ACCESS_LOG_METRICS": "off"})
    assert s.access_log_metrics is False
    assert s.access_log_rotate_size == 65536


def test_settings_refuse_a_bad_switch_or_size_and_the_udp_address_is_gone() -> None:
    with pytest.raises(SettingsError) as info:
        parse(["--access-log-rotate-size", "10"], {"GATEWAY_ACCESS_LOG_METRICS": "maybe"})
    assert "--access-log-rotate-size" in str(info.value)
    assert "GATEWAY_ACCESS_LOG_METRICS" in str(info.value)
    with pytest.raises(SystemExit):
        parse(["--access-log-listen", "127.0.0.1:9182"])
