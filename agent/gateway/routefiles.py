"""Files routes name in --certs-dir: htpasswd files (`basic_auth`) and error pages (`error_page`),
read, checked and copied where nginx reads them.

A route's `basic_auth: users.htpasswd` names an htpasswd file in --certs-dir (in a swarm a docker
secret). Before nginx sees it, every line is checked: `user:hash`, a user named once, and a hash
nginx can check. nginx checks `{SHA}`, `{SSHA}` and `$apr1$` (the default of Apache's `htpasswd`)
itself and hands everything else to the system's crypt(3); the scheme of every other hash is
therefore tried with the crypt(3) of this machine, which is the library nginx uses beside the
agent. bcrypt (`htpasswd -B`) works with Debian's libcrypt; where crypt(3) cannot check it, the
file is refused with a message that says so instead of nginx answering 500 to every login.

nginx checks the password inside its worker, which waits meanwhile: a hash that costs seconds
would stall every request of that worker, so the cost is bounded (bcrypt at most 12, SHA-crypt at
most 100000 rounds). Plain-text passwords (`{PLAIN}`) are refused.

A file that passes is copied under a name made from its content into a directory the agent owns,
as certificates are (gateway/tls.py): nginx reads exactly the bytes that were checked, and a changed
file is a new configuration. A file that fails keeps its last good copy serving; a file that was
never good locks its route (503), so a route that asks for a password is never open.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ctypes
import ctypes.util
import functools
import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.core.files import FileStamp, stamp, write_atomic
from agent.core.routes import RouteTable

log = logging.getLogger("agent.gateway.routefiles")

MAX_BCRYPT_COST = 12
MAX_SHA_ROUNDS = 100_000
MAX_FILE_SIZE = 1024 * 1024
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


MAX_PAGE_SIZE = 64 * 1024


def check_page(data: bytes) -> list[str]:
    """An error page is sent as it is, as text/html: it only has to be UTF-8 and small."""
    if len(data) > MAX_PAGE_SIZE:
        return [f"larger than {MAX_PAGE_SIZE // 1024} KiB"]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [f"not UTF-8 text (byte {exc.start})"]
    return []


# kind of file: (what checks it, the copy's suffix, its log event, what a refusal means)
Kind = Literal["htpasswd", "page"]
_KINDS: dict[str, tuple[Callable[[bytes], list[str]], str, str, str]] = {
    "htpasswd": (lambda data: check_file(data)[1], ".htpasswd", "password_file",
                 "its routes answer 503"),
    "page": (check_page, ".html", "error_page", "its routes answer nginx's own error text"),
}


@dataclass(frozen=True)
class RouteFile:
    name: str  # the file in --certs-dir
    path: Path | None  # the checked copy nginx reads (the last good one); None: never good
    error: str | None  # why the current file is refused
    kind: Kind = "htpasswd"


@dataclass(frozen=True)
class FilesPlan:
    files: tuple[RouteFile, ...]

    def path(self, name: str, kind: Kind = "htpasswd") -> Path | None:
        return next((f.path for f in self.files if f.name == name and f.kind == kind), None)

    @property
    def errors(self) -> tuple[RouteFile, ...]:
        return tuple(f for f in self.files if f.error is not None)


def copies_dir(nginx_prefix: Path | None, nginx_conf_dir: Path) -> Path:
    """Where the checked copies live: beside the configuration nginx reads."""
    if nginx_prefix is not None:
        return nginx_prefix.absolute() / "route-files"
    return nginx_conf_dir / "gateway-route-files"


class RouteFiles:
    """Reads, checks and stores the files routes name (htpasswd files, error pages);
    `plan()` once per cycle, `applied()` after."""

    def __init__(self, certs_dir: Path, store_dir: Path) -> None:
        self.certs_dir = certs_dir
        self.store_dir = store_dir
        self._read: dict[tuple[Kind, str], tuple[FileStamp | None, Path | str]] = {}
        self._good: dict[tuple[Kind, str], Path] = {}
        self._logged: dict[tuple[Kind, str], tuple[Path | None, str | None]] = {}

    def _load(self, kind: Kind, name: str) -> Path | str:
        path = self.certs_dir / name
        current = stamp(path)
        cached = self._read.get((kind, name))
        if cached is not None and current is not None and cached[0] == current and \
                (isinstance(cached[1], str) or cached[1].exists()):
            return cached[1]
        result = self._check(kind, path)
        self._read[(kind, name)] = (current, result)
        return result

    def _check(self, kind: Kind, path: Path) -> Path | str:
        check, suffix, _, _ = _KINDS[kind]
        try:
            if path.stat().st_size > MAX_FILE_SIZE:
                return f"{path.name}: larger than {MAX_FILE_SIZE // 1024} KiB"
            data = path.read_bytes()
        except FileNotFoundError:
            return f"{path.name}: not found in {path.parent}"
        except OSError as exc:
            return f"{path.name}: cannot read: {exc.strerror}"
        problems = check(data)
        if problems:
            return f"{path.name}: " + "; ".join(problems)
        copy = self.store_dir / f"{hashlib.sha256(data).hexdigest()[:24]}{suffix}"
        try:
            # nginx's workers (not its master) read the file at each request, as whatever
            # user they run as: they can open the copy, nobody can list the directory
            self.store_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
            self.store_dir.chmod(0o711)
            if not copy.exists():
                write_atomic(copy, data, 0o644)
        except OSError as exc:
            return f"{path.name}: cannot store a copy in {self.store_dir}: {exc}"
        return copy

    def plan(self, table: RouteTable) -> FilesPlan | None:
        """The copy nginx reads for each file a route names; None when no route names one."""
        wanted: set[tuple[Kind, str]] = set()
        for r in table.routes:
            if r.basic_auth is not None:
                wanted.add(("htpasswd", r.basic_auth.file))
            if r.error_page is not None:
                wanted.add(("page", r.error_page))
        if not wanted:
            return None
        files = []
        for kind, name in sorted(wanted):
            result = self._load(kind, name)
            if isinstance(result, Path):
                self._good[(kind, name)] = result
                entry = RouteFile(name, result, None, kind)
            else:
                entry = RouteFile(name, self._good.get((kind, name)), result, kind)
            files.append(entry)
            self._log(entry)
        return FilesPlan(tuple(files))

    def _log(self, entry: RouteFile) -> None:
        now = (entry.path, entry.error)
        if self._logged.get((entry.kind, entry.name)) == now:
            return
        self._logged[(entry.kind, entry.name)] = now
        _, _, event, effect = _KINDS[entry.kind]
        if entry.error is None:
            log.info("%s_in_use file=%s", event, entry.name)
        elif entry.path is not None:
            log.error("%s_refused file=%s error=%r keeping=%s", event, entry.name,
                      entry.error, entry.path.name)
        else:
            log.error("%s_refused file=%s error=%r effect=%r", event, entry.name,
                      entry.error, effect)

    def applied(self, plan: FilesPlan | None) -> None:
        """After `plan` serves: remove the copies no configuration refers to any more."""
        keep = {f.path for f in (plan.files if plan else ()) if f.path is not None}
        self._good = {k: v for k, v in self._good.items() if v in keep}
        try:
            entries = list(self.store_dir.iterdir())
        except FileNotFoundError:
            return
        for entry in entries:
            if entry not in keep:
                with contextlib.suppress(OSError):
                    entry.unlink()
