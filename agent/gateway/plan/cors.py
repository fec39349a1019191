"""`cors` in the plan (core/cors.py): the `map $http_origin` of each route's origins, and what a
location answers with. No I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.core.cors import Cors
from agent.core.routes import Route
from agent.gateway.plan.naming import digest


@dataclass(frozen=True, order=True)
class CorsPlan:
    var: str  # $VAR: the Origin when allowed, '*' for any origin, else empty (no header)
    origins: tuple[str, ...]
    any_origin: bool
    methods: str  # Access-Control-Allow-Methods
    headers: str  # Access-Control-Allow-Headers ('' : none)
    credentials: bool
    max_age: int


def cors_plan(cors: Cors | None) -> CorsPlan | None:
    if cors is None:
        return None
    return CorsPlan(var=f"gateway_cors_{digest(' '.join(cors.origins))}", origins=cors.origins,
                    any_origin=cors.any_origin, methods=", ".join(cors.methods),
                    headers=", ".join(cors.headers), credentials=cors.credentials,
                    max_age=max(0, round(cors.max_age)))


def cors_maps(routes: Sequence[Route]) -> list[CorsPlan]:
    """One map per distinct list of origins."""
    found = {p.var: p for r in routes if (p := cors_plan(r.cors)) is not None}
    return [found[v] for v in sorted(found)]
