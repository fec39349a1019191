"""The one way a value reaches nginx configuration: as a plain token (the `nginx` filter) or a
quoted string the routes model allows spaces in (`nginx_quoted`), through a Jinja2 environment
that has both. Anything else raises RenderError: a route, a label or a DNS answer cannot add a
directive, even through a user's own template."""

from __future__ import annotations

import re
from pathlib import Path

import jinja2

SAFE_TOKEN = re.compile(r"[A-Za-z0-9._:/\[\]*~+,@-]+")
# What may stand between double quotes: printable ASCII without '"', '\\' and '$' (which nginx
# reads inside quotes) nor '{', '}' (which would open or close a block if a quote slipped). A
# ';' is text there: nginx's parser (ngx_conf_read_token) ends a quoted word at its closing
# quote only, and every quote is refused.
SAFE_QUOTED = re.compile(r"[ !#%&'()*+,\-./0-9:;<=>?@A-Z\[\]^_`a-z|~]*")
# A map's regular expression between double quotes (core/match.py makes them): printable ASCII
# without '"'; a '\\' only before a character nginx keeps it for (none of '"', '\'', '\\', 'n',
# 'r', 't', which its parser would unescape), no named group (it would set a variable).
SAFE_REGEX = re.compile(r"(?:[ !#-\[\]-~]|\\[.^$*+?()\[\]{}|/dDwWsSbB-])+")
TEMPLATES = Path(__file__).parent.parent / "templates"  # agent/gateway/templates


class RenderError(ValueError):
    """A value that is not a plain nginx token reached the template, or the template failed."""


def nginx_token(value: object) -> str:
    text = str(value)
    if not SAFE_TOKEN.fullmatch(text):
        raise RenderError(f"refusing to write {text[:80]!r} into nginx configuration")
    return text


def nginx_quoted(value: object) -> str:
    """A double-quoted nginx string, for text the routes model allows spaces in (a realm)."""
    text = str(value)
    if not SAFE_QUOTED.fullmatch(text):
        raise RenderError(f"refusing to write {text[:80]!r} into nginx configuration")
    return f'"{text}"'


def nginx_regex(value: object) -> str:
    """A map's regular expression: `"~PATTERN"`."""
    text = str(value)
    if not SAFE_REGEX.fullmatch(text) or "(?" in text.replace("(?:", "").removeprefix("(?i)"):
        raise RenderError(f"refusing to write {text[:80]!r} into nginx configuration")
    return f'"~{text}"'


def environment(template_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # nginx text, not HTML; values pass the nginx filter
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["nginx"] = nginx_token
    env.filters["nginx_quoted"] = nginx_quoted
    env.filters["nginx_regex"] = nginx_regex
    return env
