"""What the http context needs to say what happened to a request (docs/logs.md): the JSON
access log for people and log shippers, and the route and service each request's line names.

Request ids and traceparent are made by nginx's own maps (the template); this module only
chooses the log's destination and names each route's `root` (naming.route_root) in words: the
JSON line carries `$gateway_route` and `$gateway_service`, looked up from $document_root by one
map in the http context, so that no location needs a line of its own for them.

The per-route metrics keep their compact line (observe/traffic.py). For spans made by the agent
(OpenTelemetry, --otlp-endpoint), `LogPlan.trace` makes the line of a sampled request carry
the trace fields too (the `g2` line, TRACE_FIELDS), which observe/traffic.py reads and hands to
observe/spans.py;
`LogPlan.sample` is --trace-sample-ratio (plan/traces.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from agent.core.routes import Route
from agent.gateway.plan.naming import UNROUTED_ROOT, route_label, route_root
from agent.gateway.plan.traces import sampling

_PLAIN_PATH = re.compile(r"/[A-Za-z0-9._/-]{1,1023}")
STDOUT = "stdout"
OFF = "off"
# what the metrics line adds when spans are made of it (observe/traffic.py reads them); the
# path comes last: it may hold a '|'
TRACE_FIELDS = ("$msec|$gateway_trace_id|$gateway_span_id|$gateway_parent_span_id|"
                "$request_method|$upstream_addr|$gateway_trace_flags|$gateway_request_id|"
                "$gateway_trace_host|$gateway_trace_path")


@dataclass(frozen=True)
class RouteName:
    """One line of the map from a route's `root` to its label and its service."""

    root: str  # as nginx logs $document_root (no trailing '/')
    label: str
    service: str


@dataclass(frozen=True)
class LogPlan:
    """The file nginx writes the JSON access log to (None: off), each worker's buffer of it
    being written 64 KiB at a time.

    For `--access-log stdout` the file is the agent's (drivers/logfile.py JSON_FILE_NAME),
    which copies it to its standard output: nginx never writes into the pipe itself.
    """

    path: str | None
    trace: bool = False  # the metrics line carries the trace fields (tracing on)
    sample: float = 1.0  # the share of the traces starting here that are sampled


def log_plan(access_log: str, relay_file: str, trace: bool = False,
             sample: float = 1.0) -> LogPlan:
    """--access-log stdout|off|FILE as a plan; `relay_file` is where nginx writes what the
    agent copies to its stdout."""
    if access_log == OFF:
        return LogPlan(None, trace=trace, sample=sample)
    return LogPlan(relay_file if access_log == STDOUT else access_log, trace=trace,
                   sample=sample)


def route_names(routes: Sequence[Route]) -> list[RouteName]:
    """Label and service of each proxying route, keyed by the root nginx logs for it."""
    names = [RouteName(route_root(r).removesuffix("/"), route_label(r),
                       r.target.name if r.proxies else "")
             for r in routes]
    return sorted(names, key=lambda n: n.root)


def context(plan: LogPlan | None, routes: Sequence[Route]) -> dict[str, object]:
    """The template's variables for the JSON log (all absent when `plan` is None)."""
    traces = sampling(plan.sample if plan is not None and plan.trace else 1.0)
    if plan is None or plan.path is None:
        return {"json_log": None, "trace_fields": plan is not None and plan.trace, **traces}
    return {"json_log": plan.path,
            "route_names": route_names(routes), "unrouted_logged": UNROUTED_ROOT,
            "trace_fields": plan.trace, **traces}


def access_log_option(value: str) -> str:
    """--access-log: stdout, off, or an absolute FILE path of plain characters."""
    text = value.strip()
    if text.lower() in (STDOUT, OFF):
        return text.lower()
    if not _PLAIN_PATH.fullmatch(text):
        raise ValueError(f"{value!r} is not stdout, off or an absolute file path of letters, "
                         "digits and '._/-'")
    return text

