"""Route options that send traffic to a second service: `canary` (a share of the requests goes
there instead) and `mirror` (a copy of a share goes there too, its answers thrown away), and the
checks of how they go with the rest of a route (core/route.py calls `check_traffic`)."""

from __future__ import annotations

from typing import Annotated, Literal, Protocol

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from agent.core.errors import FieldError
from agent.core.errors import shown as _shown
from agent.core.fields import Seconds, ServiceName, strict_str
from agent.core.options import HEADER_NAME_RE, OWN_REQUEST_HEADERS, CookieName

# the internal location of a server whose routes mirror: a route may not claim this path
MIRROR_PATH = "/.gateway-mirror/"
# the values of a canary's header (and cookie) that choose a side
CANARY_SIDES = ("canary", "stable")


def _header(value: str) -> str:
    if not HEADER_NAME_RE.fullmatch(value):
        raise ValueError(f"{_shown(value)} is not a header name (letters, digits, '-')")
    if value.lower() in OWN_REQUEST_HEADERS:
        raise ValueError(f"{value!r} is a header the gateway itself sets or HTTP decides")
    return value


HeaderName = Annotated[str, BeforeValidator(strict_str), AfterValidator(_header)]


class Canary(BaseModel):
    """`weight` percent of the route's requests go to `service` instead (split by nginx's
    split_clients on each request's id: exact whatever the tasks of either side); `cookie`
    keeps a client on the side it first got; `header` (`canary` or `stable`) forces a side."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    service: ServiceName
    weight: int = Field(ge=1, le=99, strict=True)
    port: int | None = Field(default=None, ge=1, le=65535, strict=True)  # else the route's
    cookie: CookieName | None = None
    header: HeaderName | None = None


class Mirror(BaseModel):
    """A copy of `share` percent of the route's requests (with their bodies) goes to `service`;
    its answers are thrown away, and it is given up after `timeout`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    service: ServiceName
    share: int = Field(default=100, ge=1, le=100, strict=True)
    port: int | None = Field(default=None, ge=1, le=65535, strict=True)  # else the route's
    timeout: Annotated[Seconds, AfterValidator(lambda v: _at_most(v, 60.0))] = 1.0


def _at_most(value: float, limit: float) -> float:
    if value > limit:
        raise ValueError(f"{value:g} s: a mirror is given up after {limit:g} s at most "
                         "(a slow mirror holds the client's connection until then)")
    return value


def as_canary(value: object) -> object:
    if value is None or isinstance(value, dict | Canary):
        return value
    raise ValueError(f"{_shown(value)}: give a mapping with 'service' and 'weight' "
                     "(and 'port', 'cookie', 'header')")


def as_mirror(value: object) -> object:
    if isinstance(value, str):  # `mirror: shop-next`: every request
        return {"service": value}
    if value is None or isinstance(value, dict | Mirror):
        return value
    raise ValueError(f"{_shown(value)}: give a service name, or a mapping with 'service' "
                     "(and 'share', 'port', 'timeout')")

Speaks = Literal["http", "grpc", "h2c"]


class _Route(Protocol):
    """What these checks read of a route (core/route.py's Route)."""

    @property
    def path(self) -> str: ...
    @property
    def service(self) -> str | None: ...
    @property
    def port(self) -> int | None: ...
    @property
    def protocol(self) -> str: ...
    @property
    def websocket(self) -> bool: ...
    @property
    def strip_prefix(self) -> bool: ...
    @property
    def sticky(self) -> object: ...
    @property
    def canary(self) -> Canary | None: ...
    @property
    def mirror(self) -> Mirror | None: ...


def check_traffic(route: _Route) -> None:
    """What canary, mirror and h2c do not go with (a route that proxies)."""
    if route.path.startswith(MIRROR_PATH.rstrip("/")):
        raise FieldError("path", f"{route.path!r}: the gateway sends mirrored requests there")
    if route.protocol == "h2c" and route.websocket:
        raise FieldError("protocol", "h2c: nginx passes no WebSocket upgrade over HTTP/2 "
                         "to the tasks: leave out 'websocket' (or use protocol http)")
    for name in ("canary", "mirror"):
        side = getattr(route, name)
        if side is None:
            continue
        if route.protocol == "grpc":
            raise FieldError(name, f"not with protocol grpc (yet): leave out {name!r}")
        if route.service == side.service and (side.port or route.port) == route.port:
            raise FieldError(name, f"{side.service!r} is the route's own service and port")
    if route.canary is not None:
        unfit = [f for f in ("strip_prefix", "sticky") if getattr(route, f)]
        if unfit:
            raise FieldError("canary", "not with " + ", ".join(repr(f) for f in unfit)
                             + " (a canary keeps clients on a side with canary.cookie)")


def side_services(route: _Route) -> tuple[str, ...]:
    """The second services a route sends requests to (canary, mirror)."""
    return tuple(side.service for side in (route.canary, route.mirror) if side is not None)
