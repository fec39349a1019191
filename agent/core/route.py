"""The route model: one route, as a routes file item, a label set or the controller's document
gives it, validated field by field (core/fields.py, core/options.py) and as a whole (one target,
what goes with what). A value that does not fit is refused with its place; nothing is "cleaned
up". core/routes.py reads whole files and documents of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

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

from agent.core.cors import Cors, as_cors
from agent.core.edgetls import UpstreamTlsField
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
from agent.core.forwardauth import ForwardAuth, as_forward_auth, route_problem
from agent.core.match import Match, as_match
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
from agent.core.retry import DEFAULT_FAIL_TIMEOUT, MaxConns, Retry, as_retry
from agent.core.traffic import Canary, Mirror, Speaks, as_canary, as_mirror, check_traffic

# What a route that only redirects has no use for: the request never goes anywhere else.
_PROXY_FIELDS = ("service", "host", "port", "balance", "connect_timeout", "read_timeout",
                 "websocket", "strip_prefix", "allow", "basic_auth", "rate_limit", "headers",
                 "compress", "sticky", "error_page", "maintenance", "protocol",
                 "canary", "mirror", "auth", "retry", "max_conns", "fail_timeout", "cors",
                 "upstream_tls", "match")


# what HTTP/1.1 proxying does that a gRPC route does not: an upgrade, a rewritten path, gzip of
# the answers, headers set per request (grpc_set_header), a sticky cookie
_NOT_WITH_GRPC = ("websocket", "strip_prefix", "compress", "headers", "sticky", "auth", "cors",
                  "upstream_tls")


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
                         "HTTP/1.1 ('http'), gRPC ('grpc') or HTTP/2 without TLS ('h2c')")
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
    # h2c: the tasks speak HTTP/2 without TLS (nginx's proxy_http_version 2)
    protocol: Annotated[Speaks, BeforeValidator(_protocol)] = "http"
    # the task sees the path without the route's prefix (and the prefix in X-Forwarded-Prefix)
    strip_prefix: bool = Field(default=False, strict=True)
    # a share of the requests to a second service instead, or a copy of them (core/traffic.py)
    canary: Annotated[Canary | None, BeforeValidator(as_canary)] = None
    mirror: Annotated[Mirror | None, BeforeValidator(as_mirror)] = None
    # forward auth: an auth service admits each request first (core/forwardauth.py)
    auth: Annotated[ForwardAuth | None, BeforeValidator(as_forward_auth)] = None
    # retries on another task, and what a task takes (core/retry.py)
    retry: Annotated[Retry | None, BeforeValidator(as_retry)] = None
    max_conns: MaxConns = 0
    fail_timeout: Seconds = DEFAULT_FAIL_TIMEOUT
    # cross-origin requests: preflights answered at the gateway (core/cors.py)
    cors: Annotated[Cors | None, BeforeValidator(as_cors)] = None
    # the tasks speak HTTPS: verified against a CA file of --route-files-dir (core/edgetls.py)
    upstream_tls: UpstreamTlsField = None
    # only requests with these headers and methods (core/match.py): routes may share a path
    match: Annotated[Match | None, BeforeValidator(as_match)] = None

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
        check_traffic(self)
        if (self.service is None) == (self.host is None):
            raise ValueError("give exactly one of 'service' (a swarm service) "
                             "or 'host' (a DNS name resolved as it is), or 'redirect'")

        if (problem := route_problem(self.path, self.auth, self.headers.request
                                     if self.headers else ())) is not None:
            raise FieldError(*problem)
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


class RouteError(ValueError):
    """One route that cannot be used: each problem with its place inside the route, so that a
    caller names it in its own words (`route.port`, `label gateway.port`)."""

    def __init__(self, problems: Sequence[tuple[Loc, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{place(loc)}: {msg}" for loc, msg in self.problems))


def without_echoes(found: list[tuple[Loc, str]]) -> list[tuple[Loc, str]]:
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
        raise RouteError(without_echoes(problems(exc))) from None
