"""`match`: a route for some requests of its host and path only, chosen by their headers and
method (Traefik's Header, HeaderRegexp and Method matchers). Several routes may share a host and
path when they differ by `match`; the most specific one that matches takes the request (a route
with more conditions before one with fewer, one without `match` last), and a request that none
takes is answered 404 (core/claims.py applies the rule of who may share; plan/match.py writes
the nginx maps that choose).

A header's value is an exact string, or an anchored regular expression written `~^...$`. Both
reach nginx as a map's regular expression between double quotes, so each is held to what nginx's
parser keeps as written there (no '"', and a '\\' only before a character nginx does not
unescape) and what PCRE reads without side effects (no named groups: they set variables).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Annotated, Protocol

from pydantic import BaseModel, BeforeValidator, ConfigDict, field_serializer, model_validator

from agent.core.errors import shown as _shown
from agent.core.options import HEADER_NAME_RE

# what `methods` may list (a fixed set: a method outside it is surely a typo)
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE")
MAX_HEADERS = 8
# an exact value: printable ASCII without '"' and '\\', no space at either end ('' : absent)
_EXACT_RE = re.compile(r"[ !#-\[\]-~]{0,256}")
# a regular expression: the same characters and '\\' before a character PCRE reads as an escape
# (never one of nginx's own: '\\"', '\\\\', '\\n', '\\r', '\\t'); no `(?` but `(?:` (and
# `(?i)` first: the case ignored)
_REGEX_RE = re.compile(r"(?:\(\?i\))?\^(?:[ !#-\[\]-~]|\\[.^$*+?()\[\]{}|/dDwWsSbB-])*\$")
_GROUP_RE = re.compile(r"\(\?(?!:|i\))")
# what PCRE reads as special in an exact value (escaped with '\\' for the map)
_SPECIAL = frozenset(".^$*+?()[]{}|/")


def _value(name: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{name!r}: {_shown(value)} is not a header value (a string, "
                         "'~^regex$' for a regular expression)")
    text = str(value)
    if text.startswith("~"):
        pattern = text[1:]
        if len(pattern) > 256 or not _REGEX_RE.fullmatch(pattern) or \
                pattern.endswith("\\$") or _GROUP_RE.search(pattern):
            raise ValueError(
                f"{name!r}: {_shown(text)} is not a regular expression the gateway writes: "
                "'~^...$' (anchored at both ends; '~(?i)^...$' ignores case), printable ASCII "
                "up to 256 characters, no '\"', a '\\' only before a character PCRE escapes "
                "(.^$*+?()[]{}|/-dDwWsSbB), no '(?' groups but '(?:'")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{name!r}: {_shown(text)} is not a regular expression: "
                             f"{exc}") from None
        return text
    if not _EXACT_RE.fullmatch(text) or text != text.strip():
        raise ValueError(f"{name!r}: {_shown(text)} is not a header value the gateway "
                         "matches (printable ASCII up to 256 characters, no '\"' or '\\', no "
                         "space at either end; '~^...$' for a regular expression)")
    return text


def _headers(value: object) -> object:
    if isinstance(value, tuple):  # (a model's own pairs, copied)
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"{_shown(value)}: give a mapping of header name to the value it "
                         "must have (exact, or '~^regex$')")
    if len(value) > MAX_HEADERS:
        raise ValueError(f"{len(value)} headers: a route matches on {MAX_HEADERS} at most")
    problems: list[str] = []
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for name, text in value.items():
        if not isinstance(name, str) or not HEADER_NAME_RE.fullmatch(name):
            problems.append(f"{_shown(name)} is not a header name (letters, digits, '-')")
            continue
        if name.lower() in seen:
            problems.append(f"{name!r} is given twice (header names ignore case)")
            continue
        seen.add(name.lower())
        try:
            out.append((name, _value(name, text)))
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("; ".join(problems))
    return tuple(sorted(out, key=lambda pair: pair[0].lower()))


def _methods(value: object) -> object:
    if isinstance(value, str):  # `methods: GET`
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError(f"{_shown(value)}: give a list of methods, each one of "
                         f"{', '.join(METHODS)}")
    problems = [f"{_shown(m)} is not one of {', '.join(METHODS)}" for m in value
                if m not in METHODS]
    if problems:
        raise ValueError("; ".join(problems))
    if len(set(value)) != len(value):
        raise ValueError(f"{_shown(value)}: a method is given twice")
    return tuple(m for m in METHODS if m in value)


HeaderMatch = tuple[tuple[str, str], ...]


class Match(BaseModel):
    """The requests a route takes: every header of `headers` with its value, and a method of
    `methods` (each absent: any)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    headers: Annotated[HeaderMatch, BeforeValidator(_headers)] = ()
    methods: Annotated[tuple[str, ...], BeforeValidator(_methods)] = ()

    @model_validator(mode="after")
    def _something(self) -> Match:
        if not self.conditions:
            raise ValueError("give 'headers' (name: value) or 'methods' (a list), or leave out "
                             "'match'")
        return self

    @field_serializer("headers")
    def _as_written(self, pairs: HeaderMatch) -> dict[str, str]:
        """As a routes file says it, so that the controller's copy parses back."""
        return dict(pairs)

    @property
    def conditions(self) -> int:
        """How specific the match is: the number of its conditions."""
        return len(self.headers) + (1 if self.methods else 0)

    @property
    def key(self) -> str:
        """A short digest that tells this match from another (names and cases as nginx reads
        them: header names ignore case)."""
        text = repr((tuple((n.lower(), v) for n, v in self.headers), self.methods))
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    def __str__(self) -> str:
        parts = [f"{n}: {v}" for n, v in self.headers]
        if self.methods:
            parts.append("method " + "|".join(self.methods))
        return ", ".join(parts)


def as_match(value: object) -> object:
    if value is None or isinstance(value, Match):
        return value
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"{_shown(value)}: give a mapping with 'headers' (name: value) "
                         "and/or 'methods' (a list)")
    return value


def as_pattern(value: str) -> str:
    """A header's value as the PCRE pattern of a map (exact values escaped and anchored)."""
    if value.startswith("~"):
        return value[1:]
    return "^" + "".join("\\" + c if c in _SPECIAL else c for c in value) + "$"


class _Shared(Protocol):
    """What the sharing rule reads of a route (core/route.py's Route)."""

    @property
    def match(self) -> Match | None: ...
    @property
    def strip_prefix(self) -> bool: ...
    @property
    def max_body_size(self) -> int: ...


def cannot_share(route: _Shared, other: _Shared) -> str | None:
    """Why `route` cannot share its host and path with `other`, a route taken before, in words
    that follow "already routed by ..." ('' when neither has a match: the plain conflict);
    None when it can: they differ by `match`."""
    if route.match is None and other.match is None:
        return ""  # the plain conflict: the same host and path twice
    if route.match == other.match:
        return "with the same 'match'"
    if route.strip_prefix or other.strip_prefix:
        return "(routes that differ by 'match' cannot strip the prefix yet)"
    if route.max_body_size != other.max_body_size:
        # nginx checks a request's Content-Length against the location its path finds, before
        # a route of the path is chosen: one limit for all the path's routes
        return ("with another 'max_body_size' (routes that differ by 'match' share the "
                "path's limit)")
    return None
