"""The one parser of routes: a file, a document (the route itself: core/route.py, which this module
names for its readers too).

A route is validated field by field (core/fields.py holds each field to a pattern nginx reads as
a plain token) and as a whole (one target, what goes with what: core/route.py). A value that
does not fit is refused with its place (`routes[2].hosts[0]: ...`); nothing is "cleaned up".
All errors of a file are reported at once. Routes that claim the same host and path are refused
by the conflict rule of core/claims.py, the same rule that merges the controller's routes with
the file's.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, ValidationError

from agent.core.claims import Claims
from agent.core.errors import place, problems
from agent.core.fields import Tls
from agent.core.files import MiB, TooLarge, read_bounded
from agent.core.route import Route as Route
from agent.core.route import RouteError as RouteError
from agent.core.route import Target as Target
from agent.core.route import parse_route as parse_route
from agent.core.route import without_echoes
from agent.core.tcp import TcpRoute, parse_tcp
from agent.core.traffic import side_services
from agent.core.yamlfile import YamlError, load_yaml


class _RoutesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    routes: tuple[Route, ...]

# the kinds of file a route names: basic_auth's htpasswd, error_page, a CA (tls.client_ca,
# upstream_tls.ca)
FileKind = Literal["htpasswd", "page", "ca"]


@dataclass(frozen=True)
class RouteTable:
    routes: tuple[Route, ...]
    tcp: tuple[TcpRoute, ...] = ()  # the file's `tcp:` routes (core/tcp.py)
    # a file's table: each route by the digest of its item in the file, for the next read of
    # that file to take the routes whose item has not changed as they are (parse_routes())
    by_item: Mapping[bytes, Route] = field(default_factory=dict, compare=False, repr=False)

    def for_zone(self, zone: str | None) -> RouteTable:
        if zone is None:
            return self
        return RouteTable(tuple(r for r in self.routes if r.zone == zone),
                          tuple(r for r in self.tcp if r.zone == zone))

    @functools.cached_property
    def targets(self) -> tuple[Target, ...]:
        """Every target a route proxies to, sorted (computed once: the table is frozen, and
        each cycle asks several times)."""
        return tuple(sorted({r.target for r in self.routes if r.proxies} |
                            {Target("service", s) for r in self.routes
                             for s in side_services(r)} |
                            {r.target for r in self.tcp} |
                            {Target(r.auth.kind, r.auth.name) for r in self.routes if r.auth}))

    @functools.cached_property
    def tls_hosts(self) -> Mapping[str, Tls]:
        """Each host of a route with `tls`, and the first such route's `tls` (computed once,
        as `targets`: each cycle asks, and at 10,000 routes the walk is not free)."""
        hosts: dict[str, Tls] = {}
        for route in self.routes:
            if route.tls is not None:
                for host in route.hosts:
                    hosts.setdefault(host, route.tls)
        return hosts

    @functools.cached_property
    def named_files(self) -> Mapping[tuple[FileKind, str], tuple[Route, ...]]:
        """Each file a route names, by kind and name, and the routes naming it (computed
        once, as `targets`)."""
        named: dict[tuple[FileKind, str], list[Route]] = {}
        for r in self.routes:
            if r.basic_auth is not None:
                named.setdefault(("htpasswd", r.basic_auth.file), []).append(r)
            if r.error_page is not None:
                named.setdefault(("page", r.error_page), []).append(r)
            for ca in (r.tls.client_ca if r.tls else None,
                       r.upstream_tls.ca if r.upstream_tls else None):
                if ca is not None:
                    named.setdefault(("ca", ca), []).append(r)
        return {key: tuple(routes) for key, routes in named.items()}


class RoutesError(ValueError):
    """Routes that cannot be used; `errors` holds every problem, each naming its place."""

    def __init__(self, source: str, errors: Sequence[str]) -> None:
        self.source = source
        self.errors = list(errors)
        super().__init__(f"{source}: " + "; ".join(self.errors))


def parse_routes(data: Any, source: str = "routes",
                 previous: RouteTable | None = None) -> RouteTable:
    """A routes document (`{"routes": [...]}`); the routes must not claim one host and path
    twice, nor one host with two `tls`. Raises RoutesError with every problem at once.

    A route whose item is the same as one of `previous`'s (by_item) is that route, not made
    again: a change of one route in ten thousand makes one route. The conflict rule still
    sees every route."""
    return _parse(data, source, previous).table()


class _Parsed(NamedTuple):
    routes: tuple[Route, ...]
    tcp: tuple[TcpRoute, ...]
    digests: bytes  # each route's item's digest, DIGEST_SIZE bytes each (_digest())
    made: int  # routes made, not taken from the previous table

    def table(self) -> RouteTable:
        """The table, each route by its item's digest. Called once the document is gone,
        the digests' objects fill the holes it left in Python's small-object arenas instead
        of keeping part of each of its pools (_compact() says why that matters)."""
        by_item = {key: route for i, route in enumerate(self.routes)
                   if (key := _nth(self.digests, i)) != _NO_DIGEST}
        return RouteTable(self.routes, self.tcp, by_item)


def _parse(data: Any, source: str, previous: RouteTable | None) -> _Parsed:
    if not isinstance(data, Mapping):
        raise RoutesError(source, ["(top level): expected a mapping with a 'routes' list"])
    data = dict(data)
    tcp_data = data.pop("tcp", None)
    if tcp_data is not None:  # a file of tcp routes only needs no `routes: []`
        data.setdefault("routes", [])
    tcp, tcp_errors = parse_tcp(tcp_data)
    items = data.get("routes")
    digests = b""
    made = 0
    if isinstance(items, list):
        known = previous.by_item if previous is not None else {}
        digests = b"".join(_digest(item) for item in items)
        data["routes"] = [known.get(_nth(digests, i), item) for i, item in enumerate(items)]
        made = sum(not isinstance(item, Route) for item in data["routes"])
    try:
        parsed = _RoutesFile.model_validate(data)
    except ValidationError as exc:
        raise RoutesError(source, [f"{place(loc)}: {msg}" for loc, msg
                                   in without_echoes(problems(exc))] + tcp_errors) from None
    claims: Claims[int] = Claims()
    errors = []
    for i, route in enumerate(parsed.routes):
        for conflict in claims.conflicts(route, lambda owner: f"routes[{owner}]"):
            if conflict.kind == "path":
                errors.append(f"routes[{i}].hosts[{conflict.index}]: {conflict}")
            else:
                errors.append(f"routes[{i}].tls: {conflict}; routes that share a host share "
                              "its certificate and redirect: give them the same 'tls'")
        claims.take(route, i)
    # path conflicts first, then `tls` ones, each in the order of the routes; then the tcp routes'
    errors = sorted(errors, key=lambda e: ".tls: " in e.split(" ")[0]) + tcp_errors
    if errors:
        raise RoutesError(source, errors)
    return _Parsed(parsed.routes, tcp, digests, made)


DIGEST_SIZE = 16
_NO_DIGEST = bytes(DIGEST_SIZE)  # an item that cannot be pickled: taken by no later read


def _nth(digests: bytes, i: int) -> bytes:
    """The i-th digest of `digests` (_digest()s joined)."""
    return digests[i * DIGEST_SIZE:(i + 1) * DIGEST_SIZE]


def _digest(item: Any) -> bytes:
    """A digest of a route's item as the YAML reader gave it (plain dicts, lists, strings,
    numbers), or _NO_DIGEST for one that cannot be pickled. Equal digests mean equal items:
    the pickle says every type and value, and the digest is a cryptographic one."""
    try:
        blob = pickle.dumps(item, pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError, RecursionError):
        return _NO_DIGEST
    return hashlib.blake2b(blob, digest_size=DIGEST_SIZE).digest()


def parse_routes_text(text: str, source: str = "routes",
                      previous: RouteTable | None = None) -> RouteTable:
    """The routes of a YAML text (parse_routes(), taking `previous`'s unchanged routes). A
    table that made COMPACT_FROM routes or more is made again once the parse's garbage is
    gone (_compact())."""
    parsed = _parse_text(text, source, previous)  # the YAML document is gone on return
    table = parsed.table()
    if parsed.made < COMPACT_FROM:
        return table
    blob = pickle.dumps(table, pickle.HIGHEST_PROTOCOL)
    del table, parsed  # the last references: the parse's objects are all free now
    return _compact(blob)


def _compact(blob: bytes) -> RouteTable:
    """The table pickled in `blob`, its objects made in one go. Parsing a routes file makes
    three times the table's objects (the YAML document, the model's validation) interleaved
    with the table's; freed, they leave Python's small-object arenas partly used, which are
    never given back: at 10,000 routes the table's 13 MiB held 42 MiB of the agent's memory,
    made again from its pickle 16 MiB (in 0.1 s). The pickle is the table's own, never read
    from outside."""
    table = pickle.loads(blob)
    assert isinstance(table, RouteTable)
    return table


def _parse_text(text: str, source: str, previous: RouteTable | None) -> _Parsed:
    try:
        data = load_yaml(text)
    except YamlError as exc:
        raise RoutesError(source, [str(exc)]) from None
    if data is None:
        raise RoutesError(source, ["(top level): the file is empty; expected 'routes:'"])
    return _parse(data, source, previous)


# a table that made this many routes or more is compacted after its parse (_compact())
COMPACT_FROM = 1000
# a routes file holds at most this much (10,000 routes are about 1 MiB)
MAX_ROUTES_FILE = 4 * MiB


class RoutesUnreadable(RoutesError):
    """The routes file could not be read (its text was not reached): a reader may try again."""


def load_routes(path: Path, previous: RouteTable | None = None) -> RouteTable:
    """The routes file at `path` (parse_routes_text(): `previous`, the table last read from
    it, gives the routes whose item has not changed)."""
    try:
        text = read_bounded(path, MAX_ROUTES_FILE).decode("utf-8")
    except OSError as exc:
        raise RoutesUnreadable(str(path), [f"cannot read: {exc}"]) from None
    except (TooLarge, UnicodeDecodeError) as exc:
        raise RoutesError(str(path), [f"cannot read: {exc}"]) from None
    return parse_routes_text(text, str(path), previous)
