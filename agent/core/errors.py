"""Errors that name their place (`routes[2].hosts[0]: ...`), for every file the programs read.

One formatter for pydantic's errors, used by the routes model and the keepalived cluster file:
the place is written from the location pydantic reports, and a key the file wrote that is not
a plain name is quoted, so a file cannot break the line or forge a place.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Iterable

from pydantic import ValidationError

Loc = tuple[int | str, ...]
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class FieldError(ValueError):
    """A model-wide check whose error belongs to one field: its place names the field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


# a list or mapping is quoted as far as 80 characters show it, never walked whole: a value may
# be large (a YAML alias repeats a whole structure), and its repr would cost as much
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 3, 20, 20, 20, 20
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 100


def shown(value: object) -> str:
    """A value as an error message quotes it: repr, at most 80 characters."""
    text = repr(value) if isinstance(value, str | int | float | None) else _REPR.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def place(loc: Iterable[int | str]) -> str:
    """`routes[2].hosts[0]`; `(top level)` for the empty place."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _FIELD_NAME.fullmatch(part):
            text += f".{part}" if text else part
        else:  # a key as the file wrote it, quoted
            text += f"[{shown(part)}]"
    return text or "(top level)"


def problems(exc: ValidationError, secrets: frozenset[str] = frozenset(),
             ) -> list[tuple[Loc, str]]:
    """Each of pydantic's errors as (place, message), in words a user of the file reads; the
    value is not repeated for a field named in `secrets` (a password)."""
    out: list[tuple[Loc, str]] = []
    for err in exc.errors():
        loc: Loc = tuple(p for p in err["loc"]
                         if not (isinstance(p, str) and p.startswith("function-")))
        msg = err["msg"]
        if err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
            cause = err.get("ctx", {}).get("error")
            if isinstance(cause, FieldError):
                loc = (*loc, cause.field)
        elif err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] == "invalid_key":  # pydantic puts str(key) where the key was
            loc = loc[:-1]
            msg = f"the key {shown(err['input'])} is not a field name"
        elif "input" in err and err["type"] not in ("model_type",) and \
                not secrets.intersection(p for p in loc if isinstance(p, str)):
            msg = f"{shown(err['input'])}: {msg}"
        out.append((loc, msg))
    return out
