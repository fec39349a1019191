"""Structured logs: a short event name and key=value fields, or one JSON object per line.

The code logs `log.info("routes_loaded file=%s routes=%d", path, n)`. The text format prints that
as it reads. The JSON format makes each `key=%X` of the format string a field holding its argument
(`{"event": "routes_loaded", "file": "/etc/routes.yaml", "routes": 3, ...}`), with the type the
placeholder says: `%d` an integer, `%.3f` a number, `%s` of a number, bool or None the JSON value,
`%r` of a string the string itself (the quotes are the text format's). Fields come from the
format string, never from the values: a value with spaces, `=`, quotes or newlines is one field's
value and cannot add another. Messages of other loggers (aiohttp, asyncio), which do not follow
the convention, carry only `msg`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import threading
import time
from functools import lru_cache
from typing import Any

# ts, level, logger, msg (the text line) and exc are the formatter's; a field of that name
# is written as `<name>_` rather than overwrite them
RESERVED = frozenset({"ts", "level", "logger", "event", "msg", "exc"})
OWN_LOGGERS = "agent"  # loggers whose messages are `event key=value ...`

_SPEC = re.compile(r"%(?:\((?P<key>[^)]*)\))?[#0+ -]*(?:\d+)?(?:\.\d+)?[hlL]?"
                   r"(?P<conv>[diouxXeEfFgGcrsa%])")
_EVENT = re.compile(r"[a-z][a-z0-9_.]*:?")
_KEY = re.compile(r"[a-z_][a-z0-9_.]*")
_NUMERIC = "diueEfFgG"


class _Arg:
    """A placeholder of the format string: its text (`%.3f`) and the argument it takes."""

    __slots__ = ("conv", "key", "spec")

    def __init__(self, spec: str, conv: str, key: str | None) -> None:
        self.spec = spec
        self.conv = conv
        self.key = key


Token = list[str | _Arg]


@lru_cache(maxsize=512)
def _tokens(fmt: str) -> list[Token] | None:
    """The format string cut into space-separated tokens of literal text and placeholders.
    Spaces inside quotes of the literal text (`reason='own address unknown'`) do not cut; an
    argument is never cut, whatever it holds. None when the format has `*` widths."""
    if "%*" in fmt or ".*" in fmt:
        return None
    tokens: list[Token] = []
    current: Token = []
    text = ""
    quote = ""
    pos = 0
    for match in [*_SPEC.finditer(fmt), None]:
        literal = fmt[pos:match.start()] if match else fmt[pos:]
        for ch in literal:
            if quote:
                quote = "" if ch == quote else quote
            elif ch in "'\"":
                quote = ch
            elif ch == " ":
                if text:
                    current.append(text)
                    text = ""
                if current:
                    tokens.append(current)
                    current = []
                continue
            text += ch
        if match is None:
            break
        pos = match.end()
        if match["conv"] == "%":
            text += "%"
            continue
        if text:
            current.append(text)
            text = ""
        current.append(_Arg(match.group(), match["conv"], match["key"]))
    if text:
        current.append(text)
    if current:
        tokens.append(current)
    return tokens


def _finite(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def _typed(arg: _Arg, value: object) -> object:
    """The JSON value of one argument, as its placeholder formats it."""
    text = arg.spec % (value,) if arg.key is None else arg.spec.replace(
        f"({arg.key})", "", 1) % (value,)
    if arg.conv in "diu":
        return int(text)
    if arg.conv in "eEfFgG":
        return _finite(float(text))
    if arg.conv == "s" and (value is None or isinstance(value, (bool, int))):
        return value
    if arg.conv == "s" and isinstance(value, float):
        return _finite(value)
    if arg.conv == "r" and isinstance(value, str):
        return value
    return text


def _literal(text: str) -> object:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text.isdigit():
        return int(text)
    return {"true": True, "false": False}.get(text, text)


def fields(record: logging.LogRecord) -> dict[str, object]:
    """`event` and the key=value fields of a record of the agent's own loggers ({} for others,
    and for a message that does not have the shape)."""
    if record.name != OWN_LOGGERS and not record.name.startswith(OWN_LOGGERS + "."):
        return {}
    fmt = record.msg
    tokens = _tokens(fmt) if isinstance(fmt, str) else None
    if not tokens:
        return {}
    args = record.args
    mapping = args if isinstance(args, dict) else None
    positional = list(args) if isinstance(args, tuple) else []
    used = 0

    def value_of(arg: _Arg) -> object:
        nonlocal used
        if arg.key is not None:
            if mapping is None:
                raise KeyError(arg.key)
            return mapping[arg.key]
        used += 1
        return positional[used - 1]

    def rendered(parts: Token) -> str:
        out = ""
        for part in parts:
            if isinstance(part, str):
                out += part
            else:
                value = value_of(part)
                out += (part.spec % (value,) if part.key is None else
                        part.spec.replace(f"({part.key})", "", 1) % (value,))
        return out

    try:
        event = rendered(tokens[0])
        if not _EVENT.fullmatch(event):
            return {}
        doc: dict[str, object] = {"event": event.rstrip(":")}
        for token in tokens[1:]:
            head = token[0]
            key, eq, first = head.partition("=") if isinstance(head, str) else ("", "", "")
            if not eq or not _KEY.fullmatch(key):
                rendered(token)  # free text: in `msg` only; its arguments are used up
                continue
            parts: Token = [first, *token[1:]] if first else token[1:]
            value: object
            if not parts:
                value = ""
            elif isinstance(parts[0], _Arg) and (
                    len(parts) == 1  # took=%.1fs below: a number of seconds
                    or (len(parts) == 2 and parts[0].conv in _NUMERIC and parts[1] == "s")):
                value = _typed(parts[0], value_of(parts[0]))
            elif all(isinstance(p, str) for p in parts):
                value = _literal("".join(p for p in parts if isinstance(p, str)))
            else:
                value = rendered(parts)
            doc[f"{key}_" if key in RESERVED else key] = value
    except (IndexError, KeyError, TypeError, ValueError):
        return {}  # the arguments do not fit the format: logging reports that itself
    if mapping is None and used != len(positional):
        return {}
    return doc


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{stamp}.{int(record.msecs):03d}Z {record.levelname.lower()} {record.name} " \
               f"{record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


# characters str.splitlines() breaks at that json.dumps(ensure_ascii=False) leaves as they are
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event and the fields, msg (the text line's
    message) and exc (a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        doc.update(fields(record))
        doc["msg"] = record.getMessage()
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str).translate(_LINE_BREAKS)


_NGINX_LINE = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(?P<level>[a-z]+)\] "
                         r"(?P<pid>\d+)#\d+: (?:\*\d+ )?(?P<text>.*)")
_NGINX_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "notice": logging.INFO,
                 "warn": logging.WARNING, "error": logging.ERROR, "crit": logging.CRITICAL,
                 "alert": logging.CRITICAL, "emerg": logging.CRITICAL}


def relay_nginx(fd: int, logger: logging.Logger) -> threading.Thread:
    """Log each line nginx writes to `fd` (its stderr) as an event `nginx_log`, so that a JSON
    log stays JSON. A thread, not the event loop: nginx's processes write their error log as
    they go, and a loop busy with a cycle must not keep them waiting on a full pipe. Ends when
    every nginx process has closed the pipe."""

    def run() -> None:
        with open(fd, "rb") as stream:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                match = _NGINX_LINE.fullmatch(line)
                if match is None:
                    logger.info("nginx_log nginx_level=unknown text=%r", line)
                    continue
                logger.log(_NGINX_LEVELS.get(match["level"], logging.INFO),
                           "nginx_log nginx_level=%s pid=%d text=%r", match["level"],
                           int(match["pid"]), match["text"])

    thread = threading.Thread(target=run, name="nginx-stderr", daemon=True)
    thread.start()
    return thread


def setup(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
