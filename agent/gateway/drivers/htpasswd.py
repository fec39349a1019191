"""htpasswd files (`basic_auth`), checked as nginx reads them before nginx sees them.

Every line is checked: `user:hash`, a user named once, and a hash nginx can check. nginx checks
`{SHA}`, `{SSHA}` and `$apr1$` (the default of Apache's `htpasswd`) itself and hands everything
else to the system's crypt(3); the scheme of every other hash is therefore tried with the
crypt(3) of this machine, which is the library nginx uses beside the agent. bcrypt (`htpasswd
-B`) works with Debian's libcrypt; where crypt(3) cannot check it, the file is refused with a
message that says so instead of nginx answering 500 to every login.

nginx checks the password inside its worker, which waits meanwhile: a hash that costs seconds
would stall every request of that worker, so the cost is bounded (bcrypt at most 12, SHA-crypt at
most 100000 rounds). Plain-text passwords (`{PLAIN}`) are refused.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import ctypes.util
import functools
import re
from collections.abc import Callable

MAX_BCRYPT_COST = 12
MAX_SHA_ROUNDS = 100_000
_B64 = r"[./A-Za-z0-9]"
_APR1 = re.compile(rf"\$apr1\${_B64}{{1,8}}\${_B64}{{22}}")
_BCRYPT = re.compile(rf"\$2[aby]\$(\d\d)\${_B64}{{53}}")
_SHA_CRYPT = re.compile(rf"\$([56])\$(?:rounds=(\d{{1,9}})\$)?[^$:]{{1,16}}\${_B64}{{43,86}}")
# a cheap setting per scheme, to ask crypt(3) whether it knows the scheme at all
_PROBES = {"bcrypt": b"$2y$04$abcdefghijklmnopqrstuu", "sha256-crypt": b"$5$abcdefgh$",
           "sha512-crypt": b"$6$abcdefgh$"}
_HOW = "(htpasswd -B for bcrypt, -5 for SHA-512, or the default $apr1$)"


@functools.cache
def _crypt() -> Callable[[bytes, bytes], bytes | None] | None:
    """The system's crypt(3), as nginx calls it; None when there is none."""
    for name in (ctypes.util.find_library("crypt"), None):  # libcrypt, or in libc (musl)
        try:
            lib = ctypes.CDLL(name)
            func = lib.crypt
        except (OSError, AttributeError):
            continue
        func.restype = ctypes.c_char_p
        func.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        return lambda key, setting: func(key, setting)
    return None


@functools.cache
def crypt_checks(scheme: str) -> bool:
    """Whether this machine's crypt(3) checks passwords of `scheme` (a key of _PROBES)."""
    crypt = _crypt()
    if crypt is None:
        return False
    setting = _PROBES[scheme]
    result = crypt(b"probe", setting)
    return result is not None and result.startswith(setting) and len(result) > len(setting)


def check_hash(text: str) -> str | None:
    """Why nginx could not check a password against `text` (None: it can)."""
    if text.startswith("{PLAIN}"):
        return "a password in plain text ({PLAIN}): store a hash " + _HOW
    if text.startswith(("{SHA}", "{SSHA}")):
        encoded = text.partition("}")[2]
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return "a {SHA} hash that is not base64"
        if len(raw) < 20 or (text.startswith("{SHA}") and len(raw) != 20):
            return "a {SHA} hash of the wrong length"
        return None
    if text.startswith("$apr1$"):
        return None if _APR1.fullmatch(text) else "a malformed $apr1$ hash"
    if text.startswith("$2"):
        m = _BCRYPT.fullmatch(text)
        if m is None:
            return "a malformed bcrypt hash"
        if int(m.group(1)) > MAX_BCRYPT_COST:
            return (f"bcrypt cost {int(m.group(1))} is above {MAX_BCRYPT_COST}: nginx checks "
                    "passwords in its worker, which would stall every request meanwhile")
        if not crypt_checks("bcrypt"):
            return ("bcrypt: the crypt(3) nginx uses here cannot check it; use -5 (SHA-512) "
                    "or the default $apr1$ of htpasswd")
        return None
    if text.startswith(("$5$", "$6$")):
        m = _SHA_CRYPT.fullmatch(text)
        if m is None:
            return "a malformed SHA-crypt hash"
        if m.group(2) is not None and int(m.group(2)) > MAX_SHA_ROUNDS:
            return (f"{int(m.group(2))} rounds is above {MAX_SHA_ROUNDS}: nginx checks "
                    "passwords in its worker, which would stall every request meanwhile")
        scheme = "sha256-crypt" if m.group(1) == "5" else "sha512-crypt"
        if not crypt_checks(scheme):
            return f"{scheme}: the crypt(3) nginx uses here cannot check it"
        return None
    return "not a hash the gateway accepts " + _HOW


def check_file(data: bytes) -> tuple[int, list[str]]:
    """(users, problems) of an htpasswd file, read as nginx reads it. A problem names its line
    and the user, never the hash."""
    problems: list[str] = []
    seen: dict[bytes, int] = {}
    for number, raw in enumerate(data.split(b"\n"), 1):
        line = raw.removesuffix(b"\r")
        if not line or line.startswith(b"#"):
            continue  # nginx skips empty lines and comments
        user, sep, rest = line.partition(b":")
        hashed = rest.partition(b":")[0]  # nginx ends the password at ':' (a comment follows)
        if not sep or not user or not hashed:
            problems.append(f"line {number}: not 'user:hash'")
            continue
        shown = repr(user.decode(errors="replace"))[:40]
        if b"\r" in line or b"\0" in line:
            problems.append(f"line {number} (user {shown}): a control character")
            continue
        if user in seen:
            problems.append(f"line {number}: user {shown} again (nginx would use line "
                            f"{seen[user]} only)")
            continue
        seen[user] = number
        try:
            why = check_hash(hashed.decode("ascii"))
        except UnicodeDecodeError:
            why = "a hash with a non-ASCII character"
        if why is not None:
            problems.append(f"line {number} (user {shown}): {why}")
    if not seen and not problems:
        problems.append("no user in the file")
    return len(seen), problems
