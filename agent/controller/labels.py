"""Routes from swarm service labels: `gateway.hosts`, `gateway.port`, ... (docs/labels.md).

A labelled service routes to its own tasks: the route's `service` is the service's name, never a
label. Every other field comes from a label named like the field of the routes file, and the route
is validated by the very same model (core/routes.py), so labels obey exactly the rules of the file.
A service whose labels do not make a valid route is skipped with one error per problem, each
naming the service and the label; it never affects another service's route.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.core.errors import Loc, place
from agent.core.errors import shown as _shown
from agent.core.routes import Route, RouteError, parse_route

DEFAULT_PREFIX = "gateway"
# What may follow the prefix: a field (`port`) or a field of a nested option (`tls.redirect`).
_OPTION_RE = re.compile(r"[a-z][a-z0-9_]{0,63}(?:\.[a-z][a-z0-9_]{0,63})?")
# Label values are strings; these options take a boolean or a number in the routes file.
_BOOLEANS = frozenset({"websocket", "tls", "tls.acme", "tls.redirect", "tls.hsts",
                       "strip_prefix", "redirect.keep_path", "compress", "maintenance",
                       "retry.non_idempotent", "cors.credentials",
                       "upstream_tls.verify"})
_INTEGERS = frozenset({"port", "tls.hsts", "rate_limit.burst", "redirect.code", "auth.port",
                       "retry", "retry.tries", "max_conns",
                       "canary.weight", "canary.port", "mirror.share", "mirror.port"})
# These take a list in the routes file: a label gives it comma-separated.
_LISTS = frozenset({"hosts", "allow"})
# and these, fields of a group (`gateway.auth.response_headers=X-Auth-Request-User,...`)
_GROUP_LISTS = frozenset({"auth.response_headers", "retry.on", "cors", "cors.origins",
                          "cors.methods", "cors.headers"})
# The target is the service itself: a label cannot send traffic anywhere else.
_NOT_LABELS = {
    "service": "a labelled service routes to its own tasks; the service is not a label",
    "host": "a labelled service routes to its own tasks; 'host' is for the routes file only",
}
# Options with fields of their own besides tls: `gateway.basic_auth=FILE` gives the field named
# here, `gateway.basic_auth.realm=...` another one.
_GROUPS = {"basic_auth": "file", "rate_limit": "rate", "redirect": "to", "sticky": "cookie",
           "canary": "service", "mirror": "service",
           "auth": "url", "retry": "tries", "cors": "origins",
           "upstream_tls": "ca"}
# `gateway.headers.request.x-api-version=2`, `gateway.headers.response.x-powered-by=` (removes)
_HEADER_RE = re.compile(r"headers\.(request|response)\.([A-Za-z0-9][A-Za-z0-9-]{0,63})")
# `gateway.match.headers.x-env=beta`, `gateway.match.headers.accept=~^application/json$`
_MATCH_HEADER_RE = re.compile(r"match\.headers\.([A-Za-z0-9][A-Za-z0-9-]{0,63})")


@dataclass(frozen=True)
class Service:
    """What the controller needs of a swarm service (GET /services)."""

    name: str
    id: str = ""
    created: str = ""  # Docker's CreatedAt, RFC 3339 in UTC
    labels: Mapping[str, str] = field(default_factory=dict)
    container_labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_api(cls, doc: Mapping[str, Any]) -> Service:
        spec = doc.get("Spec") or {}
        container = ((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {})
        return cls(name=str(spec.get("Name", "")), id=str(doc.get("ID", "")),
                   created=str(doc.get("CreatedAt", "")),
                   labels=dict(spec.get("Labels") or {}),
                   container_labels=dict(container.get("Labels") or {}))

    @property
    def age_key(self) -> tuple[str, str, str, str]:
        """Oldest first: the first service to claim a host keeps it. Go writes fractions of a
        second without trailing zeros, so they are padded before comparing."""
        seconds, _, fraction = self.created.rstrip("Z").partition(".")
        return seconds, fraction.ljust(9, "0"), self.name, self.id


class LabelError(ValueError):
    """A service whose labels do not make a route; `errors` name the service and the label."""

    def __init__(self, service: str, errors: list[str]) -> None:
        self.service = service
        self.errors = errors
        super().__init__("; ".join(errors))


def _value(option: str, text: str) -> object:
    if option in _BOOLEANS and text in ("true", "false"):
        return text == "true"
    if option in _INTEGERS and text.isascii() and text.isdigit():
        return int(text)
    return text


def _list(text: str) -> list[str]:
    """`a.example.com,b.example.com`: a comma-separated list; spaces around a comma are allowed.
    Each item is then checked as in the routes file, so nothing else is "cleaned up"."""
    return [part.strip(" ") for part in text.split(",")]


def _relabel(loc: Loc, message: str, prefix: str) -> str:
    """A problem at the model's place (`hosts[1]`) in the words of labels: `label
    gateway.hosts[1]: ...`."""
    if loc[:1] == ("service",):
        return f"the service name: {message}"
    if not loc:
        return f"labels: {message}"
    group = loc[0]
    if isinstance(group, str) and group in _GROUPS and loc[1:2] == (_GROUPS[group],):
        loc = (group, *loc[2:])  # basic_auth.file: the label basic_auth
    if message == "unknown field":
        message = "unknown label (docs/labels.md lists them)"
    elif message == "required field is missing":
        message = "required label is missing"
    return f"label {prefix}.{place(loc)}: {message}"


def route_from_labels(service: str, labels: Mapping[str, str],
                      prefix: str = DEFAULT_PREFIX) -> Route | None:
    """The route a service's labels describe; None when it has no `<prefix>.` label at all.

    Raises LabelError with every problem, each as `service NAME: label PREFIX.OPTION: ...`.
    """
    start = prefix + "."
    options = {k[len(start):]: v for k, v in labels.items() if k.startswith(start)}
    if not options:
        return None
    data: dict[str, Any] = {}
    tls: dict[str, Any] = {}
    errors: list[str] = []
    for option, text in sorted(options.items()):
        if header := _HEADER_RE.fullmatch(option):
            direction, name = header.groups()
            data.setdefault("headers", {}).setdefault(direction, {})[name] = text
        elif header := _MATCH_HEADER_RE.fullmatch(option):
            data.setdefault("match", {}).setdefault("headers", {})[header.group(1)] = text
        elif option == "match.methods":  # `gateway.match.methods=GET,HEAD`
            data.setdefault("match", {})["methods"] = _list(text)
        elif not _OPTION_RE.fullmatch(option):
            errors.append(f"label {_shown(start + option)}: not a gateway option "
                          "(docs/labels.md lists them)")
        elif option in _NOT_LABELS:
            errors.append(f"label {start}{option}: {_NOT_LABELS[option]}")
        elif option in _LISTS:
            data[option] = _list(text)
        elif option.startswith("tls."):
            tls[option.removeprefix("tls.")] = _value(option, text)
        elif option.partition(".")[0] in _GROUPS:
            group, _, key = option.partition(".")
            given = data.setdefault(group, {})
            given[key or _GROUPS[group]] = _list(text) if option in _GROUP_LISTS \
                else _value(option, text)
        elif "." in option:  # `gateway.headers.request`, `gateway.port.x`: no such option
            errors.append(f"label {start}{option}: not a gateway option "
                          "(docs/labels.md lists them)")
        else:
            data[option] = _value(option, text)
    if tls:
        if data.get("tls") is False:
            errors.append(f"label {start}tls: it is false, but {start}tls.* labels are given")
        elif "tls" in data and data["tls"] not in (True, "acme"):
            errors.append(f"label {start}tls: {_shown(str(data['tls']))}: give true or acme, "
                          f"or only {start}tls.* labels")
            del data["tls"]  # said once, here: the model would say it again
        elif data.get("tls") == "acme" and tls.get("acme") is False:
            errors.append(f"label {start}tls: it is acme, but {start}tls.acme is false")
            del data["tls"]
        else:
            data["tls"] = {**tls, "acme": True} if data.get("tls") == "acme" else tls
    if "redirect" not in data:  # a route that only redirects sends nothing to the service
        data["service"] = service
    try:
        route = parse_route(data)
    except RouteError as exc:
        errors += [_relabel(loc, msg, prefix) for loc, msg in exc.problems]
    if errors:
        raise LabelError(service, [f"service {service}: {e}" for e in errors])
    return route


@dataclass(frozen=True)
class LabelRoutes:
    """The routes of every labelled service, oldest service first, and the services skipped."""

    routes: tuple[tuple[str, Route], ...]  # (source, route): source is `service NAME`
    errors: tuple[tuple[str | None, str], ...]  # (the service's zone label, error)
    services: int  # services with at least one label of the prefix


def routes_from_services(services: Iterable[Service], prefix: str = DEFAULT_PREFIX,
                         ) -> LabelRoutes:
    routes: list[tuple[str, Route]] = []
    errors: list[tuple[str | None, str]] = []
    labelled = 0
    start = prefix + "."
    for service in sorted(services, key=lambda s: s.age_key):
        zone = service.labels.get(start + "zone")
        try:
            route = route_from_labels(service.name, service.labels, prefix)
        except LabelError as exc:
            labelled += 1
            errors += [(zone, e) for e in exc.errors]
            continue
        if route is not None:
            labelled += 1
            routes.append((f"service {service.name}", route))
        elif any(k.startswith(start) for k in service.container_labels):
            labelled += 1  # `labels:` instead of `deploy.labels:` in a stack file
            errors.append((service.container_labels.get(start + "zone"),
                           f"service {service.name}: {prefix}.* labels are on its containers; "
                           "put them on the service (deploy.labels in a stack file, "
                           "--label on docker service create)"))
    return LabelRoutes(tuple(routes), tuple(errors), labelled)
