"""The sampling of traces that start at the gateway (`--trace-sample-ratio`, docs/logs.md), as
the template writes it. No I/O.

nginx decides, where it makes the traceparent it passes to the task, so that the task and the
gateway agree: a client's traceparent keeps its own flags (parent-based sampling, as W3C Trace
Context and OpenTelemetry's default sampler do), and a trace that starts here gets `01`
(sampled) for a share of the requests, chosen by split_clients on the request's id (which is
then the trace id), else `00`. The agent makes spans only of sampled requests
(observe/spans.py).
"""

from __future__ import annotations

SAMPLED = "01"
NOT_SAMPLED = "00"


def sample_percent(ratio: float) -> str | None:
    """split_clients' percent (two decimals at most) for a ratio of 0..1; None when the ratio
    rounds to all or nothing (no split needed)."""
    percent = round(ratio * 100, 2)
    if percent <= 0 or percent >= 100:
        return None
    return f"{percent:.2f}"


def sampling(ratio: float) -> dict[str, object]:
    """The template's variables: the split's share of sampled traces, or (None) the flags of
    every trace that starts here."""
    percent = sample_percent(ratio)
    if percent is not None:
        return {"trace_new_flags": None, "trace_sample_percent": percent}
    return {"trace_new_flags": SAMPLED if ratio >= 0.5 else NOT_SAMPLED,
            "trace_sample_percent": None}


def sample_ratio(value: str) -> float:
    """--trace-sample-ratio: a number from 0 to 1."""
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{value!r} is not a ratio from 0 to 1")
    return number
