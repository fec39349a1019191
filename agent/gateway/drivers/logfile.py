"""Reads the access-log file nginx writes for the per-route metrics (agent/gateway/traffic.py).

nginx buffers the lines (`buffer=64k flush=1s`) and appends them to one file; `poll()`, every
POLL_INTERVAL, reads what was appended since the last poll, counts the distinct lines (most
repeat) and feeds each one with its count. The per-request work stays in nginx, where it is a
buffered write; the agent's work is per distinct line.

Rotation keeps the file small: once it is past `rotate_size`, it is renamed to FILE.1 and
nginx's master is asked to reopen its logs (SIGUSR1); the workers write what they buffered to
the renamed file, then open a new FILE. The renamed file is read on until no nginx process
holds it open any more (checked before the read, so that the read after the check gets all it
will ever hold), then read to its end and deleted. A file that disappears (deleted by hand) is
handled the same way: nginx is asked to reopen, and the deleted file, still open here, is read
until nginx lets go of it. A reload needs nothing: old and new workers append to the same file
and the old ones write their buffers before they exit.

An nginx that died takes the agent with it (daemon.py); at start `reset()` deletes what the
previous run left, so that counters start at 0 with the process (a reset Prometheus handles)
and no request is counted twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from agent.gateway.observe.traffic import Traffic

log = logging.getLogger("agent.gateway.logfile")

FILE_NAME = "gateway-metrics.log"
POLL_INTERVAL = 1.0  # seconds; nginx's flush=1s is the other half of the delay
ROTATE_SIZE = 16 * 1024 * 1024  # bytes: the file's size (and disk or tmpfs use) stays near it
_CHUNK = 4 * 1024 * 1024  # bytes read at once: bounds the agent's memory whatever nginx wrote
# polls an old file may stay held before nginx is asked again to reopen its logs: a worker
# started by a reload at the moment of the first SIGUSR1 can miss it (seen in the integration
# test); asking again is harmless (a worker finishing its requests keeps the file anyway)
_ASK_AGAIN = 5


def log_path(nginx_prefix: Path | None, nginx_conf_dir: Path) -> Path:
    """Where nginx writes the lines: in the agent's nginx prefix, or beside the state the
    agent keeps next to the system's configuration (like gateway-tls/)."""
    if nginx_prefix is not None:
        return nginx_prefix.absolute() / "logs" / FILE_NAME
    return nginx_conf_dir / FILE_NAME


class _Open:
    """One open log file and the incomplete line at its end."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("rb")
        stat = os.fstat(self.file.fileno())
        self.id = (stat.st_dev, stat.st_ino)
        self.path: Path | None = path  # None once the name no longer points to it
        self.rest = b""
        self.held_polls = 0

    def read(self, count: Callable[[bytes], None]) -> None:
        while chunk := self.file.read(_CHUNK):
            data = self.rest + chunk
            cut = data.rfind(b"\n") + 1
            self.rest = data[cut:]
            if cut:
                count(data[:cut])

    @property
    def position(self) -> int:
        return self.file.tell()


def _holds(pids: Iterable[int], file_id: tuple[int, int]) -> bool:
    """Whether any of these processes has the file open (from /proc/PID/fd)."""
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # exited
        for fd in fds:
            try:
                stat = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (stat.st_dev, stat.st_ino) == file_id:
                return True
    return False


class LogFile:
    """Follows FILE across rotations, reloads and deletions; see the module's docstring.

    `nginx_pids()`: nginx's master and workers (empty when it does not run); `reopen()`: ask
    nginx's master to reopen its logs (SIGUSR1).
    """

    def __init__(self, path: Path, traffic: Traffic, *, nginx_pids: Callable[[], Iterable[int]],
                 reopen: Callable[[], None], rotate_size: int = ROTATE_SIZE) -> None:
        self.path = path
        self.rotated = path.with_name(path.name + ".1")
        self.traffic = traffic
        self.nginx_pids = nginx_pids
        self.reopen = reopen
        self.rotate_size = rotate_size
        self.rotations = 0
        self._current: _Open | None = None
        self._old: _Open | None = None  # renamed or deleted, read until nginx lets go of it

    def reset(self) -> None:
        """Before nginx starts: delete what a previous run left (already counted, or lost
        with the process that counted it)."""
        for path in (self.path, self.rotated):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                log.info("access_log_file_removed path=%s", path)

    def close(self) -> None:
        for f in (self._current, self._old):
            if f is not None:
                f.file.close()
        self._current = self._old = None

    def _count(self, data: bytes) -> None:
        feed = self.traffic.feed
        for line, n in Counter(data.split(b"\n")).items():
            if line:
                feed(line, n)

    def poll(self) -> None:
        """Count what nginx appended since the last poll; rotate when the file is too big."""
        self.traffic.sync()
        if self._old is not None:
            self._drain_old()
        if self._current is not None and self._old is None and not self._same_file():
            self._current.read(self._count)  # what it holds so far; the rest comes later
            self._current.path = None  # the name is another file's now, or nobody's
            self._old, self._current = self._current, None
            if not self.path.exists():  # deleted: nginx writes into nothing anyone can read
                log.warning("access_log_file_gone path=%s action=reopen", self.path)
                self._reopen()
        if self._current is None:
            try:
                self._current = _Open(self.path)
            except FileNotFoundError:
                return  # nginx creates it when it starts or reopens
        self._current.read(self._count)
        if self.rotate_size and self._old is None and self._current.position >= self.rotate_size:
            self._rotate()

    def _same_file(self) -> bool:
        assert self._current is not None
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (stat.st_dev, stat.st_ino) == self._current.id

    def _rotate(self) -> None:
        assert self._current is not None
        os.replace(self.path, self.rotated)
        self._current.path = self.rotated
        self._old, self._current = self._current, None
        self.rotations += 1
        self._reopen()

    def _reopen(self) -> None:
        try:
            self.reopen()
        except Exception as exc:  # nginx gone: nothing holds the file, the next poll ends it
            log.warning("access_log_reopen_failed error=%r", str(exc))

    def _drain_old(self) -> None:
        old = self._old
        assert old is not None
        held = _holds(self.nginx_pids(), old.id)
        old.read(self._count)  # after the check: everything it will ever hold when not held
        if held:
            old.held_polls += 1
            if old.held_polls % _ASK_AGAIN == 0:  # counts stay exact; the file grows
                log.warning("access_log_old_file_held polls=%d action=reopen hint=%r",
                            old.held_polls, "nginx's workers must be able to open the file "
                            "by its path (its folders searchable by their user)")
                self._reopen()
            return
        old.file.close()
        if old.rest:  # a line nginx never finished (it was killed while writing)
            self.traffic.results["malformed"] += 1
        if old.path is not None:
            with contextlib.suppress(FileNotFoundError):
                old.path.unlink()
        self._old = None
