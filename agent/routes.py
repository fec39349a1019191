"""The route model and its validation: the one place that decides what is safe.

Every value a route carries ends up in nginx configuration, so each field is held to a pattern
that cannot end a directive, open or close a block, quote, comment or expand a variable. A value
that does not fit is refused with its place (`routes[2].hosts[0]: ...`); nothing is "cleaned up".
All errors of a file are reported at once.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

if TYPE_CHECKING:
    from agent.tcp import TcpRoute

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
HOST_RE = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*")
DNS_NAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
# Docker's rule for service names (a stack prefixes its name and an underscore).
SERVICE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
ZONE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# nginx matches locations against the decoded URI, so a path prefix is written decoded: no '%'.
PATH_RE = re.compile(r"/(?:[A-Za-z0-9._~+,:@-]+(?:/[A-Za-z0-9._~+,:@-]+)*)?")
# re.ASCII: `\d` would also take digits of other scripts ('\u0665s' read as 5 seconds)
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", re.ASCII)
_SIZE_RE = re.compile(r"(\d+)([kKmMgG]?)", re.ASCII)
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


ACME_CHALLENGE_PATH = "/.well-known/acme-challenge/"
ERROR_PAGES_PATH = "/.gateway-error-pages/"  # an internal location of every server with pages


def is_address(name: str) -> bool:
    """An IP address (v4 or v6) rather than a name."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class FieldError(ValueError):
    """A route-wide check whose error belongs to one field: its place names the field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _host(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{_shown(value)} is not a host name (expected a string)")
    if not value.isascii():
        raise ValueError(f"{_shown(value)} is not a valid host name "
                         "(write internationalised names in their xn-- form)")
    lowered = value.lower()
    if len(lowered) > 253 or not HOST_RE.fullmatch(lowered):
        raise ValueError(f"{_shown(value)} is not a valid host name "
                         "(letters, digits, '-', '_', dots; a wildcard only as a leading '*.')")
    return lowered


def _dns_name(value: str) -> str:
    lowered = value.lower()
    if not value.isascii() or len(lowered) > 253 or not DNS_NAME_RE.fullmatch(lowered):
        raise ValueError(f"{_shown(value)} is not a valid DNS name")
    return lowered.rstrip(".")


def _service(value: str) -> str:
    if not SERVICE_RE.fullmatch(value):
        raise ValueError(f"{_shown(value)} is not a valid swarm service name "
                         "(letters, digits, '_', '.', '-', at most 63, starting alphanumeric)")
    return value


def _zone(value: str) -> str:
    if not ZONE_RE.fullmatch(value):
        raise ValueError(f"{_shown(value)} is not a valid zone "
                         "(lowercase letters, digits, '_', '-')")
    return value


def _path(value: str) -> str:
    if value != "/" and value.endswith("/"):
        raise ValueError(f"{_shown(value)}: leave out the trailing '/' "
                         f"({value.rstrip('/')!r} matches itself and everything below it)")
    if not PATH_RE.fullmatch(value):
        raise ValueError(f"{_shown(value)} is not a valid path prefix (it starts with '/'; "
                         "segments of letters, digits and - . _ ~ + , : @)")
    segments = value.split("/")
    if "." in segments or ".." in segments:
        raise ValueError(f"{_shown(value)} contains a '.' or '..' segment")
    return value


def _duration(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{_shown(value)} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.fullmatch(value.strip())):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    else:
        raise ValueError(f"{_shown(value)} is not a duration "
                         "(seconds, or e.g. '500ms', '30s', '2m')")
    if not 0.001 <= seconds <= 86400:
        raise ValueError(f"{_shown(value)} is out of range (1ms to 24h)")
    return seconds


def _size(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{_shown(value)} is not a size")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE_RE.fullmatch(value.strip())):
        size = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    else:
        raise ValueError(f"{_shown(value)} is not a size (bytes, or e.g. '512k', '10m', '1g')")
    if not 0 <= size <= 64 * 1024**3:
        raise ValueError(f"{_shown(value)} is out of range (0 = unlimited, at most 64g)")
    return size


def _strict_str(value: object) -> object:
    """Names are strings in the file; a number or a list where a name belongs is a mistake."""
    if not isinstance(value, str):
        raise ValueError(f"{_shown(value)} is not a string")
    return value


HostName = Annotated[str, BeforeValidator(_host)]
DnsName = Annotated[str, BeforeValidator(_strict_str), AfterValidator(_dns_name)]
ServiceName = Annotated[str, BeforeValidator(_strict_str), AfterValidator(_service)]
Zone = Annotated[str, BeforeValidator(_strict_str), AfterValidator(_zone)]
PathPrefix = Annotated[str, BeforeValidator(_strict_str), AfterValidator(_path)]
Seconds = Annotated[float, BeforeValidator(_duration)]
Bytes = Annotated[int, BeforeValidator(_size)]
Balance = Literal["round_robin", "least_conn", "ip_hash"]

# A certificate or key: a file name in --certs-dir (a docker secret's name under /run/secrets).
CERT_FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
HSTS_DEFAULT = 31536000  # one year, as `hsts: true`
_HSTS_MAX = 2 * HSTS_DEFAULT


def _cert_file(value: str) -> str:
    if not CERT_FILE_RE.fullmatch(value) or ".." in value:
        raise ValueError(f"{_shown(value)} is not a valid file name in --certs-dir (letters, "
                         "digits, '_', '.', '-', starting alphanumeric; no '/' or '..')")
    return value


def _hsts(value: object) -> int:
    if value is True:
        return HSTS_DEFAULT
    if value is False:
        return 0
    if isinstance(value, int) and 0 <= value <= _HSTS_MAX:
        return value
    raise ValueError(f"{_shown(value)} is not true, false or a max-age in seconds "
                     f"(0 to {_HSTS_MAX})")


_BROADCAST = ipaddress.ip_network("255.255.255.255/32")


def _network(value: object) -> str:
    """A client address or network for `allow`, written back from the parsed value."""
    if not isinstance(value, str):
        raise ValueError(f"{_shown(value)} is not an address or network "
                         "(expected a string such as '10.0.0.0/8' or '192.0.2.7')")
    if "%" in value:
        raise ValueError(f"{_shown(value)}: an address with a scope cannot be allowed")
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{_shown(value)} is not an IP address or network in CIDR "
                             "notation (e.g. '10.0.0.0/8', '2001:db8::/32', '192.0.2.7')",
                             ) from None
        raise ValueError(f"{_shown(value)} has bits set beyond its prefix length: "
                         f"write {loose.compressed!r}") from None
    if net == _BROADCAST:  # nginx reads it as "no address" and refuses the configuration
        raise ValueError(f"{_shown(value)}: the broadcast address is never a client")
    return net.compressed


def _allow(value: object) -> object:
    if isinstance(value, list | tuple) and not value:
        raise ValueError("an empty list would refuse every client: give at least one address "
                         "or network, or leave out 'allow' to let every client in")
    if isinstance(value, str):  # one network where a list belongs: `allow: 10.0.0.0/8`
        return [value]
    return value


# Text nginx writes inside double quotes (a realm): letters, digits, space and a little
# punctuation; never a quote, backslash, '$', ';', '{', '}' or a control character.
REALM_RE = re.compile(r"[A-Za-z0-9 _.,:()/@+-]{1,64}")


def _realm(value: str) -> str:
    if not REALM_RE.fullmatch(value) or value != value.strip(" "):
        raise ValueError(f"{_shown(value)} is not a valid realm (1 to 64 letters, digits, "
                         "spaces inside, and _ . , : ( ) / @ + -)")
    return value


CertFile = Annotated[str, BeforeValidator(_strict_str), AfterValidator(_cert_file)]
Realm = Annotated[str, BeforeValidator(_strict_str), AfterValidator(_realm)]
Network = Annotated[str, BeforeValidator(_network)]
HstsMaxAge = Annotated[int, BeforeValidator(_hsts)]


class Tls(BaseModel):
    """HTTPS for a route's hosts: which certificate, and what plain HTTP does (docs/tls.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    certificate: CertFile | None = None  # without it: <host>.crt, or _wildcard.<parent>.crt
    key: CertFile | None = None  # default: the certificate's name with .crt -> .key
    acme: bool = Field(default=False, strict=True)  # from the controller's ACME client
    redirect: bool = Field(default=False, strict=True)
    hsts: HstsMaxAge = 0

    @model_validator(mode="after")
    def _key_with_certificate(self) -> Tls:
        if self.acme and (self.certificate is not None or self.key is not None):
            raise ValueError("'acme' gets the certificate from the controller's ACME client: "
                             "give either 'acme' or 'certificate', not both")
        if self.certificate is None and self.key is not None:
            raise ValueError("'key' needs 'certificate' (without both, the certificate of each "
                             "host is <host>.crt and <host>.key)")
        if self.certificate is not None and self.key is None and \
                not self.certificate.endswith(".crt"):
            raise ValueError(f"give 'key' for certificate {self.certificate!r} (it is "
                             "<name>.key by default only for a certificate named <name>.crt)")
        return self

    @property
    def key_name(self) -> str:
        if self.key is not None:
            return self.key
        assert self.certificate is not None
        return self.certificate.removesuffix(".crt") + ".key"


class BasicAuth(BaseModel):
    """HTTP basic authentication against an htpasswd file in --certs-dir (agent.routefiles)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: CertFile
    realm: Realm = "restricted"


def _basic_auth(value: object) -> object:
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
    "te", "transfer-encoding", "content-length", "proxy-connection"})
OWN_RESPONSE_HEADERS = {
    "strict-transport-security": "give it with tls.hsts",
    "server": "nginx writes it itself", "date": "nginx writes it itself",
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


class Sticky(BaseModel):
    """A client stays on one task while it runs: by a cookie (hash ... consistent)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cookie: Annotated[str, BeforeValidator(_strict_str), AfterValidator(_cookie_name)]


def _sticky(value: object) -> object:
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


def _rate_limit(value: object) -> object:
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
        _path(path.rstrip("/") if path.endswith("/") else path)
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


def _redirect(value: object) -> object:
    if isinstance(value, str):  # `redirect: https://example.com`
        return {"to": value}
    if value is None or isinstance(value, dict | Redirect):
        return value
    raise ValueError(f"{_shown(value)}: give a URL, or a mapping with 'to' (and 'code', "
                     "'keep_path')")


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
    redirect: Annotated[Redirect | None, BeforeValidator(_redirect)] = None
    port: int | None = Field(default=None, ge=1, le=65535, strict=True, validate_default=True)
    zone: Zone | None = None
    balance: Balance = "round_robin"
    connect_timeout: Seconds = 5.0
    read_timeout: Seconds = 60.0
    max_body_size: Bytes = 1024**2
    websocket: bool = Field(default=False, strict=True)
    tls: Annotated[Tls | None, BeforeValidator(_tls)] = None
    # only these client addresses reach the route (docs/security.md: which address is checked)
    allow: Annotated[tuple[Network, ...] | None, BeforeValidator(_allow)] = None
    basic_auth: Annotated[BasicAuth | None, BeforeValidator(_basic_auth)] = None
    rate_limit: Annotated[RateLimit | None, BeforeValidator(_rate_limit)] = None
    headers: Headers | None = None
    compress: bool = Field(default=False, strict=True)  # gzip text answers for clients that ask
    sticky: Annotated[Sticky | None, BeforeValidator(_sticky)] = None
    # an HTML page in --certs-dir for the 502, 503 and 504 nginx answers on this route
    error_page: CertFile | None = None
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
            wildcards = [h for h in self.hosts if h.startswith("*.")]
            if wildcards:
                raise ValueError(f"tls: acme cannot cover {', '.join(wildcards)}: a wildcard "
                                 "certificate needs a DNS-01 challenge, and the gateway answers "
                                 "HTTP-01 only; name each host, or give a certificate")
            # a CA issues for public DNS names only: an order for anything else fails, and
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


class RoutesError(ValueError):
    """A routes file that cannot be used; `errors` holds every problem, each naming its place."""

    def __init__(self, source: str, errors: Sequence[str]) -> None:
        self.source = source
        self.errors = list(errors)
        super().__init__(f"{source}: " + "; ".join(self.errors))


@dataclass(frozen=True)
class RouteTable:
    routes: tuple[Route, ...]
    tcp: tuple[TcpRoute, ...] = ()  # the file's `tcp:` routes (agent.tcp)

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


def _place(loc: Iterable[int | str]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _FIELD_NAME.fullmatch(part):
            text += f".{part}" if text else part
        else:  # a key as the file wrote it, quoted: it cannot break the line or forge a place
            text += f"[{_shown(part)}]"
    return text or "(top level)"


def _messages(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        msg = err["msg"]
        if err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
            cause = err.get("ctx", {}).get("error")
            if isinstance(cause, FieldError):
                loc = [*loc, cause.field]
        elif err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] == "invalid_key":  # pydantic puts str(key) where the key was
            loc = loc[:-1]
            msg = f"the key {_shown(err['input'])} is not a field name"
        elif "input" in err and err["type"] not in ("model_type",):
            msg = f"{_shown(err['input'])}: {msg}"
        out.append(f"{_place(loc)}: {msg}")
    return out


def _duplicates(routes: Sequence[Route]) -> list[str]:
    seen: dict[tuple[str, str], int] = {}
    errors = []
    for i, route in enumerate(routes):
        for j, host in enumerate(route.hosts):
            key = (host, route.path)
            if key in seen:
                where = "this route" if seen[key] == i else f"routes[{seen[key]}]"
                errors.append(f"routes[{i}].hosts[{j}]: {host!r} with path {route.path!r} "
                              f"is already routed by {where}")
            else:
                seen[key] = i
    return errors


def _tls_conflicts(routes: Sequence[Route]) -> list[str]:
    """Routes that share a host name share its HTTPS server: they must say the same `tls`."""
    seen: dict[str, int] = {}
    errors = []
    for i, route in enumerate(routes):
        for host in route.hosts:
            first = seen.setdefault(host, i)
            if first != i and routes[first].tls != route.tls:
                errors.append(f"routes[{i}].tls: {host!r} is also routed by routes[{first}] "
                              "with a different 'tls'; routes that share a host share its "
                              "certificate and redirect: give them the same 'tls'")
                break
    return errors


def _without_echoes(errors: list[str]) -> list[str]:
    """A route whose `redirect` is refused is not told again that, then, it lacks a port."""
    refused = {e.partition(".redirect")[0] for e in errors if ".redirect" in e.split(":")[0]}
    return [e for e in errors
            if not (e.endswith(".port: required field is missing") and
                    e.removesuffix(".port: required field is missing") in refused)]


def parse_routes(data: Any, source: str = "routes") -> RouteTable:
    if not isinstance(data, Mapping):
        raise RoutesError(source, ["(top level): expected a mapping with a 'routes' list"])
    from agent.tcp import parse_tcp  # (agent.tcp builds on this module's field types)

    data = dict(data)
    tcp_data = data.pop("tcp", None)
    if tcp_data is not None:  # a file of tcp routes only needs no `routes: []`
        data.setdefault("routes", [])
    tcp, errors = parse_tcp(tcp_data)
    try:
        parsed = _RoutesFile.model_validate(data)
    except ValidationError as exc:
        raise RoutesError(source, _without_echoes(_messages(exc)) + errors) from None
    errors = _duplicates(parsed.routes) + _tls_conflicts(parsed.routes) + errors
    if errors:
        raise RoutesError(source, errors)
    return RouteTable(parsed.routes, tcp)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML keeps the last of two equal keys silently; a routes file must not."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):  # `? {a: 1}` makes a mapping a key
                raise yaml.constructor.ConstructorError(
                    None, None, f"a key cannot be a {type(key).__name__}", key_node.start_mark)
            if key in keys:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark)
            keys[key] = True
        return super().construct_mapping(node, deep=deep)


def parse_routes_text(text: str, source: str = "routes") -> RouteTable:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if isinstance(exc, yaml.reader.ReaderError):  # a control character: a position, no mark
            line = text.count("\n", 0, exc.position) + 1
            column = exc.position - text.rfind("\n", 0, exc.position)
            where = f"line {line} column {column}: "
            problem = f"unacceptable character #x{exc.character:04x}: {exc.reason}"
        problem = " ".join(str(problem).split())  # one line, whatever the parser said
        raise RoutesError(source, [f"{where}invalid YAML: {problem}"]) from None
    if data is None:
        raise RoutesError(source, ["(top level): the file is empty; expected 'routes:'"])
    return parse_routes(data, source)


def load_routes(path: Path) -> RouteTable:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RoutesError(str(path), [f"cannot read: {exc}"]) from None
    return parse_routes_text(text, str(path))
