#!/usr/bin/env python3
"""Install a recent nginx from Debian's unstable (sid) binary packages into a private root.

The gateway needs nginx 1.27.4 or newer (`server ... resolve` in upstreams, 1.27.3, and
`keepalive_min_timeout`, 1.27.4); Debian bookworm has 1.22 and no backport is newer. Debian's
sid packages run on bookworm when they bring their own C library: this script

1. reads the first Debian mirror of the host's apt sources (at run time; it is written nowhere),
2. fetches `dists/sid/InRelease` and checks its signature against the host's Debian archive
   keyring with gpgv,
3. fetches `main/binary-<arch>/Packages.xz` and checks it against the SHA256 that InRelease gives,
4. takes nginx, its stream module and everything they depend on (libc6 included), checks each
   .deb against the SHA256 the Packages index gives, and unpacks them with `dpkg-deb -x` into
   ROOT (default /opt/swarm-gateway/nginx),
5. points the nginx binary at ROOT's own loader and libraries (patchelf: interpreter and RPATH,
   which also covers the modules nginx loads), and links BIN (default /usr/local/sbin/nginx).

The .debs are kept in CACHE (default /var/cache/swarm-gateway/debs): a second run with ROOT in
place does nothing, and one without ROOT unpacks from the cache without downloading.

    scripts/nginx-sid.py install [--root ROOT] [--cache CACHE] [--bin BIN]
    scripts/nginx-sid.py version [--root ROOT]     prints the installed version, exit 1 if none

Standard library only: it runs before the project's virtual environment exists.
"""

from __future__ import annotations

import argparse
import hashlib
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

MINIMUM = (1, 27, 4)
WANTED = ("nginx", "libnginx-mod-stream")
# not needed in a private root: configuration files and the package system's own tools
SKIP = {"nginx-common", "debconf", "debconf-2.0", "dpkg", "init-system-helpers"}
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))


class SetupError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"nginx: {message}", file=sys.stderr, flush=True)


def mirror() -> str:
    """The first Debian mirror of the host's apt sources."""
    deb822, legacy = SOURCES
    if deb822.exists():
        for line in deb822.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1].rstrip("/")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            fields = [f for f in line.split() if not f.startswith("[")]
            if fields[:1] == ["deb"] and len(fields) > 1:
                return fields[1].rstrip("/")
    raise SetupError("no Debian mirror in the apt sources")


def fetch(url: str, into: Path) -> None:
    tmp = into.with_name(into.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, tmp.open("wb") as out:
            shutil.copyfileobj(resp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SetupError(f"cannot fetch {url}: {exc}") from None
    tmp.replace(into)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_release(path: Path) -> str:
    """The signed text of InRelease, after gpgv found a good signature by an archive key."""
    if not KEYRING.exists():
        raise SetupError(f"{KEYRING} is missing (Debian package debian-archive-keyring)")
    proc = subprocess.run(["gpgv", "--status-fd", "1", "--keyring", str(KEYRING), str(path)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0 or "[GNUPG:] VALIDSIG" not in proc.stdout:
        raise SetupError(f"{path.name}: no valid signature by a Debian archive key: "
                         f"{proc.stderr.strip()[-300:]}")
    text = path.read_text()
    start = text.index("\n\n", text.index("-----BEGIN PGP SIGNED MESSAGE-----")) + 2
    return text[start:text.index("-----BEGIN PGP SIGNATURE-----")]


def index_digest(release: str, name: str) -> tuple[str, int]:
    """SHA256 and size of `name` from the SHA256 section of a Release file."""
    section = release.split("\nSHA256:\n", 1)
    if len(section) != 2:
        raise SetupError("InRelease has no SHA256 section")
    for line in section[1].splitlines():
        if not line.startswith(" "):
            break
        digest, size, file = line.split()
        if file == name:
            return digest, int(size)
    raise SetupError(f"InRelease does not list {name}")


def parse_packages(text: str) -> dict[str, dict[str, str]]:
    packages: dict[str, dict[str, str]] = {}
    for para in text.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z0-9-]+): (.*)$", para, re.M))
        if "Package" in fields:
            packages.setdefault(fields["Package"], fields)
    return packages


def closure(packages: dict[str, dict[str, str]]) -> list[dict[str, str]]:
    """WANTED and what they depend on (first alternative of each), virtual names resolved."""
    provides: dict[str, str] = {}
    for name, fields in packages.items():
        for virtual in fields.get("Provides", "").split(","):
            if virtual.strip():
                provides.setdefault(virtual.split()[0], name)
    seen: dict[str, dict[str, str]] = {}
    todo = list(WANTED)
    while todo:
        name = todo.pop()
        name = name if name in packages else provides.get(name, name)
        if name in seen or name in SKIP:
            continue
        if name not in packages:
            raise SetupError(f"sid has no package {name}")
        seen[name] = packages[name]
        for key in ("Pre-Depends", "Depends"):
            for alternatives in packages[name].get(key, "").split(","):
                first = alternatives.split("|")[0].strip()
                if first:
                    todo.append(first.split()[0].split(":")[0])
    return [seen[n] for n in sorted(seen)]


def version_of(binary: Path) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([str(binary), "-v"], capture_output=True, text=True, timeout=10,
                             check=False).stderr
    except OSError:
        return None
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in m.groups()) if m else None


def arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def install(root: Path, cache: Path, bin_link: Path) -> None:
    binary = root / "usr/sbin/nginx"
    have = version_of(binary)
    if have is not None and have >= MINIMUM:
        log(f"{'.'.join(map(str, have))} is installed in {root}")
        link(binary, bin_link)
        return
    for tool in ("gpgv", "dpkg-deb", "patchelf"):
        if shutil.which(tool) is None:
            raise SetupError(f"{tool} is not installed")
    cache.mkdir(parents=True, exist_ok=True)
    base = mirror()
    machine = arch()
    log("fetching sid's signed package index")
    release_file = cache / "InRelease"
    fetch(f"{base}/dists/sid/InRelease", release_file)
    release = verified_release(release_file)
    index_name = f"main/binary-{machine}/Packages.xz"
    digest, size = index_digest(release, index_name)
    index = cache / "Packages.xz"
    if not index.exists() or sha256(index) != digest:
        fetch(f"{base}/dists/sid/{index_name}", index)
    if index.stat().st_size != size or sha256(index) != digest:
        raise SetupError(f"{index_name}: checksum differs from the signed InRelease")
    packages = closure(parse_packages(lzma.decompress(index.read_bytes()).decode()))
    staging = Path(tempfile.mkdtemp(prefix=".nginx-", dir=root.parent if root.parent.exists()
                                    else None))
    try:
        for fields in packages:
            deb = cache / Path(fields["Filename"]).name
            if not deb.exists() or sha256(deb) != fields["SHA256"]:
                log(f"fetching {fields['Package']} {fields['Version']}")
                fetch(f"{base}/{fields['Filename']}", deb)
            if sha256(deb) != fields["SHA256"]:
                deb.unlink()
                raise SetupError(f"{deb.name}: checksum differs from the signed index")
            subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], check=True)
        # the loader itself, not a link to it: the debs' links are absolute (the host's loader)
        interpreter = next(p / "ld-linux-x86-64.so.2" for p in (
            staging / f"usr/lib/{multiarch(machine)}", staging / f"lib/{multiarch(machine)}",
            staging / "usr/lib64", staging / "lib64")
            if (p / "ld-linux-x86-64.so.2").is_file()
            and not (p / "ld-linux-x86-64.so.2").is_symlink())
        libdirs = [d for d in (f"usr/lib/{multiarch(machine)}", f"lib/{multiarch(machine)}")
                   if (staging / d).is_dir()]
        final_interp = root / interpreter.relative_to(staging)
        # RPATH (not RUNPATH) applies to every library and module loaded, not just direct ones
        subprocess.run(["patchelf", "--set-interpreter", str(final_interp), "--force-rpath",
                        "--set-rpath", ":".join(str(root / d) for d in libdirs),
                        str(staging / "usr/sbin/nginx")], check=True)
        versions = "\n".join(f"{p['Package']} {p['Version']}" for p in packages)
        (staging / "PACKAGES").write_text(versions + "\n")
        if root.exists():
            shutil.rmtree(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(root)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    have = version_of(binary)
    if have is None or have < MINIMUM:
        raise SetupError(f"{binary} does not run or is older than "
                         f"{'.'.join(map(str, MINIMUM))}: {have}")
    log(f"installed {'.'.join(map(str, have))} in {root}")
    link(binary, bin_link)


def multiarch(machine: str) -> str:
    return {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}[machine]


def link(binary: Path, bin_link: Path) -> None:
    if bin_link.is_symlink() and Path(os.readlink(bin_link)) == binary:
        return
    bin_link.parent.mkdir(parents=True, exist_ok=True)
    tmp = bin_link.with_name(bin_link.name + ".new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(binary)
    tmp.replace(bin_link)
    log(f"{bin_link} -> {binary}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("command", choices=("install", "version"))
    p.add_argument("--root", type=Path, default=Path("/opt/swarm-gateway/nginx"))
    p.add_argument("--cache", type=Path, default=Path("/var/cache/swarm-gateway/debs"))
    p.add_argument("--bin", type=Path, default=Path("/usr/local/sbin/nginx"))
    args = p.parse_args()
    try:
        if args.command == "version":
            have = version_of(args.root / "usr/sbin/nginx")
            if have is None:
                return 1
            print(".".join(map(str, have)))
            return 0
        install(args.root, args.cache, args.bin)
    except (SetupError, subprocess.CalledProcessError) as exc:
        log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
