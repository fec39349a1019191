"""nginx's modules: which ones the nginx in use has, and which files it must load for them.

A module is compiled into nginx or built as a file (a dynamic module) that the main
configuration loads with `load_module`. The official nginx image compiles the stream module in;
Debian builds it as ngx_stream_module.so (package libnginx-mod-stream), which
scripts/nginx-sid.py unpacks into a private root beside its nginx. `nginx -V` tells which:
`--with-stream` (compiled in) or `--with-stream=dynamic`, and where modules are installed
(`--modules-path`, default PREFIX/modules). A module file is looked for in that directory under
the root nginx itself is installed in (for /opt/root/usr/sbin/nginx: /opt/root/usr/lib/...),
then in that directory as it is. A module must come from the same build as its nginx; one of
another version is refused by nginx itself when it loads it (`nginx -t` says which), and the
agent reports that as any configuration nginx refuses.

A module that is neither compiled in nor found is missing; what needs it says so
(gateway/nginx.py).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("agent.gateway.modules")


@dataclass(frozen=True)
class Module:
    """A module the gateway may use: its name, the file a distribution ships it as, and the
    configure flag that compiles it in (None: it only ever comes as a file, like njs)."""

    name: str
    file: str
    compiled_in_flag: str | None = None


STREAM = Module("stream", "ngx_stream_module.so", "--with-stream")
KNOWN: tuple[Module, ...] = (STREAM,)


@dataclass(frozen=True)
class Modules:
    """What one nginx binary has: modules compiled in, files to load (in order), and the
    modules it lacks."""

    compiled_in: frozenset[str] = frozenset()
    load: tuple[tuple[str, Path], ...] = ()  # (module name, file)
    missing: tuple[str, ...] = ()
    detail: str = ""  # why modules are missing, for the error that needs one

    def has(self, name: str) -> bool:
        return name in self.compiled_in or any(n == name for n, _ in self.load)

    @property
    def files(self) -> tuple[Path, ...]:
        """The `load_module` lines of the main configuration, in order."""
        return tuple(path for _, path in self.load)


def configure_arguments(version_output: str) -> list[str]:
    """The arguments nginx was configured with, from `nginx -V` (which writes to stderr)."""
    for line in version_output.splitlines():
        if line.startswith("configure arguments:"):
            try:
                return shlex.split(line.partition(":")[2])
            except ValueError:  # an unbalanced quote in someone's --with-cc-opt
                return line.partition(":")[2].split()
    return []


def _option(arguments: Sequence[str], name: str) -> str | None:
    for arg in arguments:
        if arg.startswith(name + "="):
            return arg.partition("=")[2]
    return None


def _install_root(binary: Path) -> Path:
    """The root an nginx binary was unpacked into: /opt/root for /opt/root/usr/sbin/nginx."""
    parent = binary.parent
    if parent.name in ("sbin", "bin"):
        parent = parent.parent
        if parent.name in ("usr", "local"):
            parent = parent.parent
            if parent.name == "usr":  # /usr/local/sbin
                parent = parent.parent
    return parent


def module_dirs(binary: Path, arguments: Sequence[str]) -> list[Path]:
    """Where this nginx's module files are: its modules path under the root it is installed
    in, then as configured."""
    prefix = _option(arguments, "--prefix") or "/usr/local/nginx"
    configured = Path(_option(arguments, "--modules-path") or "modules")
    if not configured.is_absolute():  # nginx reads a relative path from its prefix
        configured = Path(prefix) / configured
    dirs = []
    root = _install_root(binary)
    if root != Path("/"):
        dirs.append(root / configured.relative_to("/"))
    dirs.append(configured)
    return dirs


def detect(version_output: str, binary: Path, wanted: Sequence[Module] = KNOWN) -> Modules:
    """Which of `wanted` this nginx has compiled in, which files load the others, and which it
    lacks. `binary` is the nginx executable with its links followed."""
    arguments = configure_arguments(version_output)
    dirs = module_dirs(binary, arguments)
    compiled_in: set[str] = set()
    load: list[tuple[str, Path]] = []
    missing: list[str] = []
    for module in wanted:
        if module.compiled_in_flag is not None and module.compiled_in_flag in arguments:
            compiled_in.add(module.name)
            continue
        found = next((d / module.file for d in dirs if (d / module.file).is_file()), None)
        if found is None:
            missing.append(module.name)
        else:
            load.append((module.name, found))
    detail = ""
    if missing:
        detail = (f"{binary} has no {', '.join(missing)} module: not compiled in, and no "
                  f"{', '.join(m.file for m in wanted if m.name in missing)} in "
                  f"{', '.join(str(d) for d in dirs)}")
    return Modules(frozenset(compiled_in), tuple(load), tuple(missing), detail)


def find(binary: str, wanted: Sequence[Module] = KNOWN) -> Modules:
    """detect() for the nginx `binary` (a name on PATH or a path), by running `nginx -V`."""
    where = shutil.which(binary) or binary
    try:
        out = subprocess.run([where, "-V"], capture_output=True, text=True, timeout=10,
                             check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Modules(missing=tuple(m.name for m in wanted),
                       detail=f"cannot run {binary} -V: {exc}")
    said = out.stderr + out.stdout
    if "nginx version:" not in said:
        return Modules(missing=tuple(m.name for m in wanted),
                       detail=f"{binary} -V said {said.strip()[:120]!r}")
    found = detect(said, Path(os.path.realpath(where)), wanted)
    for name, path in found.load:
        log.info("nginx_module name=%s file=%s", name, path)
    return found
