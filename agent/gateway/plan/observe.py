"""What the http context needs to say what happened to a request (docs/logs.md): the JSON
access log for people and log shippers, and the route and service each request's line names.

Request ids and traceparent are made by nginx's own maps (the template); this module only
chooses the log's destination and names each route's `root` (naming.route_root) in words: the
JSON line carries `$gateway_route` and `$gateway_service`, looked up from $document_root by one
map in the http context, so that no location needs a line of its own for them.

The per-route metrics keep their compact line (observe/traffic.py). For spans made by the agent
(OpenTelemetry, not built yet: issue 29), `LogPlan.trace` makes that line carry the trace
fields too (the `g2` line, TRACE_FIELDS), which observe/traffic.py already reads and hands to
its `spans` hook; no option turns it on yet.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from agent.core.routes import Route
from agent.gateway.plan.naming import UNROUTED_ROOT, route_label, route_root

_PLAIN_PATH = re.compile(r"/[A-Za-z0-9._/-]{1,1023}")
STDOUT = "stdout"
OFF = "off"
# nginx opens the master's standard output by this name: the container's stdout, which
# `docker service logs` and log shippers read
STDOUT_PATH = "/dev/stdout"
# what the metrics line adds when spans are made of it (observe/traffic.py reads them)
TRACE_FIELDS = ("$msec|$gateway_trace_id|$gateway_span_id|$gateway_parent_span_id|"
                "$request_method|$upstream_addr")


@dataclass(frozen=True)
class RouteName:
    """One line of the map from a route's `root` to its label and its service."""

    root: str  # as nginx logs $document_root (no trailing '/')
    label: str
    service: str


@dataclass(frozen=True)
class LogPlan:
    """Where the JSON access log goes (None: off) and the buffer of each nginx worker.

    To a pipe (stdout) nginx writes at most 4 KiB of whole lines at once: a write of up to
    PIPE_BUF (4096 bytes on Linux) is atomic there, so the lines of several workers never
    interleave (one line written unbuffered, a write per request, cost a fifth of the data
    path's requests/s in the benchmark); a file takes 64 KiB.
    """

    path: str | None = STDOUT_PATH
    buffer: str = "4k"
    trace: bool = False  # the metrics line carries the trace fields (tracing on)


def log_plan(access_log: str, trace: bool = False) -> LogPlan:
    """--access-log stdout|off|FILE as a plan."""
    if access_log == OFF:
        return LogPlan(None, trace=trace)
    if access_log == STDOUT:
        return LogPlan(STDOUT_PATH, trace=trace)
    return LogPlan(access_log, buffer="64k", trace=trace)


def route_names(routes: Sequence[Route]) -> list[RouteName]:
    """Label and service of each proxying route, keyed by the root nginx logs for it."""
    names = [RouteName(route_root(r).removesuffix("/"), route_label(r),
                       r.target.name if r.proxies else "")
             for r in routes]
    return sorted(names, key=lambda n: n.root)


def map_bucket(keys: Sequence[str]) -> int:
    """The map_hash_bucket_size that holds the longest of these keys of a map: nginx puts a
    key in a bucket as a pointer, its length and text (8-byte aligned), and ends the bucket
    with a null pointer; the bucket is a multiple of a cache line (64 bytes)."""
    longest = max((len(k.encode()) for k in keys), default=0)
    need = 8 + (longest + 2 + 7) // 8 * 8 + 8
    return max(64, (need + 63) // 64 * 64)


def context(plan: LogPlan | None, routes: Sequence[Route]) -> dict[str, object]:
    """The template's variables for the JSON log (all absent when `plan` is None)."""
    if plan is None or plan.path is None:
        return {"json_log": None, "trace_fields": plan is not None and plan.trace,
                "map_bucket": 64}
    names = route_names(routes)
    return {"json_log": plan.path, "json_log_buffer": plan.buffer,
            "route_names": names, "unrouted_logged": UNROUTED_ROOT,
            "trace_fields": plan.trace, "map_bucket": map_bucket([n.root for n in names])}


def access_log_option(value: str) -> str:
    """--access-log: stdout, off, or an absolute FILE path of plain characters."""
    text = value.strip()
    if text.lower() in (STDOUT, OFF):
        return text.lower()
    if not _PLAIN_PATH.fullmatch(text):
        raise ValueError(f"{value!r} is not stdout, off or an absolute file path of letters, "
                         "digits and '._/-'")
    return text

