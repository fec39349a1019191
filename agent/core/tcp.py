"""TCP routes: plain TCP by port, and TLS passthrough by SNI, to a service's tasks.

The routes file's `tcp:` list, beside `routes:`:

    tcp:
      - listen: 5432                 # a port of the gateway (on --listen's address)
        service: db                  # tasks.db, as an HTTP route's service
        port: 5432
        allow: [10.0.0.0/8]
      - listen: 9443                 # TLS passthrough: the task terminates TLS itself
        sni: [db.example.com, "*.db.example.com"]
        service: dbproxy
        port: 8443

A port is either one plain route (no `sni`: every connection goes to its tasks) or shared by
routes that each name their `sni` (nginx reads the name from the client's TLS hello without
terminating it; a name no route gives, or none, is refused). Values pass the same field types as
HTTP routes (core/fields.py) and every error names its place (`tcp[1].sni[0]: ...`). Which ports
the gateway itself holds (--listen, --https-listen, the admin and status ports) is a setting, not
the file's: gateway/ports.py checks those when a gateway loads the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from agent.core.errors import place, problems
from agent.core.errors import shown as _shown
from agent.core.fields import (
    DnsName,
    HostName,
    Network,
    Seconds,
    ServiceName,
    Zone,
    as_allow,
    is_address,
)
from agent.core.route import RouteError, Target

# a connection whose first bytes are not a TLS hello is refused at once; one that sends nothing
# at all waits at most this long for its hello on an SNI port (nginx's preread_timeout)
PREREAD_TIMEOUT = 5
# nginx's own default for proxy_timeout: a connection idle this long both ways is closed
DEFAULT_IDLE_TIMEOUT = 600.0


def _sni(value: object) -> object:
    if isinstance(value, str):  # `sni: db.example.com`
        return [value]
    if isinstance(value, list | tuple) and not value:
        raise ValueError("an empty list would refuse every connection: give at least one "
                         "name, or leave out 'sni' for plain TCP")
    return value


# words nginx's `map` reads as its own parameters where a name belongs (ngx_stream_map_module)
_MAP_WORDS = frozenset({"default", "hostnames", "include", "volatile"})


def _sni_name(value: str) -> str:
    if is_address(value):
        raise ValueError(f"{_shown(value)}: a client names no IP address in its TLS hello "
                         "(RFC 6066): give a DNS name")
    if value in _MAP_WORDS:
        raise ValueError(f"{_shown(value)}: a name of one label that nginx's map of names "
                         "reads as a parameter of its own; give the full name")
    return value


SniName = Annotated[HostName, AfterValidator(_sni_name)]
# what a route may say differently from another route on its port: nginx has one server there
_PER_PORT = ("connect_timeout", "idle_timeout", "proxy_protocol")


class TcpRoute(BaseModel):
    """One TCP route: connections to `listen` (with one of the `sni` names) go to the tasks."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)

    listen: int = Field(ge=1, le=65535, strict=True)
    sni: Annotated[tuple[SniName, ...] | None, BeforeValidator(_sni)] = None
    service: ServiceName | None = None
    host: DnsName | None = None
    port: int = Field(ge=1, le=65535, strict=True)
    zone: Zone | None = None
    balance: Literal["round_robin", "least_conn"] = "round_robin"
    # only these client addresses (the connection's peer) reach the tasks
    allow: Annotated[tuple[Network, ...] | None, BeforeValidator(as_allow)] = None
    connect_timeout: Seconds = 5.0
    # a connection that sent and received nothing this long is closed (both directions)
    idle_timeout: Seconds = DEFAULT_IDLE_TIMEOUT
    # the PROXY protocol (v1) header to the task: it learns the client's address
    proxy_protocol: bool = Field(default=False, strict=True)

    @model_validator(mode="after")
    def _one_target(self) -> TcpRoute:
        if (self.service is None) == (self.host is None):
            raise ValueError("give exactly one of 'service' (a swarm service) "
                             "or 'host' (a DNS name resolved as it is)")
        return self

    @property
    def target(self) -> Target:
        if self.service is not None:
            return Target("service", self.service)
        assert self.host is not None
        return Target("host", self.host)

    @property
    def label(self) -> str:
        """How logs, /status and the generated file name the route: `:9443 db.example.com`."""
        return f":{self.listen}" + (f" {','.join(self.sni)}" if self.sni else "")


class _TcpList(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tcp: tuple[TcpRoute, ...]


def parse_tcp(data: object) -> tuple[tuple[TcpRoute, ...], list[str]]:
    """The `tcp:` list of a routes file: (routes, every error with its place). A list that has
    errors gives no routes."""
    if data is None:
        return (), []
    try:
        parsed = _TcpList.model_validate({"tcp": data})
    except ValidationError as exc:
        return (), [f"{place(loc)}: {msg}" for loc, msg in problems(exc)]
    errors = conflicts(parsed.tcp)
    return (parsed.tcp, []) if not errors else ((), errors)


def parse_tcp_item(data: object) -> TcpRoute:
    """One tcp route alone (an item of the controller's document). Raises RouteError with every
    problem, places relative to the route (`sni[0]`)."""
    try:
        return TcpRoute.model_validate(data)
    except ValidationError as exc:
        raise RouteError(problems(exc)) from None


def conflicts(routes: Sequence[TcpRoute]) -> list[str]:
    """Routes that cannot share their port: a plain route takes its port whole; routes by SNI
    share one, each name once, and agree on what nginx sets once per port."""
    return [error for _, error in refusals(routes)]


def refusals(routes: Sequence[TcpRoute], places: Sequence[int] | None = None,
             ) -> list[tuple[int, str]]:
    """conflicts(), each error with the index of the (later) route it refuses; `places` names
    each route's place in the list it came from (a document whose bad items were left out)."""
    at = list(places) if places is not None else list(range(len(routes)))
    first: dict[int, int] = {}
    names: dict[tuple[int, str], int] = {}
    errors: list[tuple[int, str]] = []
    for i, route in enumerate(routes):
        j = first.setdefault(route.listen, i)
        if j != i:
            other = routes[j]
            if route.sni is None or other.sni is None:
                plain = f"tcp[{at[j]}]" if other.sni is None else "this route"
                errors.append((i,
                    f"tcp[{at[i]}].listen: port {route.listen} is also tcp[{at[j]}]'s; {plain} "
                    "has no 'sni' and takes every connection to it: a port is one plain route, "
                    "or shared by routes that each give their 'sni'"))
                continue
            for field in _PER_PORT:
                if getattr(route, field) != getattr(other, field):
                    theirs = getattr(other, field)
                    shown = f"{theirs:g}s" if isinstance(theirs, float) else _shown(theirs)
                    errors.append((i,
                        f"tcp[{at[i]}].{field}: routes on port {route.listen} share one nginx "
                        f"server, and tcp[{at[j]}] gives {shown}: give the same, or another "
                        "port"))
        for k, name in enumerate(route.sni or ()):
            seen = names.setdefault((route.listen, name), i)
            if seen == i and route.sni is not None and route.sni.index(name) != k:
                errors.append((i, f"tcp[{at[i]}].sni[{k}]: {name!r} is given twice (names "
                               "ignore case)"))
            elif seen != i:
                errors.append((i, f"tcp[{at[i]}].sni[{k}]: {name!r} on port {route.listen} "
                               f"is already tcp[{at[seen]}]'s"))
    return errors
