"""`retry` in the plan (core/retry.py): a location's proxy_next_upstream, _tries and _timeout.
No I/O."""

from __future__ import annotations

from typing import NamedTuple

from agent.core.retry import DEFAULT_ON, DEFAULT_TRIES
from agent.core.routes import Route


class RetryPlan(NamedTuple):
    on: tuple[str, ...]  # proxy_next_upstream's arguments
    tries: int
    timeout_ms: int  # 0: no limit but the tries


DEFAULT = RetryPlan(DEFAULT_ON, DEFAULT_TRIES, 0)


def retry_plan(route: Route) -> RetryPlan:
    """What a route's `retry` says; the gateway's policy without it."""
    if route.retry is None:
        return DEFAULT
    timeout = route.retry.timeout
    return RetryPlan(route.retry.directive, route.retry.tries,
                     max(1, round(timeout * 1000)) if timeout is not None else 0)
