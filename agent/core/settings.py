"""Settings: defaults, then GATEWAY_* environment variables, then flags, into one frozen object.

Each program (the gateway: gateway/settings.py; the controller: controller/settings.py) has its
own settings object and its own table of options; this module holds what they share: the table's
rows, how they become flags and environment variables, and the parsers of the values. Every flag
has an environment variable: `--poll-interval` is `GATEWAY_POLL_INTERVAL`. A value that does not
parse is reported with the flag or the variable it came from, every bad value at once.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

ENV_PREFIX = "GATEWAY_"
DEFAULT_NAMESERVER = "127.0.0.11:53"


class SettingsError(ValueError):
    """A setting that does not parse; the message names the flag and its variable."""


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(value: str, default_host: str | None = None, default_port: int | None = None,
                    ) -> HostPort:
    """`HOST:PORT`, `[V6]:PORT`, `HOST` (with default_port) or `PORT` (with default_host)."""
    value = value.strip()
    host: str | None
    port_text: str | None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError(f"{value!r}: unclosed '['")
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{value!r}: expected ':PORT' after ']'")
        port_text = rest[1:] or None
    elif value.isdigit():
        host, port_text = default_host, value
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    elif value.count(":") > 1:  # a bare IPv6 address
        host, port_text = value, None
    else:
        host, port_text = value, None
    if not host:
        raise ValueError(f"{value!r}: no host")
    if port_text is None:
        if default_port is None:
            raise ValueError(f"{value!r}: no port")
        port = default_port
    else:
        if not port_text.isdigit():
            raise ValueError(f"{value!r}: port {port_text!r} is not a number")
        port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{value!r}: port {port} is out of range 1-65535")
    return HostPort(host, port)


def parse_ip_host_port(value: str, default_host: str | None = None,
                       default_port: int | None = None) -> HostPort:
    """Like parse_host_port, but the host must be an IP address (it goes into nginx `listen`)."""
    hp = parse_host_port(value, default_host, default_port)
    try:
        ipaddress.ip_address(hp.host)
    except ValueError:
        raise ValueError(f"{value!r}: {hp.host!r} is not an IP address") from None
    return hp


def parse_networks(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an address or network (CIDR)") from None
    return tuple(nets)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Docker's default address pools: overlays and swarm networks from 10.0.0.0/8
# (--default-addr-pool), bridges and docker_gwbridge from 172.16.0.0/12 and 192.168.0.0/16;
# and IPv6 unique local addresses, for overlays with IPv6.
DEFAULT_TASK_NETWORKS: tuple[Network, ...] = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                      "fc00::/7"))
LINK_LOCAL: tuple[Network, ...] = (ipaddress.ip_network("169.254.0.0/16"),
                                   ipaddress.ip_network("fe80::/10"))


def task_networks(value: str) -> tuple[Network, ...]:
    """The swarm's own networks: the only addresses a `tasks.` name may answer. Link-local is
    never one (cloud metadata answers there)."""
    nets = parse_networks(value)
    if not nets:
        raise ValueError("give at least one network (CIDR)")
    for net in nets:
        if any(net.version == ll.version and net.overlaps(ll) for ll in LINK_LOCAL):
            raise ValueError(f"{str(net)!r} overlaps link-local addresses (169.254.0.0/16, "
                             "fe80::/10: cloud metadata), which tasks never have")
    return nets


def worker_processes(value: str) -> str:
    if value != "auto" and not (value.isdigit() and 1 <= int(value) <= 1024):
        raise ValueError(f"{value!r} is not 'auto' or a number of processes")
    return value


def upstream_mode(value: str) -> str:
    if value not in ("resolve", "static"):
        raise ValueError(f"{value!r} is not resolve or static")
    return value


def zone_name(value: str) -> str:
    from agent.core.fields import ZONE_RE  # the routes model decides what a zone name may be

    if not ZONE_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid zone name")
    return value


def http_url(value: str) -> str:
    """The controller's routes URL: http(s)://HOST[:PORT]/PATH, nothing that needs quoting."""
    text = value.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018  (raises ValueError for a port out of range)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment or \
            not text.isascii() or any(c.isspace() for c in text):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return text


def redacted_url(url: str) -> str:
    """`url` for a log line: a user and password in it (http://user:token@host/) replaced."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def email(value: str) -> str:
    text = value.strip()
    if not re.fullmatch(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+", text):
        raise ValueError(f"{value!r} is not an email address")
    return text


def read_token(path: Path, flag: str = "--controller-token-file") -> str:
    """A token: one line of at least 16 printable characters (a docker secret)."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{flag}: cannot read {path}: {exc}") from None
    if len(token) < 16 or not token.isascii() or not token.isprintable() or " " in token:
        raise SettingsError(f"{flag}: {path}: the token must be one line of "
                            "at least 16 printable characters without spaces "
                            "(e.g. `openssl rand -hex 32`)")
    return token


def bearer_matches(header: str, token: str) -> bool:
    """Whether an `Authorization` header (as aiohttp gives it: bytes that are not UTF-8 kept
    as surrogates) is `Bearer TOKEN`, compared in constant time. Any bytes are only a wrong
    token: 401, never an error."""
    given = header.encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, f"Bearer {token}".encode())


def zone_token_files(value: str) -> tuple[tuple[str, Path], ...]:
    """`dmz=/run/secrets/token-dmz,edge=/run/secrets/token-edge`."""
    out = []
    for item in (part.strip() for part in value.split(",") if part.strip()):
        zone, eq, path = item.partition("=")
        if not eq or not path:
            raise ValueError(f"{item!r}: expected ZONE=FILE")
        out.append((zone_name(zone), Path(path)))
    return tuple(out)


def label_prefix(value: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}(?:\.[a-z][a-z0-9_-]{0,62})*", value):
        raise ValueError(f"{value!r} is not a label prefix (lowercase letters, digits, "
                         "'-', '_', dots between parts)")
    return value


def non_negative_float(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise ValueError(f"{value!r} must be 0 or more")
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError(f"{value!r} must be greater than 0")
    return number


def on_off(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("on", "true", "yes", "1"):
        return True
    if lowered in ("off", "false", "no", "0"):
        return False
    raise ValueError(f"{value!r} is not on or off")


def port_number(value: str) -> int:
    if not value.strip().isdigit() or not 1 <= int(value) <= 65535:
        raise ValueError(f"{value!r} is not a port number (1-65535)")
    return int(value)


Parser = Callable[[str], Any]


@dataclass(frozen=True)
class Option:
    """One setting: its flag (and so its environment variable), the field it fills, the parser
    of its text, and its help line."""

    flag: str
    dest: str
    parse: Parser
    help: str


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def add_arguments(parser: argparse.ArgumentParser, options: Sequence[Option],
                  only: Sequence[str] | None = None) -> None:
    """Add the flags of `options` (all, or those whose destination is in `only`)."""
    for opt in options:
        if only is None or opt.dest in only:
            parser.add_argument(opt.flag, dest=opt.dest, default=None, metavar=opt.dest.upper(),
                                help=f"{opt.help} [{env_name(opt.flag)}]")


T = TypeVar("T")


def from_sources(cls: Callable[..., T], options: Sequence[Option], args: argparse.Namespace,
                 environ: Mapping[str, str] | None = None) -> T:
    """Defaults < environment < flags. Raises SettingsError listing every bad value."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    errors: list[str] = []
    for opt in options:
        raw = getattr(args, opt.dest, None)
        source = opt.flag
        if raw is None and environ.get(env_name(opt.flag), "") != "":
            raw, source = environ[env_name(opt.flag)], env_name(opt.flag)
        if raw is None:
            continue
        try:
            values[opt.dest] = opt.parse(raw) if isinstance(raw, str) else raw
        except ValueError as exc:
            errors.append(f"{source}: {exc}")
    if errors:
        raise SettingsError("; ".join(errors))
    return cls(**values)


def log_format(value: str) -> str:
    if value not in ("text", "json"):
        raise ValueError(f"{value!r} is not text or json")
    return value


def log_level(value: str) -> str:
    if value not in ("debug", "info", "warning", "error"):
        raise ValueError(f"{value!r} is not debug/info/warning/error")
    return value


# shared by both programs: the routes file, the token between them, the logs
ROUTES = Option("--routes", "routes", Path, "routes YAML file (a docker config in a swarm)")
CONTROLLER_TOKEN_FILE = Option(
    "--controller-token-file", "controller_token_file", Path,
    "a file (a docker secret) holding the token the gateways show the controller; needed for "
    "ACME, whose private keys the controller sends to the gateways only")
LOG_FORMAT = Option("--log-format", "log_format", log_format, "text or json")
LOG_LEVEL = Option("--log-level", "log_level", log_level, "debug, info, warning or error")
