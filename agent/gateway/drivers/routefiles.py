"""The files routes name: htpasswd files (`basic_auth`), error pages (`error_page`) and CA files
(`tls.client_ca`, `upstream_tls.ca`), read from --route-files-dir, checked, and copied where
nginx reads them.

A route, also one from a service's labels, names a file; a label's owner must not be able to make
the gateway read a file they could not read themselves. So a route's file comes only from the
folder meant for them, --route-files-dir (in a swarm, docker configs and secrets the operator
mounts there for routes), never from --certs-dir, where the TLS keys and the tokens are:

- the name is a plain file name (core/fields.py: no '/', no '..', no dot-file), ending in .html
  for a page and .htpasswd for a password file, so a page never names a password file;
- it is opened in that folder without following a link (O_NOFOLLOW, relative to the folder's
  own descriptor), and must be a regular file;
- it must not be a file the gateway holds as a secret: the folder must not be --certs-dir or
  --state-dir or inside them, and the file must not be (same device and inode: a hard link, a
  second mount of one docker secret) a file of those folders or a token file.

A file that passes is copied under a name made from its content into a directory the agent owns,
as certificates are (gateway/tls.py): nginx reads exactly the bytes that were checked, and a
changed file is a new configuration. The copies are readable by nginx's workers only. A file
that fails keeps its last good copy serving; a password file that was never good locks its
route (503), so a route that asks for a password is never open. A refusal of the file as it is
(its content, a link, a secret) holds until the file changes; a read that failed (no descriptor
left, a moment without the folder) is tried again the next cycle.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import pwd
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from agent.core.fields import ROUTE_FILE_RE
from agent.core.files import FileStamp, write_atomic
from agent.core.routes import Route, RouteTable
from agent.gateway.drivers.htpasswd import check_file
from agent.gateway.model import FilesPlan, Kind, RouteFile
from agent.gateway.settings import GatewaySettings

log = logging.getLogger("agent.gateway.routefiles")

MAX_FILE_SIZE = 1024 * 1024
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


def check_ca(data: bytes) -> list[str]:
    """A CA file (tls.client_ca, upstream_tls.ca): PEM certificates and nothing secret."""
    if b"PRIVATE KEY" in data:
        return ["holds a private key: a CA file holds certificates only"]
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        return ["not PEM certificates"]
    not_ca = [c.subject.rfc4514_string() for c in certs if not _is_ca(c)]
    return [f"not a CA certificate: {not_ca[0][:120]}"] if not_ca else []


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


# kind of file: (its field, what checks it, the copies' folder, its log event, what a refusal
# means)
_KINDS: dict[str, tuple[str, Callable[[bytes], list[str]], str, str, str]] = {
    "htpasswd": ("basic_auth", lambda data: check_file(data)[1], "htpasswd", "password_file",
                 "its routes answer 503"),
    "page": ("error_page", check_page, "pages", "error_page",
             "its routes answer nginx's own error text"),
    "ca": ("client_ca or upstream_tls.ca", check_ca, "ca", "ca_file", "its routes answer 503"),
}


@dataclass(frozen=True)
class Secrets:
    """What a route's file must never be: the folders of the gateway's secrets (--certs-dir,
    --state-dir) and its token files, compared by path and by device and inode."""

    dirs: tuple[Path, ...] = ()
    files: tuple[Path, ...] = ()

    def holding(self, folder: Path) -> Path | None:
        """The secrets' folder that `folder` is, or is inside (links resolved)."""
        real = Path(os.path.realpath(folder))
        return next((d for d in self.dirs if real.is_relative_to(os.path.realpath(d))), None)

    def named(self, st: os.stat_result) -> Path | None:
        """The secret that is the file of `st` (its device and inode), if any."""
        candidates: list[Path] = list(self.files)
        for folder in self.dirs:
            with contextlib.suppress(OSError):
                candidates += sorted(folder.iterdir())
        for path in candidates:
            with contextlib.suppress(OSError):
                other = path.stat()
                if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                    return path
        return None


def copies_dir(nginx_prefix: Path | None, nginx_conf_dir: Path) -> Path:
    """Where the checked copies live: beside the configuration nginx reads."""
    if nginx_prefix is not None:
        return nginx_prefix.absolute() / "route-files"
    return nginx_conf_dir / "gateway-route-files"


def workers_uid(main_conf: Path) -> int | None:
    """The user nginx's workers run as, who alone (and root) may read the copies: when the agent
    runs as root, the `user` of nginx's main configuration (nginx's default: nobody); else the
    agent's own user (nginx cannot change it): None."""
    if os.geteuid() != 0:
        return None
    name = "nobody"
    with contextlib.suppress(OSError, UnicodeDecodeError):
        m = re.search(r"^\s*user\s+([^\s;]+)", main_conf.read_text(encoding="utf-8"), re.M)
        name = m.group(1) if m else name
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def for_gateway(settings: GatewaySettings, store_dir: Path) -> RouteFiles:
    """The route files of a gateway with these settings (`run`, and `render` with a store of
    its own): the secrets it holds are what its settings name."""
    secrets = Secrets(
        dirs=tuple(d for d in (settings.certs_dir, settings.state_dir) if d is not None),
        files=tuple(f for f in (settings.admin_token_file, settings.controller_token_file)
                    if f is not None))
    main_conf = (settings.nginx_prefix.absolute() if settings.nginx_prefix is not None
                 else settings.nginx_conf_dir) / "nginx.conf"
    return RouteFiles(settings.route_files_dir, store_dir, secrets, workers_uid(main_conf))


class _Refused(Exception):
    """The file as it is cannot be used (until it changes)."""


class RouteFiles:
    """Reads, checks and stores the files routes name (htpasswd files, error pages);
    `plan()` once per cycle, `applied()` after."""

    def __init__(self, files_dir: Path, store_dir: Path, secrets: Secrets = Secrets(),
                 owner: int | None = None) -> None:
        self.files_dir = files_dir
        self.store_dir = store_dir
        self.secrets = secrets
        self.owner = owner  # the uid the copies belong to (nginx's workers); None: ours
        self._read: dict[tuple[Kind, str], tuple[FileStamp, Path | str]] = {}
        self._good: dict[tuple[Kind, str], Path] = {}
        self._logged: dict[tuple[Kind, str], tuple[Path | None, str | None]] = {}

    def _load(self, kind: Kind, name: str) -> Path | str:
        """The checked copy, or why not. A refusal of the file as it is, and a copy, are kept
        while the file's stamp stays the same; a read that failed is tried again next time."""
        try:
            folder = self.secrets.holding(self.files_dir)
            if folder is not None:
                raise _Refused(f"--route-files-dir {self.files_dir} is (or is inside) "
                               f"{folder}, where the gateway's secrets are: no route reads a "
                               "file there")
            if not ROUTE_FILE_RE.fullmatch(name) or ".." in name:
                raise _Refused("not a plain file name")
            dir_fd = os.open(self.files_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except _Refused as exc:
            return f"{name}: {exc}"
        except FileNotFoundError:
            return f"{name}: not found: --route-files-dir {self.files_dir} does not exist"
        except OSError as exc:
            return f"{name}: cannot open --route-files-dir {self.files_dir}: {exc.strerror}"
        try:
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return f"{name}: not found in {self.files_dir}"
            current = FileStamp(st.st_mtime_ns, st.st_size, st.st_ino)
            cached = self._read.get((kind, name))
            if cached is not None and cached[0] == current and \
                    (isinstance(cached[1], str) or cached[1].exists()):
                return cached[1]
            try:
                result: Path | str = self._check(kind, self._open(name, dir_fd))
            except _Refused as exc:
                result = f"{name}: {exc}"
            except OSError as exc:  # not cached: tried again next time
                return f"{name}: cannot read: {exc.strerror}"
            self._read[(kind, name)] = (current, result)
            return result
        finally:
            os.close(dir_fd)

    def _open(self, name: str, dir_fd: int) -> bytes:
        """The file's bytes: a regular file of the folder itself (no link), not a secret."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _Refused("a symbolic link: a route's file is read only as a file of "
                               f"{self.files_dir} itself, never through a link") from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _Refused("not a regular file")
            secret = self.secrets.named(st)
            if secret is not None:
                raise _Refused(f"the same file as {secret}, a secret of the gateway: no route "
                               "reads it")
        except BaseException:
            os.close(fd)
            raise
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_FILE_SIZE + 1)
        if len(data) > MAX_FILE_SIZE:
            raise _Refused(f"larger than {MAX_FILE_SIZE // 1024} KiB")
        return data

    def _check(self, kind: Kind, data: bytes) -> Path:
        _, check, folder, _, _ = _KINDS[kind]
        problems = check(data)
        if problems:
            raise _Refused("; ".join(problems))
        store = self.store_dir / folder
        suffix = {"htpasswd": ".htpasswd", "page": ".html", "ca": ".pem"}[kind]
        copy = store / f"{hashlib.sha256(data).hexdigest()[:24]}{suffix}"
        # nginx's workers (not its master) read the file at each request, as whatever user
        # they run as: they alone can read the copy, nobody can list the directories
        for directory in (self.store_dir, store):
            directory.mkdir(mode=0o711, parents=True, exist_ok=True)
            directory.chmod(0o711)
        if not copy.exists():
            write_atomic(copy, data, 0o400 if self.owner is not None else 0o600)
        if self.owner is not None:
            os.chown(copy, self.owner, -1)
        return copy

    def plan(self, table: RouteTable) -> FilesPlan | None:
        """The copy nginx reads for each file a route names; None when no route names one.
        The files are read again each time: a file changed on disk is seen."""
        wanted = table.named_files
        if not wanted:
            return None
        files = []
        for (kind, name), routes in sorted(wanted.items()):
            result = self._load(kind, name)
            if isinstance(result, Path):
                self._good[(kind, name)] = result
                entry = RouteFile(name, result, None, kind)
            else:
                entry = RouteFile(name, self._good.get((kind, name)),
                                  f"{result} ({_places(_KINDS[kind][0], routes)})", kind)
            files.append(entry)
            self._log(entry)
        return FilesPlan(tuple(files))

    def _log(self, entry: RouteFile) -> None:
        now = (entry.path, entry.error)
        if self._logged.get((entry.kind, entry.name)) == now:
            return
        self._logged[(entry.kind, entry.name)] = now
        _, _, _, event, effect = _KINDS[entry.kind]
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
        for _, _, folder, _, _ in _KINDS.values():
            try:
                entries = list((self.store_dir / folder).iterdir())
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry not in keep:
                    with contextlib.suppress(OSError):
                        entry.unlink()


def _places(field: str, routes: Iterable[Route]) -> str:
    """`error_page of shop.example.com/, www.example.com/blog`: the routes naming a file."""
    named = sorted({f"{r.hosts[0]}{r.path}" for r in routes})
    more = f" and {len(named) - 3} more" if len(named) > 3 else ""
    return f"{field} of {', '.join(named[:3])}{more}"
