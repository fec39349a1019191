"""Which nginx the gateway runs: the version `nginx -v` reports, refused below what it needs."""

from __future__ import annotations

import re
import shutil
import subprocess

# `server NAME resolve` in upstreams (1.27.3), keepalive_min_timeout (1.27.4),
# `proxy_http_version 2` (1.29.4) and `sticky` in upstreams that resolve (1.29.6)
MINIMUM_VERSION = (1, 29, 6)
NEEDED_FOR = ("upstream `server ... resolve`, keepalive_min_timeout, proxy_http_version 2 and "
              "sticky on resolved upstreams")


class NginxTooOld(RuntimeError):
    """The nginx binary is missing or older than MINIMUM_VERSION (fatal, with what was found)."""


def nginx_version(binary: str) -> tuple[int, int, int]:
    """The version `binary -v` reports; NginxTooOld when it is older than the gateway needs."""
    need = ".".join(map(str, MINIMUM_VERSION))
    try:
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10,
                             check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NginxTooOld(f"cannot run {binary}: {exc}; the gateway needs nginx {need} or "
                          "newer") from None
    said = (out.stderr + out.stdout).strip()
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", said)
    if m is None:
        raise NginxTooOld(f"{binary} -v said {said[:120]!r}, not a version; the gateway needs "
                          f"nginx {need} or newer")
    found = (int(m[1]), int(m[2]), int(m[3]))
    if found < MINIMUM_VERSION:
        where = shutil.which(binary) or binary
        raise NginxTooOld(f"{where} is nginx {'.'.join(map(str, found))}; the gateway needs "
                          f"nginx {need} or newer ({NEEDED_FOR}); scripts/setup.sh installs "
                          "one, the image has one")
    return found
