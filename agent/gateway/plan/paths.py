"""Hosts whose routes check clients differently, and the paths they refuse (400).

nginx picks a route by the path as it reads it: decoded, dot segments resolved, `//` merged,
case kept, `;` an ordinary character. An application behind it may read the same request
target otherwise: Tomcat and Spring drop `;` parameters from every segment before resolving
`..` (`/x/..;/admin` is their `/admin`), IIS takes `\\` for `/`, ignores case and trailing dots,
some decode `%2f` or `%252e` after routing. Where the routes of one host check clients
differently (`allow`, `basic_auth`, `rate_limit`), a path nginx gives to an open route that the
application reads as a checked one passes the check. On such a host ("strict") the gateway
refuses those paths rather than hoping both readings agree:

- in the raw request target's path (`$request_uri` before `?`): `;`, `\\`, the encoded forms
  `%2e` `%2f` `%5c` `%3b` `%25` (double encoding), `%00`, `%c0` `%c1` (overlong UTF-8), `%u`
  (IIS), and `.` or `..` segments (nginx resolves them; an application may not);
- in the path as nginx routes it (`$uri`): another case of a checked route's path, or one with
  `.` or whitespace at the end of a segment (IIS drops them), unless a route has that path as
  written.

Hosts whose routes all check the same way (or none) are left as they were. No value of a
route reaches a pattern but a path prefix (`[A-Za-z0-9._~+,:@-]` and `/`), each `.` and `+`
written as a class (`[.]`, `[+]`): the patterns pass the same `nginx` filter as every value.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.gateway.plan.naming import digest

# what may follow a segment for IIS to read it as the same segment
_TRAILING = "[.[:space:]]*"


class Checked(Protocol):
    """A location as render.py has it: its path, and what it checks of a client."""

    @property
    def path(self) -> str: ...

    @property
    def checks(self) -> tuple[Hashable, ...]: ...  # empty or false: checks nothing


def guarded(location: Checked) -> bool:
    return any(location.checks)


@dataclass(frozen=True)
class CaseEntry:
    """One line of a strict host's map of $uri: a path prefix as a regular expression (the
    template adds `^` and `(/|$)`), matched case-sensitively (`refused` False: a route's own
    path, let through) or not (True: another reading of a checked route's path)."""

    pattern: str
    refused: bool


@dataclass(frozen=True)
class PathMap:
    var: str  # the map's variable, named by its entries
    entries: tuple[CaseEntry, ...]


def strict(locations: Sequence[Checked]) -> bool:
    """A host whose routes check clients differently: a path read one way by nginx and
    another by the application could move a request from a checked route to another."""
    return any(guarded(loc) for loc in locations) and len({loc.checks for loc in locations}) > 1


def _escaped(segment: str) -> str:
    return segment.replace(".", "[.]").replace("+", "[+]")


def path_map(locations: Sequence[Checked]) -> PathMap | None:
    """The map of a strict host (None for another host). Longer paths first; of one length,
    the routes' own paths (let through) before other readings of checked ones (refused): the
    first match decides, as for nginx, which reads regular expressions of a map in order."""
    if not strict(locations):
        return None
    lines: set[tuple[int, bool, str]] = set()
    for loc in locations:
        if loc.path == "/":
            continue
        segments = loc.path.strip("/").split("/")
        lines.add((len(loc.path), False, "".join("/" + _escaped(s) for s in segments)))
        if guarded(loc):
            lines.add((len(loc.path), True,
                       "".join("/" + _escaped(s) + _TRAILING for s in segments)))
    entries = tuple(CaseEntry(pattern, refused) for _, refused, pattern in
                    sorted(lines, key=lambda line: (-line[0], line[1], line[2])))
    if not any(e.refused for e in entries):
        return None  # only the root is checked: every other reading lands on it
    return PathMap(f"gateway_path_case_{digest(repr(entries))}", entries)


def paths_context(hosts: Sequence[Sequence[Checked]]) -> dict[str, object]:
    """What the template needs at the http level, from each server's locations: whether any
    host is strict (the map of raw paths), and each strict host's map of $uri, once."""
    maps = {m for locations in hosts if (m := path_map(locations)) is not None}
    return {"strict_paths": any(strict(locations) for locations in hosts),
            "path_maps": sorted(maps, key=lambda m: m.var)}
