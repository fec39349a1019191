"""Who routes a host: the one conflict rule, and the merge of routes from several sources.

Routes that claim the same host and path conflict, and so do routes that route one host with
two different `tls` (a host has one HTTPS server: one certificate, one redirect). The routes
file applies the rule inside itself (core/routes.py: a file with a conflict is refused whole);
the gateway and the controller apply it across sources (the routes file first, then the
controller's routes, oldest service first): the later route is refused whole and reported,
every other route is served. A source other than the file may not take any name of the file,
nor any path under it (docs/labels.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agent.core.claims import Claims
from agent.core.route import Route
from agent.core.routes import RouteTable

FILE_SOURCE = "routes file"


@dataclass(frozen=True)
class Merged:
    table: RouteTable
    sources: tuple[str, ...]  # the source of each route of the table
    errors: tuple[str, ...]  # one per refused route
    refused: tuple[Route, ...] = ()  # the refused routes, in the order of `errors`


def file_owns(host: str, names: frozenset[str]) -> str | None:
    """The routes file's name that `host` falls under: the same name, or a wildcard of the
    file that covers it (`*.example.com` covers `a.example.com`, `a.b.example.com` and
    `*.b.example.com`: nginx would prefer the more specific name); None when it is free."""
    if host in names:
        return host
    parent = host.removeprefix("*.")
    while "." in parent:
        parent = parent.split(".", 1)[1]
        if f"*.{parent}" in names:
            return f"*.{parent}"
    return None


def merge(candidates: Iterable[tuple[str, Route]]) -> Merged:
    """First come, first served: each route keeps its hosts unless an earlier route claimed one
    of them; then it is refused whole, with an error naming both sources, and the others are
    not affected.

    The routes file's names belong to the file, every path under them included: a route from
    another source that names one of them (or a name under one of its wildcards) is refused,
    whatever its path. Otherwise `gateway.path=/login` on a file's host would take that path,
    under the host's certificate, and its zone would get the host's ACME key."""
    candidates = list(candidates)
    file_names = frozenset(h for source, route in candidates if source == FILE_SOURCE
                           for h in route.hosts)
    claims: Claims[str] = Claims()
    routes: list[Route] = []
    sources: list[str] = []
    errors: list[str] = []
    refused: list[Route] = []
    for source, route in candidates:
        problems = []
        owned = set()
        for host in route.hosts if source != FILE_SOURCE else ():
            owner = file_owns(host, file_names)
            if owner is not None:
                owned.add(host)
            if owner == host:
                problems.append(f"{host!r} belongs to the routes file, every path under it "
                                "included")
            elif owner is not None:
                problems.append(f"{host!r} is under {owner!r}, which belongs to the routes "
                                "file")
        problems += [str(c) for c in claims.conflicts(route, str) if c.host not in owned]
        if problems:
            errors.append(f"{source}: not routed: " + "; ".join(problems))
            refused.append(route)
            continue
        claims.take(route, source)
        routes.append(route)
        sources.append(source)
    return Merged(RouteTable(tuple(routes)), tuple(sources), tuple(errors), tuple(refused))


def merge_sources(file: RouteTable, others: Iterable[tuple[str, Route]]) -> Merged:
    """The routes file's routes, then the others in their order."""
    return merge([(FILE_SOURCE, r) for r in file.routes] + list(others))
