"""The admin HTTP servers (the gateway's admin port, the controller's port), kept answerable
whatever connections they are sent.

aiohttp alone keeps a connection that never completes its request headers open for about an
hour, and accepts until the process runs out of open files: about a thousand idle connections
(a container's usual limit of 1024 files) then stop /readyz and /healthz from answering
(keepalived moves the VIP, swarm restarts the gateway), keep the agent from opening the files a
reload needs, and have asyncio log a traceback for every refused accept. Here:

- a connection has HEADER_TIMEOUT seconds to complete its first request's headers and
  IDLE_TIMEOUT seconds between requests, then it is closed (a request being answered, a
  controller's long-poll, is never timed out here);
- at most `connection_limit()` connections at once: the process's open-files limit less
  RESERVED_FILES for its own work (nginx -t, temporary files, DNS, the access log), at most
  MAX_CONNECTIONS. A connection beyond that closes the one idle the longest (an idle
  connection costs nothing to lose: its client opens another), so that a health check always
  gets in; only when every connection is in a request is the new one closed;
- the soft open-files limit is raised to the hard one at start;
- what was closed is logged once a minute at most (`admin_connections_limited`), and so are
  accept errors (asyncio's own would be one traceback per refused accept).

Everything is public API: the server is `web.Server` (aiohttp's protocol factory) behind a
protocol of ours passed to `loop.create_server`, and a middleware that tells a connection in a
request from an idle one (`request.transport`).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger("agent.serve")

HEADER_TIMEOUT = 10.0  # from connecting to the first request's headers
IDLE_TIMEOUT = 60.0  # between requests on a kept-alive connection
MAX_CONNECTIONS = 1024
# asyncio accepts up to BACKLOG connections per turn of the loop, and a connection the guard
# closes frees its file a few turns later (accept, transport, connection_made, close): in a
# flood the files in use overshoot the limit by about 3 * BACKLOG. The reserve covers that
# and the program's own work (about 30 files).
BACKLOG = 64
RESERVED_FILES = 4 * BACKLOG
MIN_CONNECTIONS = 16
REPORT_INTERVAL = 60.0  # seconds between two reports of closed connections or accept errors


def raise_open_files() -> int:
    """Raise the soft limit of open files to the hard one; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # infinity refused by the kernel: keep soft
            log.warning("open_files_not_raised soft=%d hard=%d error=%r", soft, hard, str(exc))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft


def connection_limit(open_files: int) -> int:
    """How many connections the admin server holds at once under `open_files`."""
    if open_files == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, open_files - RESERVED_FILES))


class _Connection(asyncio.Protocol):
    """One accepted connection: aiohttp's protocol inside, made only once admitted."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.requests = 0  # requests being answered now (pipelined ones count each)
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.guard.admit(self):
            self.inner = self.guard.factory()
            self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.forget(self)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def close(self, reason: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.guard.closed[reason] += 1
            self.transport.close()


class Guard:
    """Admits, times out and evicts the connections of one server (see the module's doc)."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], limit: int,
                 header_timeout: float = HEADER_TIMEOUT, idle_timeout: float = IDLE_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.factory = factory
        self.limit = limit
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.clock = clock
        self.open: dict[asyncio.BaseTransport, _Connection] = {}
        self.idle: OrderedDict[_Connection, None] = OrderedDict()  # the longest idle first
        self.closed = {"header_timeout": 0, "idle_timeout": 0, "evicted": 0, "refused": 0}
        self._reported = dict(self.closed)
        self._report_at = 0.0
        self.address = ""

    def protocol(self) -> asyncio.Protocol:
        return _Connection(self)

    def admit(self, conn: _Connection) -> bool:
        assert conn.transport is not None
        if len(self.open) >= self.limit:
            if self.idle:
                oldest = next(iter(self.idle))
                self.forget(oldest)
                oldest.close("evicted")
            else:  # every connection is in a request: this one waits for none of them
                self.closed["refused"] += 1
                conn.transport.abort()
                self.report()
                return False
        self.open[conn.transport] = conn
        self._idle(conn, self.header_timeout, "header_timeout")
        self.report()
        return True

    def _idle(self, conn: _Connection, timeout: float, reason: str) -> None:
        self.idle[conn] = None
        loop = asyncio.get_running_loop()
        conn.timer = loop.call_later(timeout, self._expire, conn, reason)

    def _expire(self, conn: _Connection, reason: str) -> None:
        if conn.requests == 0:
            self.forget(conn)
            conn.close(reason)
            self.report()

    def forget(self, conn: _Connection) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        self.idle.pop(conn, None)
        if conn.transport is not None:
            self.open.pop(conn.transport, None)

    def begin(self, transport: asyncio.BaseTransport | None) -> _Connection | None:
        conn = self.open.get(transport) if transport is not None else None
        if conn is not None:
            conn.requests += 1
            self.idle.pop(conn, None)
            if conn.timer is not None:
                conn.timer.cancel()
                conn.timer = None
        return conn

    def end(self, conn: _Connection) -> None:
        conn.requests -= 1
        if conn.requests == 0 and conn.transport in self.open:
            self._idle(conn, self.idle_timeout, "idle_timeout")

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        conn = self.begin(request.transport)
        try:
            response: web.StreamResponse = await handler(request)
            return response
        finally:
            if conn is not None:
                self.end(conn)

    def report(self) -> None:
        """Log what was closed since the last report, once per REPORT_INTERVAL at most."""
        now = self.clock()
        if now < self._report_at or self.closed == self._reported:
            return
        self._report_at = now + REPORT_INTERVAL
        since = {k: v - self._reported[k] for k, v in self.closed.items()}
        self._reported = dict(self.closed)
        log.warning("admin_connections_limited address=%s open=%d limit=%d header_timeout=%d "
                    "idle_timeout=%d evicted=%d refused=%d", self.address, len(self.open),
                    self.limit, since["header_timeout"], since["idle_timeout"],
                    since["evicted"], since["refused"])


class AcceptErrors:
    """A loop exception handler that logs accept failures (out of open files) once per
    REPORT_INTERVAL with their count, and passes every other exception on as before."""

    MESSAGE = "socket.accept() out of system resource"

    def __init__(self, previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]
                 | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.previous = previous
        self.clock = clock
        self.count = 0
        self._report_at = 0.0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != self.MESSAGE:
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.count += 1
        now = self.clock()
        if now >= self._report_at:
            self._report_at = now + REPORT_INTERVAL
            log.error("accept_failed count=%d error=%r", self.count,
                      str(context.get("exception")))
            self.count = 0


class AdminServer:
    """`app` served on host:port under the Guard's limits; `await start()`, `await close()`."""

    def __init__(self, app: web.Application, host: str, port: int, *,
                 limit: int | None = None, header_timeout: float = HEADER_TIMEOUT,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        """`limit`: connections at once (default: from the open-files limit, raised)."""
        self.open_files = raise_open_files()
        self.runner = web.AppRunner(app, access_log=None)
        self.guard = Guard(self._protocol, limit or connection_limit(self.open_files),
                           header_timeout=header_timeout, idle_timeout=idle_timeout)
        self.guard.address = f"{host}:{port}"
        app.middlewares.insert(0, self.guard.middleware)  # outermost: 401s count as requests
        self.host, self.port = host, port
        self.server: asyncio.Server | None = None

    def _protocol(self) -> asyncio.Protocol:
        server = self.runner.server  # aiohttp's protocol factory, made by setup()
        assert server is not None
        return server()

    async def start(self) -> None:
        """Listen; OSError when the address cannot be bound (after cleaning up)."""
        loop = asyncio.get_running_loop()
        if not isinstance(loop.get_exception_handler(), AcceptErrors):
            loop.set_exception_handler(AcceptErrors(loop.get_exception_handler()))
        await self.runner.setup()
        try:
            self.server = await loop.create_server(self.guard.protocol, self.host, self.port,
                                                   reuse_address=True, backlog=BACKLOG)
        except OSError:
            await self.runner.cleanup()
            raise
        log.debug("admin_limits address=%s open_files=%d connections=%d",
                  self.guard.address, self.open_files, self.guard.limit)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        await self.runner.cleanup()
        if self.server is not None:
            await self.server.wait_closed()
