"""A route's options that are small models of their own: basic_auth, headers, sticky,
rate_limit, redirect. Each value held to the patterns of core/fields.py."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_serializer,
)

from agent.core.edgetls import CLIENT_HEADERS
from agent.core.errors import shown as _shown
from agent.core.fields import HOST_RE, HtpasswdFile, Realm, check_path, strict_str


class BasicAuth(BaseModel):
    """HTTP basic authentication against an htpasswd file in --route-files-dir
    (gateway/routefiles.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: HtpasswdFile
    realm: Realm = "restricted"


def as_basic_auth(value: object) -> object:
    if isinstance(value, str):  # `basic_auth: users.htpasswd`
        return {"file": value}
    if value is None or isinstance(value, dict | BasicAuth):
        return value
    raise ValueError(f"{_shown(value)}: give the htpasswd file's name, or a mapping with "
                     "'file' (and 'realm')")


# Header names: letters, digits and '-' (a subset of RFC 7230's token that needs no quoting);
# values: printable ASCII without '"', '\\', '$', '{' and '}', written between double quotes,
# where nginx's parser (ngx_conf_read_token) ends the word only at the closing quote: a ';'
# there is text (`Cache-Control: no-cache; ...`, a Content-Security-Policy).
HEADER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
HEADER_VALUE_RE = re.compile(r"[ !#%&'()*+,\-./0-9:;<=>?@A-Z\[\]^_`a-z|~]{1,1024}")
# what the gateway itself sends to the task, or what HTTP itself decides
OWN_REQUEST_HEADERS = frozenset({
    "host", "connection", "upgrade", "x-real-ip", "x-forwarded-for", "x-forwarded-proto",
    "x-forwarded-host", "x-forwarded-port", "x-forwarded-prefix", "forwarded", "keep-alive",
    "te", "transfer-encoding", "content-length", "proxy-connection",
    "x-request-id", "traceparent"}) | CLIENT_HEADERS
OWN_RESPONSE_HEADERS = {
    "strict-transport-security": "give it with tls.hsts",
    "server": "nginx writes it itself", "date": "nginx writes it itself",
    "x-request-id": "the gateway gives each request's id",
    "connection": "HTTP decides it", "keep-alive": "HTTP decides it",
    "transfer-encoding": "HTTP decides it", "content-length": "HTTP decides it"}


def _header_set(direction: str) -> Callable[[object], object]:
    """A mapping of header name to value (set) or null/'' (remove), kept as sorted pairs."""
    def check(value: object) -> object:
        if not isinstance(value, Mapping):
            raise ValueError(f"{_shown(value)}: give a mapping of header name to value "
                             "(null or '' removes the header)")
        problems: list[str] = []
        seen: set[str] = set()
        out: list[tuple[str, str | None]] = []
        for name, text in value.items():
            if not isinstance(name, str) or not HEADER_NAME_RE.fullmatch(name):
                problems.append(f"{_shown(name)} is not a header name (letters, digits, '-')")
                continue
            lowered = name.lower()
            if lowered in seen:
                problems.append(f"{name!r} is given twice (header names ignore case)")
                continue
            seen.add(lowered)
            if direction == "request" and lowered in OWN_REQUEST_HEADERS:
                problems.append(f"{name!r} is set by the gateway itself")
                continue
            if direction == "response" and lowered in OWN_RESPONSE_HEADERS:
                problems.append(f"{name!r}: {OWN_RESPONSE_HEADERS[lowered]}")
                continue
            if text is None or text == "":
                out.append((name, None))
            elif isinstance(text, bool) or not isinstance(text, str | int):
                problems.append(f"{name!r}: {_shown(text)} is not a header value "
                                "(a string; null removes the header)")
            elif not HEADER_VALUE_RE.fullmatch(str(text)) or str(text) != str(text).strip():
                problems.append(f"{name!r}: {_shown(text)} is not a header value the gateway "
                                "writes (printable ASCII up to 1024 characters, no quote, "
                                "backslash, '$', '{', '}', no space at either end)")
            else:
                out.append((name, str(text)))
        if problems:
            raise ValueError("; ".join(problems))
        return tuple(sorted(out, key=lambda pair: pair[0].lower()))
    return check


HeaderPairs = tuple[tuple[str, str | None], ...]


class Headers(BaseModel):
    """Headers a route sets (a value) or removes (null) on the way to the task and back."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request: Annotated[HeaderPairs, BeforeValidator(_header_set("request"))] = ()
    response: Annotated[HeaderPairs, BeforeValidator(_header_set("response"))] = ()

    @field_serializer("request", "response")
    def _as_written(self, pairs: HeaderPairs) -> dict[str, str]:
        """As a routes file says it ('' removes), so that the controller's copy parses back."""
        return {name: value or "" for name, value in pairs}


# a cookie name nginx can read as $cookie_NAME (a variable name: no '-')
COOKIE_NAME_RE = re.compile(r"[A-Za-z0-9_]{1,64}")


def _cookie_name(value: str) -> str:
    if not COOKIE_NAME_RE.fullmatch(value):
        raise ValueError(f"{_shown(value)} is not a cookie name the gateway reads "
                         "(1 to 64 letters, digits and '_')")
    return value


CookieName = Annotated[str, BeforeValidator(strict_str), AfterValidator(_cookie_name)]


class Sticky(BaseModel):
    """A client stays on one task while it runs: by a cookie (hash ... consistent)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cookie: Annotated[str, BeforeValidator(strict_str), AfterValidator(_cookie_name)]


def as_sticky(value: object) -> object:
    if isinstance(value, str):  # `sticky: gateway_task`
        return {"cookie": value}
    if value is None or isinstance(value, dict | Sticky):
        return value
    raise ValueError(f"{_shown(value)}: give a cookie name, or a mapping with 'cookie'")


_RATE_RE = re.compile(r"([1-9][0-9]{0,5})r/([sm])", re.ASCII)


def _rate(value: object) -> str:
    if not isinstance(value, str) or not _RATE_RE.fullmatch(value):
        raise ValueError(f"{_shown(value)} is not a rate (requests per second or minute: "
                         "'10r/s', '600r/m'; 1 to 999999)")
    return value


class RateLimit(BaseModel):
    """Requests per client address (nginx's limit_req); beyond rate and burst: 429."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate: Annotated[str, BeforeValidator(_rate)]
    burst: int = Field(default=0, ge=0, le=100_000, strict=True)


def as_rate_limit(value: object) -> object:
    if isinstance(value, str):  # `rate_limit: 10r/s`
        return {"rate": value}
    if value is None or isinstance(value, dict | RateLimit):
        return value
    raise ValueError(f"{_shown(value)}: give a rate ('10r/s'), or a mapping with 'rate' "
                     "(and 'burst')")


_REDIRECT_URL_RE = re.compile(
    r"(?P<scheme>https?)://(?P<host>[^/:]+)(?::(?P<port>[0-9]{1,5}))?(?P<path>/[^?#]*)?")


def _redirect_url(value: object) -> str:
    if not isinstance(value, str) or not (m := _REDIRECT_URL_RE.fullmatch(value)):
        raise ValueError(f"{_shown(value)} is not a URL to redirect to (http:// or https://, "
                         "a host name, an optional port and path; no query)")
    host = m.group("host")
    if not HOST_RE.fullmatch(host) or host.startswith("*.") or len(host) > 253:
        raise ValueError(f"{_shown(value)}: {host!r} is not a valid host name")
    if m.group("port") is not None and not 1 <= int(m.group("port")) <= 65535:
        raise ValueError(f"{_shown(value)}: the port is out of range")
    path = m.group("path")
    if path is not None and path != "/":
        check_path(path.rstrip("/") if path.endswith("/") else path)
    return value


class Redirect(BaseModel):
    """A route that only redirects: to another origin (www to the apex) or another place."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    to: Annotated[str, BeforeValidator(_redirect_url)]
    code: Literal[301, 302, 303, 307, 308] = 308
    # the request's path and query follow `to` (https://example.com/a?b -> `to`/a?b)
    keep_path: bool = Field(default=True, strict=True)

    @property
    def target(self) -> str:
        """What nginx writes after the code; `$request_uri` follows when the path is kept."""
        return self.to.rstrip("/") if self.keep_path else self.to


def as_redirect(value: object) -> object:
    if isinstance(value, str):  # `redirect: https://example.com`
        return {"to": value}
    if value is None or isinstance(value, dict | Redirect):
        return value
    raise ValueError(f"{_shown(value)}: give a URL, or a mapping with 'to' (and 'code', "
                     "'keep_path')")

