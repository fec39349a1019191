"""Access-log lines to OpenTelemetry spans (observe/spans.py), the sampling nginx is told
(plan/traces.py) and the tracing flags; the export to a real receiver is in
tests/integration/test_traces.py."""

from __future__ import annotations

import argparse
import re
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.trace.status import StatusCode

from agent.core.routes import parse_routes
from agent.core.settings import SettingsError
from agent.gateway import settings
from agent.gateway.observe.spans import LINE_FIELDS, Spans, sampled, span_of
from agent.gateway.observe.traffic import Traffic
from agent.gateway.plan.desired import Planner
from agent.gateway.plan.observe import TRACE_FIELDS, log_plan
from agent.gateway.plan.traces import sample_percent, sample_ratio, sampling

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
ROUTES = parse_routes({"routes": [{"hosts": ["shop.example"], "service": "shop", "port": 80}]})


def line(status: str = "200", parent: str = PARENT, flags: str = "01",
         path: str = "/cart/items", host: str = "shop.example", upstream: str = "10.0.1.3:80",
         msec: str = "1733520000.250", request_time: str = "0.042") -> bytes:
    return "|".join([
        "g2", "/gateway-route/shop.example", status, request_time, "0.040", status, "0.039",
        "512", "128", msec, TRACE, SPAN, parent, "POST", upstream, flags, "req-1", host,
        path]).encode()


def fields(raw: bytes) -> list[bytes]:
    return raw.split(b"|", LINE_FIELDS - 1)


def test_a_line_becomes_the_server_span_nginx_measured() -> None:
    span = span_of(fields(line()), "shop.example/", "shop")
    assert span.kind is SpanKind.SERVER
    assert span.name == "POST shop.example/"
    assert span.context is not None
    assert span.parent is not None
    # the ids of the traceparent the task got: the task's spans are this span's children
    assert (span.context.trace_id, span.context.span_id) == (int(TRACE, 16), int(SPAN, 16))
    assert span.context.trace_flags.sampled
    assert (span.parent.trace_id, span.parent.span_id) == (int(TRACE, 16), int(PARENT, 16))
    assert span.parent.is_remote
    # ends when nginx logged it, lasts $request_time, exactly (integer nanoseconds)
    assert span.end_time == 1_733_520_000_250_000_000
    assert span.start_time == 1_733_520_000_208_000_000
    assert dict(span.attributes or {}) == {
        "http.request.method": "POST", "url.path": "/cart/items",
        "server.address": "shop.example", "http.response.status_code": 200,
        "gateway.route": "shop.example/", "gateway.service": "shop",
        "gateway.request_id": "req-1", "gateway.upstream.address": "10.0.1.3:80",
        "gateway.upstream.status": "200", "gateway.upstream.response_time": "0.040",
        "gateway.upstream.header_time": "0.039"}
    assert span.status.status_code is StatusCode.UNSET


def test_a_5xx_is_an_error_and_a_trace_started_here_has_no_parent() -> None:
    span = span_of(fields(line(status="502", parent="")), "shop.example/", "shop")
    assert span.status.status_code is StatusCode.ERROR
    assert span.parent is None
    assert span_of(fields(line(status="404")), "x/", "").status.status_code is StatusCode.UNSET


def test_an_unrouted_request_is_named_by_its_method_and_keeps_a_path_with_bars() -> None:
    span = span_of(fields(line(path="/a|b|c", host="", upstream="-")), "unrouted", "")
    assert span.name == "POST"
    attributes = dict(span.attributes or {})
    assert attributes["url.path"] == "/a|b|c"
    assert "server.address" not in attributes
    assert "gateway.upstream.address" not in attributes
    assert "gateway.service" not in attributes
    # a route that proxies to no service (a redirect) is still named by its route
    assert span_of(fields(line()), "old.example/", "").name == "POST old.example/"


@pytest.mark.parametrize("bad", [
    {"status": "2x0"}, {"parent": "00f067aa0ba902b"}, {"parent": "0" * 16},
    {"msec": "1733520000.2.5"}, {"msec": "-1.0"}, {"request_time": "1e3"}])
def test_a_line_that_does_not_parse_is_refused(bad: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"^(status|id|time)$"):
        span_of(fields(line(**bad)), "shop.example/", "shop")


@given(st.lists(st.binary(max_size=40), min_size=LINE_FIELDS, max_size=LINE_FIELDS))
def test_hostile_fields_give_a_span_or_a_value_error(raw: list[bytes]) -> None:
    try:
        span = span_of(raw, "r", "s")
    except ValueError:
        return
    assert span.context is not None


def test_the_sampled_flag_is_the_lowest_bit_of_the_flags() -> None:
    assert sampled(fields(line(flags="01")))
    assert sampled(fields(line(flags="03")))
    assert not sampled(fields(line(flags="00")))
    assert not sampled(fields(line(flags="zz")))


def test_traffic_hands_traced_lines_over_and_still_counts_them() -> None:
    traffic = Traffic()
    traffic.follow(lambda: ROUTES)
    got: list[tuple[list[bytes], str]] = []
    traffic.spans = lambda f, route: got.append((f, route))
    traffic.feed(line(path="/x|y"), 1)
    traffic.feed(line().rsplit(b"|", 2)[0], 1)  # the host and the path missing
    assert traffic.results["ok"] == 1
    assert traffic.results["malformed"] == 1
    assert [(f[-1], route) for f, route in got] == [(b"/x|y", "shop.example/")]


class Failing(InMemorySpanExporter):
    def export(self, spans: object) -> SpanExportResult:  # type: ignore[override]
        return SpanExportResult.FAILURE


def test_spans_are_queued_exported_and_counted() -> None:
    exporter = InMemorySpanExporter()
    counts: Counter[str] = Counter()
    spans = Spans(exporter, lambda result, n: counts.update({result: n}))
    spans.follow(lambda: ROUTES)
    spans.start()
    spans.offer(fields(line()), "shop.example/")
    spans.offer(fields(line(flags="00")), "shop.example/")
    spans.offer(fields(line(status="bad")), "shop.example/")
    spans.close()
    [span] = exporter.get_finished_spans()
    assert dict(span.attributes or {})["gateway.service"] == "shop"
    assert counts == {"exported": 1, "malformed": 1}


def test_a_full_queue_drops_and_a_failed_export_is_counted() -> None:
    counts: Counter[str] = Counter()
    spans = Spans(Failing(), lambda result, n: counts.update({result: n}), queue_size=2)
    for _ in range(5):  # the thread not started yet: nothing takes from the queue
        spans.offer(fields(line()), "shop.example/")
    assert counts == {"dropped": 3}
    spans.start()
    spans.close()
    assert counts == {"dropped": 3, "failed": 2}


def test_sampling_is_written_for_nginx_as_a_split_or_fixed_flags() -> None:
    assert sampling(1.0) == {"trace_new_flags": "01", "trace_sample_percent": None}
    assert sampling(0.0) == {"trace_new_flags": "00", "trace_sample_percent": None}
    assert sampling(0.25) == {"trace_new_flags": None, "trace_sample_percent": "25.00"}
    assert sample_percent(0.00001) is None  # below nginx's 0.01 %: none
    assert sample_percent(0.123456) == "12.35"
    for bad in ("-0.1", "1.5", "nan"):
        with pytest.raises(ValueError, match="not a ratio"):
            sample_ratio(bad)


def parse(argv: list[str]) -> settings.GatewaySettings:
    p = argparse.ArgumentParser()
    settings.add_arguments(p)
    return settings.from_sources(p.parse_args(argv), {})


def test_tracing_flags_are_off_by_default_and_validated_naming_the_flag() -> None:
    s = parse([])
    assert (s.otlp_endpoint, s.trace_sample_ratio) == (None, 1.0)
    s = parse(["--otlp-endpoint", "http://otel-collector:4318/v1/traces"])
    assert s.otlp_endpoint == "http://otel-collector:4318/v1/traces"
    for bad in ("ftp://collector/v1/traces", "collector:4318", "http://", "http://a b/",
                "file:///etc/passwd", "http://collector:99999/", "javascript:alert(1)"):
        with pytest.raises(SettingsError, match="--otlp-endpoint"):
            parse(["--otlp-endpoint", bad])
    with pytest.raises(SettingsError, match="--trace-sample-ratio"):
        parse(["--trace-sample-ratio", "2"])


def test_the_template_writes_the_trace_fields_for_sampled_requests_only() -> None:
    text = Planner(listen="8080", status_listen="127.0.0.1:9181", access_log="/p/m.log",
                   logs=log_plan("off", "", trace=True, sample=0.5)).render(ROUTES, {}).text
    formats = {name: "".join(re.findall(r"'([^']*)'", body)) for name, body in
               re.findall(r"log_format (gateway_\w+) ((?:'[^']*'\s*)+);", text)}
    assert formats["gateway_traced"] == formats["gateway_metrics"].replace("g1|", "g2|", 1) \
        + "|" + TRACE_FIELDS
    assert "access_log /p/m.log gateway_metrics buffer=64k flush=1s if=$gateway_untraced;" in text
    assert "access_log /p/m.log gateway_traced buffer=64k flush=1s if=$gateway_traced;" in text
    assert "50.00% 01;" in text
    # the line the agent reads is the line nginx writes: as many fields as span_of reads
    assert formats["gateway_traced"].count("|") == LINE_FIELDS - 1
    off = Planner(listen="8080", status_listen="127.0.0.1:9181", access_log="/p/m.log",
                  logs=log_plan("off", "")).render(ROUTES, {}).text
    assert "gateway_traced" not in off
    assert "gateway_trace_sampled" not in off


def test_run_refuses_traces_without_the_lines_they_are_made_of(
        capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import main

    code = main(["run", "--routes", "/nonexistent/routes.yml", "--otlp-endpoint",
                 "http://otel-collector:4318/v1/traces", "--access-log-metrics", "off"])
    assert code == 2
    assert "--otlp-endpoint needs --access-log-metrics on" in capsys.readouterr().err
