"""OpenTelemetry traces end to end (docs/logs.md, --otlp-endpoint): real requests through the
real agent and nginx to a task that echoes the traceparent it got, and a real OTLP/HTTP
receiver on loopback that decodes what the agent's exporter sends (ExportTraceServiceRequest,
protobuf, with opentelemetry-proto)."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.integration.conftest import TASK_ADDRESSES
from tests.integration.test_request_ids import TRACEPARENT, log_line
from tests.support import free_port, wait_until
from tests.support.gateway import Agent, Dnsmasq, Upstream, http_get

T1 = TASK_ADDRESSES[0]
StartAgent = Callable[..., Agent]
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        with self.server.lock:
            self.server.exports += 1
            self.server.paths.append(self.path)
            for resource_spans in request.resource_spans:
                attrs = {a.key: a.value.string_value
                         for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.server.spans.append((attrs, span))
        if self.server.delay:
            time.sleep(self.server.delay)
        data = ExportTraceServiceResponse().SerializeToString()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the exporter gave up waiting (the slow receiver)
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Receiver(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # the slow handler's sleep does not hold the test's end
    lock: threading.Lock
    spans: list[tuple[dict[str, str], Span]]
    paths: list[str]
    exports: int
    delay: float


class Receiver:
    """An OTLP/HTTP traces receiver on loopback; `delay` seconds of sleep per export."""

    def __init__(self, port: int, delay: float = 0.0) -> None:
        self.server = _Receiver(("127.0.0.1", port), _Handler)
        self.server.lock = threading.Lock()
        self.server.spans, self.server.paths = [], []
        self.server.exports = 0
        self.server.delay = delay
        self.url = f"http://127.0.0.1:{port}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def spans(self, trace_id: str) -> list[Span]:
        with self.server.lock:
            return [s for _, s in self.server.spans if s.trace_id.hex() == trace_id]

    def span(self, trace_id: str) -> Span:
        found = wait_until(lambda: self.spans(trace_id), 10, f"the span of trace {trace_id}")
        assert len(found) == 1, found
        return found[0]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(free_port())
    yield r
    r.stop()


def start(dns: Dnsmasq, start_agent: StartAgent, upstream_port: int, *extra: str) -> Agent:
    dns.set("tasks.managerhttp", [T1])
    dns.set("tasks.broken", [T1])
    return start_agent([{"hosts": ["managerhttp"], "service": "managerhttp",
                         "port": upstream_port},
                        # a service whose tasks refuse connections: nginx answers 502
                        {"hosts": ["broken"], "service": "broken", "port": free_port(T1)}],
                       *extra)


def seen(agent: Agent, traceparent: str | None = None, host: str = "managerhttp",
         ) -> tuple[int, dict[str, str], dict[str, str]]:
    """(status, the headers the task got (none at a 502), the headers the client got)."""
    headers = {"traceparent": traceparent} if traceparent else {}
    status, body, got = http_get(agent.port, host, "/headers", headers=headers)
    return status, json.loads(body) if status == 200 else {}, got


def attributes(span: Span) -> dict[str, object]:
    out: dict[str, object] = {}
    for a in span.attributes:
        kind = a.value.WhichOneof("value")
        out[a.key] = getattr(a.value, kind) if kind else None
    return out


def test_each_request_is_a_span_joined_with_the_tasks_and_sampled_as_told(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int, start_agent: StartAgent,
        receiver: Receiver) -> None:
    agent = start(dns, start_agent, upstream_port, "--otlp-endpoint", receiver.url)
    # no traceparent from the client: the trace starts here, the task's parent is this span
    status, task, client = seen(agent)
    assert status == 200
    m = TRACEPARENT.fullmatch(task["traceparent"])
    assert m is not None
    trace, span_id = m.group(1), m.group(2)
    assert m.group(3) == "01"
    span = receiver.span(trace)
    assert span.span_id.hex() == span_id
    assert span.parent_span_id == b""
    assert span.kind == Span.SPAN_KIND_SERVER
    assert span.name == "GET managerhttp/"
    attrs = attributes(span)
    assert attrs["gateway.route"] == "managerhttp/"
    assert attrs["gateway.service"] == "managerhttp"
    assert attrs["http.request.method"] == "GET"
    assert attrs["url.path"] == "/headers"
    assert attrs["server.address"] == "managerhttp"
    assert attrs["http.response.status_code"] == 200
    assert attrs["gateway.request_id"] == client["x-request-id"]
    assert attrs["gateway.upstream.address"] == f"{T1}:{upstream_port}"
    assert span.status.code == Status.STATUS_CODE_UNSET
    # the duration is nginx's own $request_time, the one the JSON access log shows
    line = log_line(agent, client["x-request-id"])
    assert span.end_time_unix_nano - span.start_time_unix_nano == \
        round(line["request_time"] * 1000) * 1_000_000
    assert abs(span.end_time_unix_nano / 1e9 - time.time()) < 60
    assert receiver.server.paths[0] == "/v1/traces"
    with receiver.server.lock:
        resource = receiver.server.spans[0][0]
    assert resource["service.name"] == "swarm-gateway"

    # a client's sampled traceparent: its trace goes on, the client's span is the parent
    status, task, _ = seen(agent, f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")
    m = TRACEPARENT.fullmatch(task["traceparent"])
    assert m is not None
    assert m.group(1) == CLIENT_TRACE
    span = receiver.span(CLIENT_TRACE)
    assert span.parent_span_id.hex() == CLIENT_SPAN
    assert span.span_id.hex() == m.group(2)

    # a client's unsampled trace sends nothing (parent-based), a 502 is an error; the 502's
    # span arrives after the unsampled request's line was read: that one never comes
    unsampled = "5" * 32
    status, task, _ = seen(agent, f"00-{unsampled}-{CLIENT_SPAN}-00")
    assert task["traceparent"].endswith("-00")
    status, _, client = seen(agent, host="broken")
    assert status == 502
    broken = client["x-request-id"]  # the trace id of a trace started here
    span = receiver.span(broken)
    assert span.status.code == Status.STATUS_CODE_ERROR
    assert attributes(span)["http.response.status_code"] == 502
    assert attributes(span)["gateway.service"] == "broken"
    assert receiver.spans(unsampled) == []
    # the receiver has the spans before the exporter has its answer and counts them
    wait_until(lambda: agent.metrics()['gateway_trace_spans_total{result="exported"}'] == 3, 10,
               "the three exported spans to be counted")
    metrics = agent.metrics()
    assert metrics['gateway_trace_spans_total{result="exported"}'] == 3
    # the per-route metrics count every request, sampled or not
    assert metrics['gateway_http_requests_total{route="managerhttp/",status_class="2xx"}'] == 3
    assert metrics['gateway_http_requests_total{route="broken/",status_class="5xx"}'] == 1
    agent.stop()

    # the same at ratio 0: no trace started here is sampled, the task is told so; a client's
    # sampled trace still is, and its span comes after the lines of the others
    agent = start(dns, start_agent, upstream_port, "--otlp-endpoint", receiver.url,
                  "--trace-sample-ratio", "0")
    traces = []
    for _ in range(20):
        status, task, _ = seen(agent)
        assert status == 200
        assert task["traceparent"].endswith("-00")
        traces.append(task["traceparent"].split("-")[1])
    late = "6" * 32
    seen(agent, f"00-{late}-{CLIENT_SPAN}-01")
    receiver.span(late)
    assert [t for t in traces if receiver.spans(t)] == []
    wait_until(lambda: agent.metrics()['gateway_trace_spans_total{result="exported"}'] >= 1, 10,
               "the exported span to be counted")
    metrics = agent.metrics()
    assert metrics['gateway_http_requests_total{route="managerhttp/",status_class="2xx"}'] == 21
    assert metrics['gateway_trace_spans_total{result="exported"}'] == 1


def served(agent: Agent, count: int) -> None:
    """`count` requests, each answered 200 well within a generous bound."""
    started = time.monotonic()
    for _ in range(count):
        status, _, _ = http_get(agent.port, "managerhttp", "/", timeout=5)
        assert status == 200
    assert time.monotonic() - started < 30  # generous: loopback answers in milliseconds
    assert agent.admin("/readyz")[0] == 200


def test_a_receiver_down_or_slow_costs_the_requests_nothing(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    port = free_port()  # nothing listens there yet: the receiver is down
    agent = start(dns, start_agent, upstream_port, "--otlp-endpoint",
                  f"http://127.0.0.1:{port}/v1/traces")
    served(agent, 100)
    wait_until(lambda: agent.metrics()['gateway_trace_spans_total{result="failed"}'] >= 100,
               15, "the spans the receiver could not take, counted")
    # a receiver that takes 5 s per export: the exporter gives up after its timeout
    slow = Receiver(port, delay=5.0)
    try:
        before = agent.metrics()['gateway_trace_spans_total{result="failed"}']
        served(agent, 100)
        wait_until(lambda: slow.server.exports >= 1, 15, "an export to the slow receiver")
        served(agent, 100)
        wait_until(lambda: agent.metrics()['gateway_trace_spans_total{result="failed"}']
                   > before, 15, "the exports the slow receiver did not answer in time")
        assert agent.ready()
    finally:
        slow.stop()
    assert agent.stop() == 0
