"""The one conflict rule: routes that claim the same host and path conflict (unless they differ
by `match`: core/match.py), and so do routes that route one host with two different `tls` (a
host has one HTTPS server: one certificate, one redirect). The routes file applies it inside
itself (core/routes.py), the merge of sources across them (core/merge.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from agent.core.match import cannot_share
from agent.core.route import Route

Owner = TypeVar("Owner")


@dataclass(frozen=True)
class Conflict:
    """A host of a route that an earlier route claims; str() says so in words."""

    kind: Literal["path", "tls"]
    index: int  # the host's place in the route's hosts
    host: str
    path: str
    owner: str  # the earlier route, as the caller names it
    detail: str = ""  # why routes that differ by `match` cannot share (core/match.py)

    def __str__(self) -> str:
        if self.kind == "path":
            return (f"{self.host!r} with path {self.path!r} is already routed by {self.owner}"
                    + (f" {self.detail}" if self.detail else ""))
        return f"{self.host!r} is also routed by {self.owner} with a different 'tls'"


class Claims(Generic[Owner]):
    """The hosts and paths claimed so far, and the `tls` each host was first routed with."""

    def __init__(self) -> None:
        self._paths: dict[tuple[str, str], list[tuple[Route, Owner]]] = {}
        self._tls: dict[str, tuple[object, Owner]] = {}

    def conflicts(self, route: Route, name: Callable[[Owner], str]) -> Iterator[Conflict]:
        """Each host of `route` that a claim taken before conflicts with (a host the route
        itself names twice too); at most one `tls` conflict per route. `name` words an owner."""
        seen: set[str] = set()
        tls_said = False
        for i, host in enumerate(route.hosts):
            shared = next(((o, why) for other, o in self._paths.get((host, route.path), ())
                           if (why := cannot_share(route, other)) is not None), None)
            if shared is not None:
                yield Conflict("path", i, host, route.path, name(shared[0]), shared[1])
            elif host in seen:
                yield Conflict("path", i, host, route.path, "this route")
            seen.add(host)
            first = self._tls.get(host)
            if first is not None and first[0] != route.tls and not tls_said:
                tls_said = True
                yield Conflict("tls", i, host, route.path, name(first[1]))

    def take(self, route: Route, owner: Owner) -> None:
        for host in route.hosts:
            self._paths.setdefault((host, route.path), []).append((route, owner))
            self._tls.setdefault(host, (route.tls, owner))
