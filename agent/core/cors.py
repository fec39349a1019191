"""`cors`: cross-origin requests answered at the gateway. A preflight (OPTIONS with
Access-Control-Request-Method) gets 204 with what the route allows; any answer carries
Access-Control-Allow-Origin for an origin of `origins` only (echoed, with Vary: Origin), or `*`
when `origins` is `["*"]`. Credentials are never allowed with `*`."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from agent.core.errors import shown as _shown
from agent.core.fields import Seconds
from agent.core.options import HEADER_NAME_RE

ORIGIN_RE = re.compile(r"https?://[a-z0-9](?:[a-z0-9.-]{0,98}[a-z0-9])?(?::[0-9]{1,5})?")
METHOD_RE = re.compile(r"[A-Z]{1,16}")


def _listed(pattern: re.Pattern[str], what: str, lower: bool = False,
            empty: bool = False) -> Callable[[object], object]:
    def check(value: object) -> object:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or (not value and not empty):
            raise ValueError(f"{_shown(value)}: give a list, each item {what}")
        problems = [f"{_shown(v)} is not {what}" for v in value
                    if not isinstance(v, str) or not pattern.fullmatch(v)
                    or (lower and v != v.lower())]
        if problems:
            raise ValueError("; ".join(problems))
        if len({v.lower() for v in value}) != len(value):
            raise ValueError(f"{_shown(value)}: a value is given twice")
        return tuple(value)
    return check


def _origins(value: object) -> object:
    if value == "*" or value == ["*"] or value == ("*",):
        return ("*",)
    return _listed(ORIGIN_RE, "an origin (http:// or https://, a lowercase host, a port; "
                   "no path), or '*' alone", lower=True)(value)


class Cors(BaseModel):
    """Which other origins a browser lets read this route's answers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    origins: Annotated[tuple[str, ...], BeforeValidator(_origins)]
    methods: Annotated[tuple[str, ...], BeforeValidator(
        _listed(METHOD_RE, "a method (uppercase letters)"))] = ("GET", "HEAD", "POST")
    headers: Annotated[tuple[str, ...], BeforeValidator(
        _listed(HEADER_NAME_RE, "a header name (letters, digits, '-')", empty=True))] = ()
    credentials: bool = Field(default=False, strict=True)
    max_age: Seconds = 600.0

    @model_validator(mode="after")
    def _no_credentials_for_everyone(self) -> Cors:
        if self.credentials and self.origins == ("*",):
            raise ValueError("credentials are never allowed for every origin ('*'): list the "
                             "origins")
        return self

    @property
    def any_origin(self) -> bool:
        return self.origins == ("*",)


def as_cors(value: object) -> object:
    if isinstance(value, str | list):  # `cors: https://app.example.com` or a list of origins
        return {"origins": value}
    return value
