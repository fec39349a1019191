"""How many connections nginx may hold, sized from what the container gives the gateway.

- Open files: the agent raises its own soft RLIMIT_NOFILE to the hard limit at start (a
  container often gets soft 1024, hard 524288), and nginx's workers get that many
  (`worker_rlimit_nofile`), or `--open-files`.
- `worker_connections`: the open files less a reserve for what is not a connection (log files,
  error pages and password files read per request, temporary files of buffered bodies), so that
  nginx runs out of connections before it runs out of files. Out of connections, a worker
  accepts a new client and closes it at once: the client sees a refused request, never a wait.
  Out of files, accept() fails and nginx stops accepting for half a second while clients wait
  in the queue (the hang this avoids).
- The `listen` backlog: the kernel's net.core.somaxconn (the most a listen queue may hold; 4096
  on Linux 5.4 and newer), where nginx's default is 511: a burst of new clients waits in the
  queue instead of being dropped.

`auto` stops at AUTO_MAX files: nginx allocates each worker's connection table whole at start
(about 450 bytes a connection), and a container allowed a billion files must not cost gigabytes
before the first client. `--open-files` goes higher.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.core.serve import raise_open_files

log = logging.getLogger("agent.gateway.capacity")

SOMAXCONN = Path("/proc/sys/net/core/somaxconn")
NGINX_BACKLOG = 511  # nginx's own default, when the kernel's limit cannot be read
AUTO_MAX = 65536  # open files per nginx worker without --open-files
LOW = 16384  # fewer open files than this: a warning at start (docs/operations.md)
# files a worker keeps for what is not a connection: an eighth, at least 64, at most 4096
RESERVE_SHARE, RESERVE_MIN, RESERVE_MAX = 8, 64, 4096
MIN_OPEN_FILES, MAX_OPEN_FILES = 256, 16_777_216
INFINITY = resource.RLIM_INFINITY


@dataclass(frozen=True)
class Capacity:
    """What the agent chose, for nginx.conf and /status."""

    open_files: int  # worker_rlimit_nofile
    worker_connections: int
    backlog: int  # of the `listen` lines
    limit_before: tuple[int, int]  # the (soft, hard) RLIMIT_NOFILE the agent was given
    low: bool  # fewer open files than LOW: a large installation needs more

    def status(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["limit_before"] = {"soft": self.limit_before[0], "hard": self.limit_before[1]}
        return doc


def listen_backlog(path: Path = SOMAXCONN) -> int:
    """The kernel's limit of a listen queue (net.core.somaxconn of this network namespace),
    which nginx should ask for instead of its default 511."""
    try:
        value = int(path.read_text().strip())
    except (OSError, ValueError):
        return NGINX_BACKLOG
    return value if value > 0 else NGINX_BACKLOG


def worker_connections(open_files: int) -> int:
    reserve = min(RESERVE_MAX, max(RESERVE_MIN, open_files // RESERVE_SHARE))
    return open_files - reserve


def _above_soft(wanted: int, soft: int, hard: int) -> int:
    """Raise this process's limit to `wanted` files (nginx, its child, inherits it): above the
    hard limit only a process with CAP_SYS_RESOURCE may go. The open files nginx may have."""
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)))
    except (ValueError, OSError) as exc:
        log.warning("open_files_refused wanted=%d hard=%d error=%r effect=%r", wanted, hard,
                    str(exc), f"nginx gets {soft}: give the container `ulimits: nofile` "
                    "(docs/operations.md)")
        return soft
    return wanted


def choose(setting: str = "auto", somaxconn: Path = SOMAXCONN) -> Capacity:
    """Raise the soft limit of open files to the hard one (as the admin server does,
    core/serve.py) and size nginx from it, at most AUTO_MAX files; or from `setting`
    (--open-files). Logs what was chosen, and a warning when it is low."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = raise_open_files()
    if setting == "auto":
        files = AUTO_MAX if soft == INFINITY else min(soft, AUTO_MAX)
    elif soft == INFINITY or int(setting) <= soft:
        files = int(setting)  # worker_rlimit_nofile gives nginx's workers that many
    else:
        files = _above_soft(int(setting), soft, before[1])
    chosen = Capacity(open_files=files, worker_connections=worker_connections(files),
                      backlog=listen_backlog(somaxconn), limit_before=before,
                      low=files < LOW)
    log.info("capacity open_files=%d worker_connections=%d backlog=%d soft_before=%d "
             "hard=%d", chosen.open_files, chosen.worker_connections, chosen.backlog, *before)
    if chosen.low:
        log.warning("open_files_low open_files=%d worker_connections=%d effect=%r", files,
                    chosen.worker_connections,
                    f"each nginx worker holds at most {chosen.worker_connections} connections "
                    "(a proxied request or WebSocket takes two); give the container `ulimits: "
                    f"nofile` of at least {LOW} (docs/operations.md)")
    return chosen


def open_files(value: str) -> str:
    """--open-files: auto, or a number of files per nginx worker."""
    if value != "auto" and not (value.isdigit() and MIN_OPEN_FILES <= int(value) <= MAX_OPEN_FILES):
        raise ValueError(f"{value!r} is not 'auto' or a number of files from {MIN_OPEN_FILES} "
                         f"to {MAX_OPEN_FILES}")
    return value
