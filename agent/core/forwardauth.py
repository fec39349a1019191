"""`auth`: forward authentication. nginx asks an auth service (oauth2-proxy's protocol, as
Authelia, Authentik and Traefik's forwardAuth speak it) about every request before the route
sends it on: 2xx lets it through, 401 refuses it (or redirects to `signin`), 403 refuses it,
anything else (the service down, a 5xx) answers 500. Headers the auth service answers with
(`response_headers`) are passed on to the task, and never the client's own copies of them.

The auth service is a swarm service (`service` and `port`, found like any route's) or a URL
(`url`: a host name or address resolved like a route's `host`), and the path asked on it."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from agent.core.errors import shown as _shown
from agent.core.fields import (
    DNS_NAME_RE,
    PATH_RE,
    ServiceName,
    check_path,
    is_address,
    strict_str,
)
from agent.core.options import HEADER_NAME_RE, OWN_REQUEST_HEADERS, _redirect_url

# The internal location each server gets for a route's auth subrequest; no route may take it.
AUTH_PATH = "/.gateway-auth/"
_URL_RE = re.compile(r"http://(?P<host>[^/:\[\]]+)(?::(?P<port>[0-9]{1,5}))?(?P<path>/[^?#]*)?")


def _auth_url(value: object) -> object:
    """`http://NAME[:PORT][/PATH]` as the parts the model keeps: host, port, path."""
    if value is None:  # (the controller's copy writes it out)
        return value
    if not isinstance(value, str) or not (m := _URL_RE.fullmatch(value)):
        raise ValueError(f"{_shown(value)} is not an auth URL (http://, a host name or IPv4 "
                         "address, an optional port and path; no query)")
    host = m.group("host").lower()
    if not (is_address(host) or (DNS_NAME_RE.fullmatch(host) and len(host) <= 253)):
        raise ValueError(f"{_shown(value)}: {host!r} is not a valid host name")
    port = int(m.group("port") or 80)
    if not 1 <= port <= 65535:
        raise ValueError(f"{_shown(value)}: the port is out of range")
    path = m.group("path") or "/"
    if path != "/":
        check_path(path.rstrip("/") if path.endswith("/") else path)
    return value


def _signin(value: object) -> object:
    return None if value is None else _redirect_url(value)


def _auth_path(value: str) -> str:
    # a path the request line carries as it is: the same characters as a route's path
    if not PATH_RE.fullmatch(value.rstrip("/") or "/"):
        raise ValueError(f"{_shown(value)} is not a path (it starts with '/'; segments of "
                         "letters, digits and - . _ ~ + , : @)")
    check_path(value.rstrip("/") or "/")
    return value


def _identity_headers(value: object) -> object:
    if isinstance(value, str):  # one header where a list belongs
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError(f"{_shown(value)}: give a list of header names")
    problems: list[str] = []
    seen: set[str] = set()
    for name in value:
        if not isinstance(name, str) or not HEADER_NAME_RE.fullmatch(name):
            problems.append(f"{_shown(name)} is not a header name (letters, digits, '-')")
        elif name.lower() in OWN_REQUEST_HEADERS:
            problems.append(f"{name!r} is set by the gateway itself")
        elif name.lower() in seen:
            problems.append(f"{name!r} is given twice (header names ignore case)")
        else:
            seen.add(name.lower())
    if problems:
        raise ValueError("; ".join(problems))
    return tuple(value)


def header_var(name: str) -> str:
    """The variable auth_request_set keeps an auth answer's header in (names ignore case)."""
    return "gateway_auth_" + name.lower().replace("-", "_")


class ForwardAuth(BaseModel):
    """Ask an auth service before each request (nginx's auth_request)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: Annotated[str | None, BeforeValidator(_auth_url)] = None
    service: ServiceName | None = None
    port: int | None = Field(default=None, ge=1, le=65535, strict=True)
    path: Annotated[str, BeforeValidator(strict_str), AfterValidator(_auth_path)] = "/"
    # headers of the auth service's answer the task gets (X-Auth-Request-User, ...)
    response_headers: Annotated[tuple[str, ...], BeforeValidator(_identity_headers)] = ()
    # where a refused (401) client is sent, with the URL it asked for as `rd`
    signin: Annotated[str | None, BeforeValidator(_signin)] = None

    @model_validator(mode="after")
    def _one_service(self) -> ForwardAuth:
        if (self.url is None) == (self.service is None):
            raise ValueError("give exactly one of 'url' (http://NAME:PORT/PATH) or 'service' "
                             "(a swarm service, with 'port' and 'path')")
        if self.service is not None and self.port is None:
            raise ValueError("'service' needs 'port': the port the auth service listens on")
        if self.url is not None and (self.port is not None or self.path != "/"):
            raise ValueError("'url' says the port and path itself: leave out 'port' and 'path'")
        return self

    @property
    def identity(self) -> tuple[tuple[str, str], ...]:
        """(header, the variable auth_request_set keeps it in) for each of response_headers:
        what the route's request, and its mirror's copy, are given."""
        return tuple((name, header_var(name)) for name in self.response_headers)

    @property
    def kind(self) -> Literal["service", "host"]:
        return "service" if self.service is not None else "host"

    @property
    def name(self) -> str:
        if self.service is not None:
            return self.service
        m = _URL_RE.fullmatch(self.url or "")
        assert m is not None
        return m.group("host").lower()

    @property
    def target_port(self) -> int:
        if self.port is not None:
            return self.port
        m = _URL_RE.fullmatch(self.url or "")
        assert m is not None
        return int(m.group("port") or 80)

    @property
    def target_path(self) -> str:
        if self.url is None:
            return self.path
        m = _URL_RE.fullmatch(self.url)
        assert m is not None
        return m.group("path") or "/"


def as_forward_auth(value: object) -> object:
    if isinstance(value, str):  # `auth: http://auth:4180/oauth2/auth`
        return {"url": value}
    if value is None or isinstance(value, dict | ForwardAuth):
        return value
    raise ValueError(f"{_shown(value)}: give the auth service's URL, or a mapping with 'url' "
                     "or 'service' (and 'port', 'path', 'response_headers', 'signin')")




def route_problem(path: str, auth: ForwardAuth | None,
                  request_headers: tuple[tuple[str, str | None], ...]) -> tuple[str, str] | None:
    """What a route's `path` or `auth` cannot be, as (field, message): the path of the auth
    subrequests, or a header both passed from the auth service and set by `headers`."""
    if (path + "/").startswith(AUTH_PATH):
        return "path", f"path {path!r}: the gateway asks auth services there"
    if auth is None:
        return None
    both = sorted({n.lower() for n in auth.response_headers} &
                  {n.lower() for n, _ in request_headers})
    if both:
        return "auth", (f"{', '.join(both)}: passed on from the auth service, and set by "
                        "'headers.request' too; give each header once")
    return None
