"""Where the controller writes DNS-01 records: RFC 2136 dynamic updates signed with a TSIG key
(BIND, Knot, PowerDNS, Windows DNS all take them), or a DNS provider's API through dns-lexicon
(more than a hundred providers). Credentials come from files (swarm secrets); no message of
this module carries a secret: errors name the server, the zone, the record and the file.

Blocking code, called from the ACME worker thread (controller/dns01.py drives it).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import dns.exception
import dns.name
import dns.query
import dns.rcode
import dns.resolver
import dns.tsig
import dns.update

from agent.core.settings import HostPort

TTL = 60  # seconds: the records live for one order
TIMEOUT = 10.0  # seconds for one update or query
_KEY_RE = re.compile(r'key\s+"?([A-Za-z0-9._-]+)"?\s*\{(.*?)\}\s*;', re.S)
_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1",
               "hmac-md5")
_OPTION_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")


class DnsError(Exception):
    """A DNS-01 step failed; the message names the place and never holds a secret."""


class Provider(Protocol):
    """Writes and removes TXT records in a zone, and names the servers that answer for it."""

    description: str  # for messages: "RFC 2136 at 10.0.0.53:53", "lexicon cloudflare"

    def zone_for(self, fqdn: str) -> str: ...
    def add_txt(self, zone: str, fqdn: str, value: str) -> None: ...
    def remove_txt(self, zone: str, fqdn: str, value: str) -> None: ...
    def authoritative(self, zone: str) -> list[tuple[str, int]]: ...


# -- files (swarm secrets) -----------------------------------------------------------------


@dataclass(frozen=True)
class TsigKey:
    name: str
    algorithm: str
    secret: str = field(repr=False)

    def keyring(self) -> dict[dns.name.Name, dns.tsig.Key]:
        key = dns.tsig.Key(self.name, self.secret, self.algorithm)
        return {key.name: key}


def read_tsig_key(path: Path) -> TsigKey:
    """One key in BIND's format, as `tsig-keygen NAME` writes it:
    `key "NAME" { algorithm hmac-sha256; secret "BASE64"; };`. ValueError naming the file
    (never its content)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the TSIG key: "
                         f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    keys = _KEY_RE.findall(text)
    if len(keys) != 1:
        raise ValueError(f"{path}: expected one TSIG key in BIND's format, as tsig-keygen "
                         f'writes it (key "NAME" {{ algorithm hmac-sha256; secret "..."; }};), '
                         f"found {len(keys)}")
    name, body = keys[0]
    algorithm = re.search(r"\balgorithm\s+\"?([A-Za-z0-9-]+)\"?\s*;", body)
    secret = re.search(r'\bsecret\s+"([A-Za-z0-9+/=\s]+)"\s*;', body)
    if algorithm is None or algorithm.group(1).lower() not in _ALGORITHMS:
        raise ValueError(f"{path}: key {name!r}: the algorithm must be one of "
                         f"{', '.join(_ALGORITHMS)}")
    if secret is None:
        raise ValueError(f"{path}: key {name!r}: no secret \"BASE64\"; in it")
    key = TsigKey(name, algorithm.group(1).lower(), "".join(secret.group(1).split()))
    try:
        key.keyring()
    except Exception:  # a secret that is not base64: say where, not what
        raise ValueError(f"{path}: key {name!r}: the secret is not base64") from None
    return key


def read_credentials(path: Path) -> dict[str, str]:
    """A provider's options, one `name=value` a line (# comments), e.g. `auth_token=...`:
    lexicon's option names for the provider. ValueError naming the file and line, never a
    value."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the credentials: "
                         f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    options: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, eq, value = line.partition("=")
        name = name.strip().lower().replace("-", "_")
        if not eq or not _OPTION_RE.fullmatch(name) or not value.strip():
            raise ValueError(f"{path} line {number}: expected name=value (a lexicon option of "
                             "the provider, e.g. auth_token=...)")
        options[name] = value.strip()
    return options


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret (of 4 characters or more) replaced by `***`."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


# -- finding the zone ------------------------------------------------------------------------


def zone_in(fqdn: str, zones: Sequence[str]) -> str | None:
    """The longest of `zones` that holds `fqdn`."""
    name = dns.name.from_text(fqdn)
    fits = [z for z in zones if name.is_subdomain(dns.name.from_text(z))]
    return max(fits, key=len) if fits else None


def _addresses(host: str, port: int) -> list[tuple[str, int]]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise DnsError(f"cannot resolve the DNS server {host}: {exc.strerror or exc}") from None
    return sorted({(str(info[4][0]), port) for info in infos})


def _resolver(servers: Sequence[tuple[str, int]]) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [a for a, _ in servers]
    resolver.port = servers[0][1]
    resolver.lifetime = TIMEOUT
    return resolver


def find_zone(fqdn: str, zones: Sequence[str], servers: Sequence[tuple[str, int]] | None,
              ) -> str:
    """The zone to write `fqdn` in: the longest of `zones` (--acme-dns-zone) that holds it; with
    none given, the zone the DNS answers for it (SOA), asking `servers` or the system's
    resolver."""
    if zones:
        zone = zone_in(fqdn, zones)
        if zone is None:
            raise DnsError(f"{fqdn} is in none of the zones of --acme-dns-zone "
                           f"({', '.join(zones)})")
        return zone
    try:
        resolver = _resolver(servers) if servers else dns.resolver.Resolver()
        return str(dns.resolver.zone_for_name(fqdn, resolver=resolver)
                   .to_text(omit_final_dot=True))
    except (dns.exception.DNSException, OSError) as exc:
        where = ", ".join(f"{a}:{p}" for a, p in servers) if servers else "the system's resolver"
        raise DnsError(f"no zone found for {fqdn} (SOA asked of {where}: "
                       f"{type(exc).__name__}); give --acme-dns-zone") from None


# -- RFC 2136 ------------------------------------------------------------------------------


class Rfc2136:
    """Dynamic updates (over TCP) to the primary server, signed with a TSIG key."""

    def __init__(self, server: HostPort, key: TsigKey | None, zones: Sequence[str] = ()) -> None:
        self.server, self.key, self.zones = server, key, tuple(zones)
        self.description = f"RFC 2136 at {server}"

    def _servers(self) -> list[tuple[str, int]]:
        return _addresses(self.server.host, self.server.port)

    def zone_for(self, fqdn: str) -> str:
        return find_zone(fqdn, self.zones, self._servers())

    def authoritative(self, zone: str) -> list[tuple[str, int]]:
        return self._servers()[:1]

    def add_txt(self, zone: str, fqdn: str, value: str) -> None:
        self._update(zone, fqdn, value, add=True)

    def remove_txt(self, zone: str, fqdn: str, value: str) -> None:
        self._update(zone, fqdn, value, add=False)

    def _update(self, zone: str, fqdn: str, value: str, add: bool) -> None:
        what = f"{'adding' if add else 'removing'} TXT {fqdn} in zone {zone} at {self.server}"
        kwargs: dict[str, Any] = {}
        if self.key is not None:
            kwargs = {"keyring": self.key.keyring(), "keyname": self.key.name,
                      "keyalgorithm": self.key.algorithm}
        update = dns.update.UpdateMessage(zone, **kwargs)
        if add:
            update.add(dns.name.from_text(fqdn), TTL, "TXT", f'"{value}"')
        else:
            update.delete(dns.name.from_text(fqdn), "TXT", f'"{value}"')
        address, port = self._servers()[0]
        try:
            reply = dns.query.tcp(update, address, timeout=TIMEOUT, port=port)
        except dns.tsig.PeerError as exc:  # the server refused the key (BADSIG, BADKEY, ...)
            raise DnsError(f"{what}: the server refused the TSIG key {self._key_name}: "
                           f"{type(exc).__name__}") from None
        except (dns.exception.DNSException, OSError) as exc:
            raise DnsError(f"{what}: {type(exc).__name__}: {exc}") from None
        if reply.rcode() != dns.rcode.NOERROR:
            raise DnsError(f"{what}: the server answered {dns.rcode.to_text(reply.rcode())}"
                           f"{_hint(reply.rcode(), self._key_name)}")

    @property
    def _key_name(self) -> str:
        return repr(self.key.name) if self.key else "(none given)"


def _hint(rcode: int, key: str) -> str:
    if rcode == dns.rcode.REFUSED:
        return f" (does the zone allow updates with the key {key}?)"
    if rcode == dns.rcode.NOTAUTH:
        return f" (not a primary for the zone, or the key {key} is not the zone's)"
    if rcode == dns.rcode.NOTZONE:
        return " (the record is not in the zone: see --acme-dns-zone)"
    return ""


# -- dns-lexicon ---------------------------------------------------------------------------


class Lexicon:
    """A provider of dns-lexicon (`lexicon:cloudflare`, `lexicon:powerdns`, ...), with its
    options from a credentials file. Lexicon is an optional dependency (the `lexicon` extra,
    which the image installs)."""

    def __init__(self, provider: str, options: dict[str, str], zones: Sequence[str] = (),
                 check_server: HostPort | None = None) -> None:
        self.provider, self.options, self.zones = provider, dict(options), tuple(zones)
        self.check_server = check_server
        self.description = f"lexicon {provider}"
        # lexicon guesses the registered domain with tldextract, which fetches the public
        # suffix list from the Internet unless told not to: its bundled copy is enough, since
        # the zone is given to it (`delegated`)
        os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

    def check(self) -> None:
        """At start: lexicon is installed and has the provider (ValueError otherwise)."""
        try:
            self._client("example.com")
        except ImportError:
            raise ValueError("--acme-dns-provider lexicon:...: dns-lexicon is not installed "
                             "(pip install 'swarm-gateway[lexicon]'; the image has it)") from None
        except Exception as exc:
            raise ValueError(f"--acme-dns-provider lexicon:{self.provider}: "
                             f"{self._clean(exc)}") from None

    def _client(self, zone: str) -> Any:
        from lexicon.client import Client
        from lexicon.config import ConfigResolver

        config = ConfigResolver().with_dict({  # type: ignore[no-untyped-call]
            "provider_name": self.provider, "domain": zone, "delegated": zone, "ttl": TTL,
            self.provider: dict(self.options)})
        return Client(config)

    def _servers(self) -> list[tuple[str, int]] | None:
        if self.check_server is None:
            return None
        return _addresses(self.check_server.host, self.check_server.port)

    def zone_for(self, fqdn: str) -> str:
        return find_zone(fqdn, self.zones, self._servers())

    def authoritative(self, zone: str) -> list[tuple[str, int]]:
        """--acme-dns-server, or each name server of the zone (NS, through the system's
        resolver)."""
        servers = self._servers()
        if servers:
            return servers[:1]
        try:
            resolver = dns.resolver.Resolver()
            names = [str(r.target) for r in resolver.resolve(zone, "NS")]
            return sorted({a for n in names for a in _addresses(n, 53)})
        except (dns.exception.DNSException, OSError) as exc:
            raise DnsError(f"the name servers of {zone} (NS) are not known: "
                           f"{type(exc).__name__}; give --acme-dns-server") from None

    def add_txt(self, zone: str, fqdn: str, value: str) -> None:
        self._run(zone, f"adding TXT {fqdn} in zone {zone}",
                  lambda ops: ops.create_record("TXT", fqdn, value))

    def remove_txt(self, zone: str, fqdn: str, value: str) -> None:
        self._run(zone, f"removing TXT {fqdn} in zone {zone}",
                  lambda ops: ops.delete_record(None, "TXT", fqdn, value))

    def _run(self, zone: str, what: str, step: Any) -> None:
        try:
            with self._client(zone) as ops:
                if step(ops) is False:
                    raise DnsError("the provider said it did not")
        except Exception as exc:  # the provider's API: its text, without the credentials
            raise DnsError(f"{what} through {self.description}: {self._clean(exc)}") from None

    def _clean(self, exc: BaseException) -> str:
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        return redact(text, self.options.values())[:200]
