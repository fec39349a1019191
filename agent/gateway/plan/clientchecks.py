"""What a route asks of its clients beyond the path, as nginx names it: the limit_req zone of a
`rate_limit`, the variable of an `allow` list. Pure: names from values."""

from __future__ import annotations

from dataclasses import dataclass

from agent.core.routes import Route
from agent.gateway.plan.naming import digest, route_label


@dataclass(frozen=True)
class RateZone:
    """A route's limit_req zone: its own counters per client address."""

    name: str
    rate: str
    burst: int


def rate_zone(route: Route) -> RateZone | None:
    if route.rate_limit is None:
        return None
    # (host, path) names one route; the rate is in the name too, so that a changed rate is a
    # new zone rather than a reload nginx might refuse
    name = digest(f"{route_label(route)} {route.rate_limit.rate}")
    return RateZone(f"gateway_rate_{name}", route.rate_limit.rate,
                    route.rate_limit.burst)


def allow_var(allow: tuple[str, ...]) -> str:
    """`allow` as a variable: 1 for a client of these networks, 0 for any other. A refusal by
    `if ($var = 0) { return 403; }` writes no error-log line (nginx's `deny` writes one per
    request): nothing refused costs more than the refusal."""
    return f"gateway_allow_{digest(' '.join(allow))}"
