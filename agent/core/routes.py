"""The route model, and the one parser of routes: a file, a document, or one route alone.

A route is validated field by field (core/fields.py holds each field to a pattern nginx reads as
a plain token) and as a whole (one target, what goes with what). A value that does not fit is
refused with its place (`routes[2].hosts[0]: ...`); nothing is "cleaned up". All errors of a
file are reported at once. Routes that claim the same host and path are refused by the conflict
rule of core/merge.py, the same rule that merges the controller's routes with the file's.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from agent.core.errors import FieldError, Loc, place, problems
from agent.core.errors import shown as _shown
from agent.core.fields import (
    ACME_CHALLENGE_PATH,
    ERROR_PAGES_PATH,
    Balance,
    Bytes,
    DnsName,
    HostName,
    Network,
    PageFile,
    PathPrefix,
    Seconds,
    ServiceName,
    Tls,
    Zone,
    as_allow,
    is_address,
)
from agent.core.files import MiB, TooLarge, read_bounded
from agent.core.options import (
    BasicAuth,
    Headers,
    RateLimit,
    Redirect,
    Sticky,
    as_basic_auth,
    as_rate_limit,
    as_redirect,
    as_sticky,
)
from agent.core.yamlfile import YamlError, load_yaml

if TYPE_CHECKING:
    from agent.core.tcp import TcpRoute

# What a route that only redirects has no use for: the request never goes anywhere else.
_PROXY_FIELDS = ("service", "host", "port", "balance", "connect_timeout", "read_timeout",
                 "websocket", "strip_prefix", "allow", "basic_auth", "rate_limit", "headers",
                 "compress", "sticky", "error_page", "maintenance", "protocol")


# what HTTP/1.1 proxying does that a gRPC route does not: an upgrade, a rewritten path, gzip of
# the answers, headers set per request (grpc_set_header), a sticky cookie
_NOT_WITH_GRPC = ("websocket", "strip_prefix", "compress", "headers", "sticky")


def _tls(value: object) -> object:
    if isinstance(value, bool):  # `tls: true`: the certificates by host name
        return {} if value else None
    if value == "acme":  # `tls: acme`: certificates from the controller's ACME client
        return {"acme": True}
    if value is None or isinstance(value, dict | Tls):
        return value
    raise ValueError(f"{_shown(value)}: give true or acme, or the tls options as a mapping "
                     "(false: no HTTPS)")


def _protocol(value: object) -> object:
    if value == "http2":
        raise ValueError("'http2' is not a protocol of its own: every route with 'tls' speaks "
                         "HTTP/2 (and HTTP/1.1) to clients already; to the tasks nginx speaks "
                         "HTTP/1.1 ('http') or gRPC ('grpc'), and no other HTTP/2")
    return value


@dataclass(frozen=True, order=True)
class Target:
    """What a route sends traffic to: a swarm service's tasks, or a plain DNS name."""

    kind: Literal["service", "host"]
    name: str

    @property
    def lookup_name(self) -> str:
        return f"tasks.{self.name}" if self.kind == "service" else self.name

    def __str__(self) -> str:
        return self.name


class Route(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)

    hosts: tuple[HostName, ...] = Field(min_length=1)
    path: PathPrefix = "/"
    service: ServiceName | None = None
    host: DnsName | None = None
    # a route that only redirects (before `port`, which it does without)
    redirect: Annotated[Redirect | None, BeforeValidator(as_redirect)] = None
    port: int | None = Field(default=None, ge=1, le=65535, strict=True, validate_default=True)
    zone: Zone | None = None
    balance: Balance = "round_robin"
    connect_timeout: Seconds = 5.0
    read_timeout: Seconds = 60.0
    max_body_size: Bytes = 1024**2
    websocket: bool = Field(default=False, strict=True)
    tls: Annotated[Tls | None, BeforeValidator(_tls)] = None
    # only these client addresses reach the route (docs/security.md: which address is checked)
    allow: Annotated[tuple[Network, ...] | None, BeforeValidator(as_allow)] = None
    basic_auth: Annotated[BasicAuth | None, BeforeValidator(as_basic_auth)] = None
    rate_limit: Annotated[RateLimit | None, BeforeValidator(as_rate_limit)] = None
    headers: Headers | None = None
    compress: bool = Field(default=False, strict=True)  # gzip text answers for clients that ask
    sticky: Annotated[Sticky | None, BeforeValidator(as_sticky)] = None
    # an HTML page in --route-files-dir for the 502, 503 and 504 nginx answers on this route
    error_page: PageFile | None = None
    maintenance: bool = Field(default=False, strict=True)  # 503 for every request; no task
    # grpc: the tasks speak gRPC (HTTP/2 without TLS); clients reach it over HTTPS (HTTP/2)
    protocol: Annotated[Literal["http", "grpc"], BeforeValidator(_protocol)] = "http"
    # the task sees the path without the route's prefix (and the prefix in X-Forwarded-Prefix)
    strip_prefix: bool = Field(default=False, strict=True)

    @field_validator("port")
    @classmethod
    def _port_to_proxy(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is None and info.data.get("redirect") is None:
            raise PydanticCustomError("missing", "required field is missing")
        return value

    @field_validator("strip_prefix")
    @classmethod
    def _a_prefix_to_strip(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("path") == "/":  # (absent: the path itself was refused)
            raise ValueError("the route's path is '/': there is no prefix to strip "
                             "(give 'path', e.g. /api)")
        return value

    @model_validator(mode="after")
    def _one_target(self) -> Route:
        if self.redirect is not None:
            # (by value, not by presence: the controller's copy writes every default out)
            unused = [f for f in _PROXY_FIELDS
                      if getattr(self, f) != type(self).model_fields[f].default]
            if unused:
                raise FieldError("redirect", "the route only redirects, it sends no request "
                                 f"on: leave out {', '.join(repr(f) for f in unused)}")
            return self
        if self.sticky is not None and self.balance != "round_robin":
            raise FieldError("sticky", f"sticky chooses the task by its cookie: leave out "
                             f"balance {self.balance!r}")
        if self.protocol == "grpc":
            if self.tls is None:
                raise FieldError("protocol", "gRPC clients speak HTTP/2, which the gateway "
                                 "offers on HTTPS: give the route 'tls'")
            unfit = [f for f in _NOT_WITH_GRPC
                     if getattr(self, f) != type(self).model_fields[f].default]
            if unfit:
                raise FieldError("protocol", "not with grpc (yet): leave out "
                                 f"{', '.join(repr(f) for f in unfit)}")
        if (self.service is None) == (self.host is None):
            raise ValueError("give exactly one of 'service' (a swarm service) "
                             "or 'host' (a DNS name resolved as it is), or 'redirect'")

        if (self.path + "/").startswith(ERROR_PAGES_PATH):
            raise ValueError(f"path {self.path!r}: the gateway serves its error pages there")
        if self.tls is not None and self.tls.acme:
            if (self.path + "/").startswith(ACME_CHALLENGE_PATH):
                raise ValueError(f"path {self.path!r}: with tls: acme the gateway sends "
                                 f"{ACME_CHALLENGE_PATH} to the controller; route another path")
            # a wildcard is ordered with DNS-01 (the controller's --acme-dns-provider); a
            # CA issues for public DNS names only: an order for anything else fails, and
            # failures count against the account's limits, for every host
            unfit = [h for h in self.hosts if "." not in h or "_" in h or is_address(h)]
            if unfit:
                raise ValueError(f"tls: acme cannot cover {', '.join(unfit)}: an ACME CA "
                                 "issues for DNS names with a dot and no '_' only")
        return self

    @property
    def proxies(self) -> bool:
        """The route passes requests to a target (else it only redirects)."""
        return self.redirect is None

    @property
    def target(self) -> Target:
        assert self.proxies, "a route that only redirects has no target"
        if self.service is not None:
            return Target("service", self.service)
        assert self.host is not None
        return Target("host", self.host)


class _RoutesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    routes: tuple[Route, ...]


@dataclass(frozen=True)
class RouteTable:
    routes: tuple[Route, ...]
    tcp: tuple[TcpRoute, ...] = ()  # the file's `tcp:` routes (core/tcp.py)

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
                            {r.target for r in self.tcp}))


class RoutesError(ValueError):
    """Routes that cannot be used; `errors` holds every problem, each naming its place."""

    def __init__(self, source: str, errors: Sequence[str]) -> None:
        self.source = source
        self.errors = list(errors)
        super().__init__(f"{source}: " + "; ".join(self.errors))


class RouteError(ValueError):
    """One route that cannot be used: each problem with its place inside the route, so that a
    caller names it in its own words (`route.port`, `label gateway.port`)."""

    def __init__(self, problems: Sequence[tuple[Loc, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{place(loc)}: {msg}" for loc, msg in self.problems))


def _without_echoes(found: list[tuple[Loc, str]]) -> list[tuple[Loc, str]]:
    """A route whose `redirect` is refused is not told again that, then, it lacks a port."""
    refused = {loc[:loc.index("redirect")] for loc, _ in found if "redirect" in loc}
    return [(loc, msg) for loc, msg in found
            if not (loc[-1:] == ("port",) and msg == "required field is missing"
                    and loc[:-1] in refused)]


def parse_route(data: Any) -> Route:
    """One route, as a routes file item, a label set or the controller's document gives it.
    Raises RouteError with every problem, places relative to the route (`hosts[1]`)."""
    try:
        return Route.model_validate(data)
    except ValidationError as exc:
        raise RouteError(_without_echoes(problems(exc))) from None


def parse_routes(data: Any, source: str = "routes") -> RouteTable:
    """A routes document (`{"routes": [...]}`); the routes must not claim one host and path
    twice, nor one host with two `tls`. Raises RoutesError with every problem at once."""
    # the conflict rule, and the tcp routes' model (each imports this module)
    from agent.core.merge import Claims
    from agent.core.tcp import parse_tcp

    if not isinstance(data, Mapping):
        raise RoutesError(source, ["(top level): expected a mapping with a 'routes' list"])
    data = dict(data)
    tcp_data = data.pop("tcp", None)
    if tcp_data is not None:  # a file of tcp routes only needs no `routes: []`
        data.setdefault("routes", [])
    tcp, tcp_errors = parse_tcp(tcp_data)
    try:
        parsed = _RoutesFile.model_validate(data)
    except ValidationError as exc:
        raise RoutesError(source, [f"{place(loc)}: {msg}" for loc, msg
                                   in _without_echoes(problems(exc))] + tcp_errors) from None
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
    return RouteTable(parsed.routes, tcp)


def parse_routes_text(text: str, source: str = "routes") -> RouteTable:
    try:
        data = load_yaml(text)
    except YamlError as exc:
        raise RoutesError(source, [str(exc)]) from None
    if data is None:
        raise RoutesError(source, ["(top level): the file is empty; expected 'routes:'"])
    return parse_routes(data, source)


# a routes file holds at most this much (10,000 routes are about 1 MiB)
MAX_ROUTES_FILE = 4 * MiB


class RoutesUnreadable(RoutesError):
    """The routes file could not be read (its text was not reached): a reader may try again."""


def load_routes(path: Path) -> RouteTable:
    try:
        text = read_bounded(path, MAX_ROUTES_FILE).decode("utf-8")
    except OSError as exc:
        raise RoutesUnreadable(str(path), [f"cannot read: {exc}"]) from None
    except (TooLarge, UnicodeDecodeError) as exc:
        raise RoutesError(str(path), [f"cannot read: {exc}"]) from None
    return parse_routes_text(text, str(path))
