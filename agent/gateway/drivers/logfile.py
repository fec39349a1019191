"""Reads the files nginx appends its access-log lines to: the per-route metrics' lines
(observe/traffic.py counts them) and, with `--access-log stdout`, the JSON access log, which the
agent copies to its standard output (Relay).

nginx buffers the lines (`buffer=64k flush=1s`) and appends them to a file; `poll()`, every
POLL_INTERVAL, reads what was appended since the last poll and hands the whole lines to its
Sink. The per-request work stays in nginx, where it is a buffered write: the metrics' Sink works
per distinct line (most repeat), the JSON log's copies bytes.

Why the JSON log does not go from nginx to the container's stdout: that is a pipe, and a pipe
whose reader stalls (the container runtime, a log shipper) blocks the workers that write into
it: nginx would stop answering. Besides, only writes of up to 4 KiB (PIPE_BUF) are sure to keep
two workers' lines apart there. Through the file, nginx writes 64 KiB at a time and never waits
on the reader; the agent is the pipe's one writer, and copies from a thread of its own
(docs/logs.md "Where the lines go").

Rotation keeps each file small: once it is past `rotate_size`, it is renamed to FILE.1 and
nginx's master is asked to reopen its logs (SIGUSR1); the workers write what they buffered to
the renamed file, then open a new FILE. The renamed file is read on until no nginx process
holds it open any more (checked before the read, so that the read after the check gets all it
will ever hold), then read to its end and deleted. A file that disappears (deleted by hand) is
handled the same way: nginx is asked to reopen, and the deleted file, still open here, is read
until nginx lets go of it. A reload needs nothing: old and new workers append to the same file
and the old ones write their buffers before they exit.

An nginx that died takes the agent with it (daemon.py); at start `reset()` deletes what the
previous run left, so that counters start at 0 with the process (a reset Prometheus handles)
and no request is counted (or logged) twice.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

log = logging.getLogger("agent.gateway.logfile")

FILE_NAME = "gateway-metrics.log"
JSON_FILE_NAME = "gateway-access.log"  # the JSON access log on its way to stdout
POLL_INTERVAL = 1.0  # seconds; nginx's flush=1s is the other half of the delay
ROTATE_SIZE = 16 * 1024 * 1024  # bytes: the file's size (and disk or tmpfs use) stays near it
_CHUNK = 4 * 1024 * 1024  # bytes read at once: bounds the agent's memory whatever nginx wrote
_TAIL = 64 * 1024  # bytes of a file's end read to find its last whole line (Relay)
_NO_SENDFILE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}  # the output cannot take it
_SLICE = 64 * 1024  # bytes copied at once (Relay): a pipe's size, so no copy waits long
# polls an old file may stay held before nginx is asked again to reopen its logs: a worker
# started by a reload at the moment of the first SIGUSR1 can miss it (seen in the integration
# test); asking again is harmless (a worker finishing its requests keeps the file anyway)
_ASK_AGAIN = 5


def log_path(nginx_prefix: Path | None, nginx_conf_dir: Path, name: str = FILE_NAME) -> Path:
    """Where nginx writes the lines: in the agent's nginx prefix, or beside the state the
    agent keeps next to the system's configuration (like gateway-tls/)."""
    if nginx_prefix is not None:
        return nginx_prefix.absolute() / "logs" / name
    return nginx_conf_dir / name


class Sink(Protocol):
    """What becomes of the lines of one file, read in Python (Relay copies them unread)."""

    def sync(self) -> None:
        """Before each poll."""

    def take(self, lines: bytes) -> None:
        """Whole lines, each ending in a newline."""

    def unfinished(self) -> None:
        """A file ended in a line nginx never finished (it was killed while writing)."""


class Relay:
    """Copies whole lines from the file to a file descriptor: the agent's standard output,
    whose only writer it is (the agent's own log goes to stderr). To a pipe (a container's
    output) the kernel copies them (sendfile) and they never pass through Python; an output
    sendfile refuses (a file opened for appending) gets them read and written.

    The copy never waits long: a poll copies what the output takes, in slices, and leaves the
    rest for the next poll once the output has taken nothing for `wait` seconds. An output that
    falls more than `backlog` bytes behind loses the lines in between (the line it holds half
    of is finished first), so the file still rotates and memory stays bounded; an output that
    refuses a write (closed, no reader) loses them all from then on. `counted(result, bytes)`:
    written, dropped. `deadline` (a monotonic time), once set, ends every copy at that time:
    the agent's last copy as it stops."""

    ordered = True  # a rotated file's lines go out before the new file's: a copy keeps order

    def __init__(self, fd: int, counted: Callable[[str, int], None], *,
                 backlog: int = 2 * ROTATE_SIZE, wait: float = 1.0) -> None:
        self.fd = fd
        self.counted = counted
        self.backlog = backlog
        self.wait = wait
        self.failed = False
        self.sendfile = True
        self.deadline: float | None = None
        self.owed = b""  # the end of a line the output holds half of, when lines were dropped

    def sync(self) -> None:
        pass

    def read(self, f: _Open, behind: int = 0) -> None:
        """Copy the whole lines `f` gained since the last read (and what is owed)."""
        end = f.whole_lines_end()
        if end > f.position or self.owed:
            f.file.seek(self.copy(f.file.fileno(), f.position, end, behind))

    def done(self, f: _Open) -> bool:
        """Whether the output took every whole line of `f`."""
        return f.position >= f.whole_lines_end()

    def end(self, f: _Open) -> None:
        """`f` ends for good: a line nginx never finished is dropped, and counted."""
        unfinished = os.fstat(f.file.fileno()).st_size - f.position
        if unfinished > 0:
            self.counted("dropped", unfinished)

    def copy(self, source: int, start: int, end: int, behind: int = 0) -> int:
        """Copy bytes [start, end) of the file open as `source`, whole lines; returns how far
        the file is done with (copied, or dropped). `behind`: bytes of another file still to
        copy after these (the current file while a rotated one is copied)."""
        if self.failed:
            self.counted("dropped", end - start)
            return end
        if end - start + behind > self.backlog:
            return self._skip(source, start, end)
        if self.owed and not self._pay():
            return start
        offset = self._copy(source, start, end)
        self.counted("written", offset - start)
        if self.failed:
            self.counted("dropped", end - offset)
            return end
        return offset

    def _skip(self, source: int, start: int, end: int) -> int:
        """Drop [start, end), but for the end of the line the output holds half of: kept in
        `owed`, written before anything else, so that no line is cut."""
        stop = _line_end(source, start, end)
        self.owed += os.pread(source, stop - start, start)
        self.counted("dropped", end - stop)
        log.warning("access_log_output_behind dropped_bytes=%d effect=%r", end - stop,
                    "the output took too little for too long: lines in between lost")
        return end

    def _pay(self) -> bool:
        """Write what is owed; True once it is all out."""
        while self.owed and not self.failed and self._writable():
            try:
                done = os.write(self.fd, self.owed)
            except BlockingIOError:
                continue
            except OSError as exc:
                self._failed(exc)
                self.counted("dropped", len(self.owed))
                self.owed = b""
                break
            self.counted("written", done)
            self.owed = self.owed[done:]
        return not self.owed

    def _writable(self) -> bool:
        """Whether the output takes more within `wait` (and before the deadline)."""
        wait = self.wait
        if self.deadline is not None:
            wait = min(wait, self.deadline - time.monotonic())
            if wait <= 0:
                return False
        return bool(select.select([], [self.fd], [], wait)[1])

    def _failed(self, exc: OSError) -> None:
        self.failed = True
        log.error("access_log_output_failed error=%r effect=%r", str(exc),
                  "the JSON access log's lines are dropped from now on")

    def _copy(self, source: int, start: int, stop: int) -> int:
        offset = start
        while offset < stop and self._writable():  # else the next poll goes on
            try:
                sent = self._send(source, offset, min(stop - offset, _SLICE))
            except BlockingIOError:  # select said it would take more: it will
                continue
            except OSError as exc:
                if self.sendfile and exc.errno in _NO_SENDFILE:
                    self.sendfile = False
                    continue
                self._failed(exc)
                break
            if sent == 0:  # the file is shorter than it was (truncated by hand)
                break
            offset += sent
        return offset

    def _send(self, source: int, offset: int, count: int) -> int:
        if self.sendfile:
            return os.sendfile(self.fd, source, offset, count)
        view = memoryview(os.pread(source, count, offset))
        done = 0
        while done < len(view):
            try:
                done += os.write(self.fd, view[done:])
            except BlockingIOError:  # what was written counts; the rest comes after a wait
                break
        return done


def _line_end(source: int, start: int, end: int) -> int:
    """Where the line that the bytes before `start` leave unfinished ends (`start` when they
    end in a newline); at most `end`, which ends a line."""
    if start == 0 or os.pread(source, 1, start - 1) == b"\n":
        return start
    found = os.pread(source, min(end - start, _CHUNK), start).find(b"\n")
    return end if found < 0 else start + found + 1


class _Open:
    """One open log file and the incomplete line at its end."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("rb")
        stat = os.fstat(self.file.fileno())
        self.id = (stat.st_dev, stat.st_ino)
        self.path: Path | None = path  # None once the name no longer points to it
        self.rest = b""
        self.held_polls = 0

    def whole_lines_end(self) -> int:
        """Where the file's last whole line ends (a write nginx is making may be half there):
        found in its tail, without reading the rest."""
        fd, start = self.file.fileno(), self.position
        size = os.fstat(fd).st_size
        window = max(start, size - _TAIL)
        while window < size:
            cut = os.pread(fd, size - window, window).rfind(b"\n")
            if cut >= 0:
                return window + cut + 1
            if window == start:
                break
            window = max(start, window - _TAIL)
        return start

    @property
    def position(self) -> int:
        return self.file.tell()


class _Lines:
    """How a Sink gets the lines of a file: read in Python, whole lines handed on and the
    incomplete end kept for the next read (Relay is the other way: copied unread)."""

    ordered = False  # counts do not depend on the order in which the files are read

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def sync(self) -> None:
        self.sink.sync()

    def read(self, f: _Open, behind: int = 0) -> None:
        while chunk := f.file.read(_CHUNK):
            data = f.rest + chunk
            cut = data.rfind(b"\n") + 1
            f.rest = data[cut:]
            if cut:
                self.sink.take(data[:cut])

    def done(self, f: _Open) -> bool:
        return True  # what it has not read is an incomplete end, kept in `f.rest`

    def end(self, f: _Open) -> None:
        if f.rest:  # a line nginx never finished (it was killed while writing)
            self.sink.unfinished()


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

    def __init__(self, path: Path, sink: Sink | Relay, *, nginx_pids: Callable[[], Iterable[int]],
                 reopen: Callable[[], None], rotate_size: int = ROTATE_SIZE) -> None:
        self.path = path
        self.rotated = path.with_name(path.name + ".1")
        self.sink = sink
        self._reader: Relay | _Lines = sink if isinstance(sink, Relay) else _Lines(sink)
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

    def poll(self) -> None:
        """Hand on what nginx appended since the last poll; rotate when the file is too big."""
        self._reader.sync()
        if self._old is not None:
            self._drain_old()
        if self._current is not None and self._old is None and not self._same_file():
            self._reader.read(self._current)  # what it holds so far; the rest comes later
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
        if self._reader.ordered and self._old is not None:
            return  # the rotated file's lines go first
        self._reader.read(self._current)
        if self.rotate_size and self._old is None and self._current.position >= self.rotate_size:
            self._rotate()

    def _unread_current(self) -> int:
        """Bytes of the current file not handed on yet."""
        try:
            if self._current is not None:
                return os.fstat(self._current.file.fileno()).st_size - self._current.position
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

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
        # after the check: everything it will ever hold when not held
        self._reader.read(old, behind=self._unread_current())
        if not held and not self._reader.done(old):
            return  # not all handed on yet (an output that took only part): the next poll
        if held:
            old.held_polls += 1
            if old.held_polls % _ASK_AGAIN == 0:  # counts stay exact; the file grows
                log.warning("access_log_old_file_held polls=%d action=reopen hint=%r",
                            old.held_polls, "nginx's workers must be able to open the file "
                            "by its path (its folders searchable by their user)")
                self._reopen()
            return
        self._reader.end(old)
        old.file.close()
        if old.path is not None:
            with contextlib.suppress(FileNotFoundError):
                old.path.unlink()
        self._old = None
