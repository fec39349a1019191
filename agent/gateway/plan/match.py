"""Routes that share a host and path and differ by `match` (core/match.py): which one takes a
request, as nginx maps. No I/O.

Each condition (a header's value, the method) is a `map` of its own to 1 or 0, written once
however many routes use it. A path with a matched route gets a dispatch: its locations
(`= /api` and `^~ /api/`) only choose, by one more map of the conditions' digits (first match
wins: the route with more conditions first, one without `match` last), the named location of a
route, and go there (`error_page 418 = $choice; return 418`: no `if`, and the named location
runs every phase of its route, its checks included). Each route of the path is written as such
a named location, with all of its own options; a request that no route takes gets 404.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.core.match import Match, as_pattern
from agent.gateway.plan.naming import digest

# the named location of a server for requests that no route of a path takes (404)
UNMATCHED = "@gateway_unmatched"


@dataclass(frozen=True, order=True)
class Condition:
    """`$source` matches `pattern` (a PCRE regular expression): a map to 1 (else 0)."""

    source: str  # an nginx variable without '$': `http_x_env`, `request_method`
    pattern: str

    @property
    def var(self) -> str:
        return "gateway_match_" + digest(f"{self.source} {self.pattern}")


def conditions(match: Match | None) -> tuple[Condition, ...]:
    """A route's conditions (none without `match`)."""
    if match is None:
        return ()
    found = [Condition("http_" + name.lower().replace("-", "_"), as_pattern(value))
             for name, value in match.headers]
    if match.methods:
        found.append(Condition("request_method", f"^({'|'.join(match.methods)})$"))
    return tuple(sorted(found))


@dataclass(frozen=True)
class Choice:
    pattern: str  # of the dispatch's key: '1' for a condition the route has, '.' for another
    named: str  # the route's named location


@dataclass(frozen=True)
class Dispatch:
    """A path whose routes are chosen by match: its map and the choices, in order."""

    path: str
    var: str
    key: tuple[str, ...]  # the conditions' variables, in the order of the map's key
    choices: tuple[Choice, ...]
    default: str  # the named location of the route without match, or UNMATCHED
    # the path's routes' own (one for all: core/match.py): nginx checks a Content-Length against
    # the location the path finds, which is this dispatch, not the named location chosen after
    max_body_size: int


class Matched(Protocol):
    """A location as plan/http.py has it: its path, root and conditions."""

    @property
    def path(self) -> str: ...
    @property
    def root(self) -> str: ...
    @property
    def match(self) -> tuple[Condition, ...]: ...
    @property
    def max_body_size(self) -> int: ...


def named_location(root: str) -> str:
    return "@gateway_route_" + digest(root)


def dispatch(locations: Sequence[Matched]) -> tuple[dict[str, str], list[Dispatch]]:
    """Of a host's locations: the named location of each route (by its root) of a path with a
    matched route, and the dispatch of each such path (in the order of the locations)."""
    by_path: dict[str, list[Matched]] = {}
    for loc in locations:
        by_path.setdefault(loc.path, []).append(loc)
    named: dict[str, str] = {}
    dispatches: list[Dispatch] = []
    for path, locs in by_path.items():
        if not any(loc.match for loc in locs):
            continue
        named.update((loc.root, named_location(loc.root)) for loc in locs)
        key = tuple(sorted({c.var for loc in locs for c in loc.match}))
        # the most specific first (sorted() keeps the routes' order among equals)
        ordered = sorted((loc for loc in locs if loc.match), key=lambda x: -len(x.match))
        choices = tuple(Choice("^" + "".join(
            "1" if var in {c.var for c in loc.match} else "." for var in key) + "$",
            named[loc.root]) for loc in ordered)
        default = next((named[loc.root] for loc in locs if not loc.match), UNMATCHED)
        var = "gateway_route_choice_" + digest(repr((path, key, choices, default)))
        dispatches.append(Dispatch(path, var, key, choices, default,
                                   max(loc.max_body_size for loc in locs)))
    return named, dispatches


def match_context(dispatches: Iterable[Dispatch], matched: Iterable[Matched],
                  ) -> dict[str, object]:
    """The http context's part: each condition's map and each dispatch's, once."""
    return {
        "match_conditions": sorted({c for loc in matched for c in loc.match},
                                   key=lambda c: c.var),
        "match_dispatches": sorted(set(dispatches), key=lambda d: d.var),
    }
