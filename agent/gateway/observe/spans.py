"""OpenTelemetry traces (`--otlp-endpoint`, docs/logs.md): one SERVER span per request, made of
the metrics line nginx already writes (observe/traffic.py hands each `g2` line here) and sent
over OTLP/HTTP by OpenTelemetry's own exporter.

The span is the request as nginx measured it: it ends at `$msec` (when nginx logged it) and
lasts `$request_time`. Its trace id and span id are the ones nginx put in the traceparent it
passed to the task, so the task's spans are its children; its parent is the span id of the
client's traceparent, when the client sent a valid one. The SDK's tracer chooses ids and clocks
itself, so the spans are built as the SDK's own ReadableSpan values and handed to its
exporter.

Sampling is decided by nginx, where the task's traceparent is made (plan/traces.py): a client's
sampled flag is followed (parent-based), a trace that starts here is sampled by
--trace-sample-ratio. nginx writes the trace fields (the `g2` line) only for the requests
sampled; the others keep the short line the per-route metrics read, which the agent counts once
per distinct line.

Nothing here may slow the agent's loop: the loop only puts the line's fields in a bounded
queue (a full queue drops, counted); a thread of its own turns them into spans and exports them
in batches, each export bounded by a short timeout (retries included).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from agent.core.routes import RouteTable
from agent.gateway.observe.traffic import UNROUTED
from agent.gateway.plan.observe import route_names

log = logging.getLogger("agent.gateway.spans")

# the fields of a `g2` line (plan/observe.py's TRACE_FIELDS after the metrics line's)
(MARKER, ROOT, STATUS, REQUEST_TIME, UPSTREAM_TIME, UPSTREAM_STATUS, UPSTREAM_HEADER_TIME,
 BYTES_SENT, REQUEST_LENGTH, MSEC, TRACE_ID, SPAN_ID, PARENT_SPAN_ID, METHOD, UPSTREAM_ADDR,
 FLAGS, REQUEST_ID, HOST, PATH) = range(19)
LINE_FIELDS = 19
RESULTS = ("exported", "failed", "dropped", "malformed")
QUEUE_SIZE = 4096  # spans waiting for the exporter; more are dropped (counted)
BATCH_SIZE = 512  # spans per export request
EXPORT_TIMEOUT = 2.0  # seconds one export may take, the exporter's retries included
MAX_PATH = 1024  # characters of url.path kept
SCOPE = InstrumentationScope("swarm-gateway")
_HEX = frozenset(b"0123456789abcdef")


def resource() -> Resource:
    """service.name `swarm-gateway` unless OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES)
    says otherwise."""
    name = os.environ.get("OTEL_SERVICE_NAME") or "swarm-gateway"
    return Resource.create({"service.name": name})


def _hex_id(value: bytes, digits: int) -> int:
    if len(value) != digits or not _HEX.issuperset(value):
        raise ValueError("id")
    number = int(value, 16)
    if not number:
        raise ValueError("id")
    return number


def _nanoseconds(seconds: bytes) -> int:
    """nginx's "1733520000.123" (or "0.003") as nanoseconds, exactly."""
    whole, _, fraction = seconds.partition(b".")
    if not whole.isdigit() or not (fraction.isdigit() or not fraction) or len(fraction) > 9:
        raise ValueError("time")
    return int(whole) * 1_000_000_000 + int(fraction.ljust(9, b"0") or b"0")


def sampled(fields: Sequence[bytes]) -> bool:
    """Whether the traceparent nginx passed on says "sampled" (the flags' lowest bit)."""
    flags = fields[FLAGS]
    return len(flags) == 2 and _HEX.issuperset(flags) and bool(int(flags, 16) & 1)


def _text(value: bytes) -> str:
    # nginx escapes what is not printable ASCII as \xNN: the text is ASCII
    return value.decode("ascii", "replace")


def span_of(fields: Sequence[bytes], route: str, service: str,
            res: Resource | None = None) -> ReadableSpan:
    """The SERVER span of one `g2` line; ValueError if a field does not parse."""
    trace_id = _hex_id(fields[TRACE_ID], 32)
    span_id = _hex_id(fields[SPAN_ID], 16)
    flags = TraceFlags(TraceFlags.SAMPLED)
    parent = None
    if fields[PARENT_SPAN_ID]:
        parent = SpanContext(trace_id, _hex_id(fields[PARENT_SPAN_ID], 16), is_remote=True,
                             trace_flags=flags)
    end = _nanoseconds(fields[MSEC])
    duration = _nanoseconds(fields[REQUEST_TIME])
    status = fields[STATUS]
    if len(status) != 3 or not status.isdigit():
        raise ValueError("status")
    code = int(status)
    method = _text(fields[METHOD])
    attributes: dict[str, str | int] = {
        "http.request.method": method,
        "url.path": _text(fields[PATH])[:MAX_PATH],
        "http.response.status_code": code,
        "gateway.route": route,
        "gateway.request_id": _text(fields[REQUEST_ID]),
    }
    if fields[HOST]:
        attributes["server.address"] = _text(fields[HOST])
    if service:
        attributes["gateway.service"] = service
    # as nginx lists them: one value per try ("10.0.1.3:80, 10.0.1.4:80"), "-" for none
    for key, index in (("gateway.upstream.address", UPSTREAM_ADDR),
                       ("gateway.upstream.status", UPSTREAM_STATUS),
                       ("gateway.upstream.response_time", UPSTREAM_TIME),
                       ("gateway.upstream.header_time", UPSTREAM_HEADER_TIME)):
        if fields[index] != b"-":
            attributes[key] = _text(fields[index])
    return ReadableSpan(
        # semantic conventions: the method and the route; "HTTP" for a request without one
        name=(method or "HTTP") if route == UNROUTED else f"{method or 'HTTP'} {route}",
        context=SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags),
        parent=parent, resource=res, attributes=attributes, kind=SpanKind.SERVER,
        status=Status(StatusCode.ERROR) if code >= 500 else Status(StatusCode.UNSET),
        start_time=end - duration, end_time=end, instrumentation_scope=SCOPE)


@dataclass(frozen=True)
class _Line:
    fields: list[bytes]
    route: str
    service: str


class Spans:
    """Takes `g2` lines from the loop (`offer`), exports their spans from a thread of its own.

    `count(result, n)` is told what became of each line: `exported`, `failed` (the receiver
    refused it, was down or slower than the timeout), `dropped` (the queue was full),
    `malformed`; it is called from both threads (a prometheus Counter is safe).
    """

    def __init__(self, exporter: SpanExporter, count: Callable[[str, int], None], *,
                 queue_size: int = QUEUE_SIZE, batch_size: int = BATCH_SIZE) -> None:
        self.exporter = exporter
        self.count = count
        self.batch_size = batch_size
        self.resource = resource()
        self._queue: queue.Queue[_Line | None] = queue.Queue(queue_size)
        self._services: dict[str, str] = {}
        self._source: Callable[[], RouteTable] | None = None
        self._table: RouteTable | None = None
        self._thread = threading.Thread(target=self._run, name="otlp-export", daemon=True)
        self._failing = False  # the last export failed: said once in the log, not per batch

    def follow(self, routes: Callable[[], RouteTable]) -> None:
        """Name each span's service from `routes()` (the routes in use)."""
        self._source = routes

    def _service(self, route: str) -> str:
        if self._source is not None:
            table = self._source()
            if table is not self._table:
                self._table = table
                self._services = {n.label: n.service for n in route_names(table.routes)}
        return self._services.get(route, "")

    def offer(self, fields: list[bytes], route: str) -> None:
        """observe/traffic.py's hook, on the loop: never blocks."""
        if not sampled(fields):  # nginx writes no such line (a template of one's own might)
            return
        try:
            self._queue.put_nowait(_Line(fields, route, self._service(route)))
        except queue.Full:
            self.count("dropped", 1)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = EXPORT_TIMEOUT) -> None:
        """Export what is queued (at most `timeout` more), then stop the thread."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        self.exporter.shutdown()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch = [first] if first is not None else []
            while len(batch) < self.batch_size and first is not None:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    first = None
                    break
                batch.append(item)
            if batch:
                self._export(batch)
            if first is None:
                return

    def _export(self, batch: list[_Line]) -> None:
        spans = []
        for line in batch:
            try:
                spans.append(span_of(line.fields, line.route, line.service, self.resource))
            except ValueError:
                self.count("malformed", 1)
        if not spans:
            return
        try:
            result = self.exporter.export(spans)
        except Exception:  # the exporter's own faults must not end the thread
            log.exception("trace_export_failed")
            result = SpanExportResult.FAILURE
        ok = result is SpanExportResult.SUCCESS
        self.count("exported" if ok else "failed", len(spans))
        if ok == self._failing:
            self._failing = not ok
            if ok:
                log.info("trace_export_recovered")
            else:
                log.warning("trace_export_failing spans=%d", len(spans))


def otlp_spans(endpoint: str, count: Callable[[str, int], None]) -> Spans:
    """Spans sent to an OTLP/HTTP receiver (protobuf); OTEL_EXPORTER_OTLP_HEADERS and the
    other OTEL_EXPORTER_OTLP_* variables of the exporter apply, but not its timeout: one export
    may take EXPORT_TIMEOUT at most."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # it says each failed batch (about one a second while a collector is down): this module
    # says when exports start and stop failing, gateway_trace_spans_total counts them
    logging.getLogger("opentelemetry.exporter.otlp").setLevel(logging.CRITICAL)
    return Spans(OTLPSpanExporter(endpoint=endpoint, timeout=EXPORT_TIMEOUT), count)
