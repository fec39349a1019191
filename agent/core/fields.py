"""The values a route is made of, each held to a pattern nginx reads as one plain token.

Every value a route carries ends up in nginx configuration, so each field is held to a pattern
that cannot end a directive, open or close a block, quote, comment or expand a variable. A value
that does not fit is refused with a message saying what would fit; nothing is "cleaned up".
The route itself, and the files and documents routes come in, are in core/routes.py.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
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


def check_path(value: str) -> str:
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


def strict_str(value: object) -> object:
    """Names are strings in the file; a number or a list where a name belongs is a mistake."""
    if not isinstance(value, str):
        raise ValueError(f"{_shown(value)} is not a string")
    return value


HostName = Annotated[str, BeforeValidator(_host)]
DnsName = Annotated[str, BeforeValidator(strict_str), AfterValidator(_dns_name)]
ServiceName = Annotated[str, BeforeValidator(strict_str), AfterValidator(_service)]
Zone = Annotated[str, BeforeValidator(strict_str), AfterValidator(_zone)]
PathPrefix = Annotated[str, BeforeValidator(strict_str), AfterValidator(check_path)]
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


# A file a route names (gateway/routefiles.py): a plain file name in --route-files-dir, never
# in --certs-dir, whose ending says what it is for. A page is served to anyone; a password file
# never is: a page cannot name a password file, nor a password file a page.
ROUTE_FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
ROUTE_FILE_ENDINGS = {"error_page": ".html", "basic_auth": ".htpasswd",
                      "ca": ".pem"}  # tls.client_ca, upstream_tls.ca (core/edgetls.py)


def _route_file(field: str) -> Callable[[str], str]:
    ending = ROUTE_FILE_ENDINGS[field]

    def check(value: str) -> str:
        if not ROUTE_FILE_RE.fullmatch(value) or ".." in value or not value.endswith(ending):
            raise ValueError(f"{_shown(value)} is not a file name {field} takes (a file of "
                             "--route-files-dir: letters, digits, '_', '.', '-', starting "
                             f"alphanumeric, ending in {ending}; no '/' or '..')")
        return value
    return check


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


def as_allow(value: object) -> object:
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


CertFile = Annotated[str, BeforeValidator(strict_str), AfterValidator(_cert_file)]
PageFile = Annotated[str, BeforeValidator(strict_str), AfterValidator(_route_file("error_page"))]
HtpasswdFile = Annotated[str, BeforeValidator(strict_str),
                         AfterValidator(_route_file("basic_auth"))]
Realm = Annotated[str, BeforeValidator(strict_str), AfterValidator(_realm)]
CaFile = Annotated[str, BeforeValidator(strict_str), AfterValidator(_route_file("ca"))]
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
    # client certificates, verified against this CA file of --route-files-dir (core/edgetls.py)
    client_ca: CaFile | None = None
    client_verify: Literal["required", "optional"] | None = None  # default: required

    @model_validator(mode="after")
    def _key_with_certificate(self) -> Tls:
        if self.client_verify is not None and self.client_ca is None:
            raise ValueError("'client_verify' needs 'client_ca', the CA file that client "
                             "certificates are verified against")
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
    def client_mode(self) -> Literal["required", "optional"] | None:
        """What a client's certificate must be: None when the hosts ask for none."""
        return None if self.client_ca is None else self.client_verify or "required"

    @property
    def key_name(self) -> str:
        if self.key is not None:
            return self.key
        assert self.certificate is not None
        return self.certificate.removesuffix(".crt") + ".key"
