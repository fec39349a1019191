"""The routes the gateway serves: its routes file (watched, read again when it changes or could
not be read), merged with the controller's routes when there is one (drivers/source.py), then
its zone's. An invalid file at start is fatal; on a live change a bad file is refused and the
routes in use keep serving."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from agent.core.aio import Backoff
from agent.core.files import FileStamp, stamp
from agent.core.routes import RoutesError, RoutesUnreadable, RouteTable
from agent.gateway.drivers.ports import load_for_gateway
from agent.gateway.drivers.source import ControllerRoutes
from agent.gateway.observe.metrics import Metrics
from agent.gateway.settings import GatewaySettings

log = logging.getLogger("agent.gateway.reconciler")

RETRY_UNREADABLE_MAX = 30.0  # seconds between reads of a routes file that cannot be read


class RoutesInput:
    def __init__(self, settings: GatewaySettings, metrics: Metrics,
                 sources: ControllerRoutes | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.metrics = metrics
        self.sources = sources  # routes from the controller, merged with the file's
        self.clock = clock
        self.table = RouteTable(())  # what to serve: merged, this gateway's zone
        self.error: str | None = None  # why the routes file's last version was refused
        self.pending: str | None = None  # why the gateway has no routes yet
        self._stamp: FileStamp | None = None
        # the routes file's; None: the gateway has none (absent at start), and serves the
        # controller's copy of it (drivers/source.py)
        self._file: RouteTable | None = RouteTable(())
        # a routes file that could not be read is tried again (its stamp does not tell)
        self._retry = Backoff(settings.poll_interval, RETRY_UNREADABLE_MAX)
        self._retry_at: float | None = None

    @property
    def url(self) -> str | None:
        """The controller's (where ACME challenges go), or None."""
        return self.sources.url if self.sources is not None else None

    def load_initial(self) -> None:
        """At start: an invalid routes file is fatal (RoutesError with every problem)."""
        path = self.settings.routes
        if path is not None:
            self._stamp = stamp(path)
            if self._stamp is None and self.sources is not None:
                self._file = None
                log.info("routes_file_absent file=%s effect=%r", path, "the controller's copy "
                         "of the routes file is served, and followed without a restart")
            else:
                self._file = load_for_gateway(path, self.settings)
                self.metrics.routes_loads.labels("success").inc()
        elif self.sources is not None:
            self._file = None
        self._use()

    def _use(self) -> None:
        """The file's routes, merged with the controller's when there is one; then the zone."""
        if self.sources is not None:
            table = self.sources.merge(self._file)
            self.pending = None if self._file is not None or \
                self.sources.received is not None else (
                    f"no routes yet: no routes file here, and the controller "
                    f"({self.sources.url}) has not answered (nor left a saved copy)")
        else:
            assert self._file is not None, "a gateway without a controller has a file"
            table = self._file
        table = table.for_zone(self.settings.zone)
        if self.sources is not None and table != self.table:
            log.info("routes_merged routes=%d", len(table.routes))
        self.table = table

    def changed(self) -> FileStamp | None:
        """The routes file's stamp when it is not the one last read, else None (a stat,
        nothing read)."""
        path = self.settings.routes
        if path is None:
            return None
        current = stamp(path)
        return current if current is not None and current != self._stamp else None

    def refresh(self) -> None:
        """On a live change, a bad file is refused and the routes in use keep serving."""
        if self.sources is not None:  # the controller's routes may have changed
            self._use()
        path = self.settings.routes
        if path is None:
            return
        current = stamp(path)
        retry = self._retry_at
        if current == self._stamp and (retry is None or self.clock() < retry):
            return
        self._stamp = current
        try:
            table = load_for_gateway(path, self.settings, self._file)
        except RoutesError as exc:
            # not read at all (no descriptor left, a moment without the file): read it again
            # then, not only when it changes
            unreadable = isinstance(exc, RoutesUnreadable)
            delay = self._retry.failed() if unreadable else 0.0
            self._retry_at = self.clock() + delay if unreadable else None
            self.error = str(exc)
            self.metrics.routes_loads.labels("invalid").inc()
            log.error("routes_refused file=%s errors=%d keeping=%d detail=%r%s", path,
                      len(exc.errors), len(self.table.routes), str(exc),
                      f" retry_in={delay:.0f}s" if unreadable else "")
            return
        self._retry.reset()
        self._retry_at = None
        self.error = None
        self.metrics.routes_loads.labels("success").inc()
        if table != self._file:
            log.info("routes_loaded file=%s routes=%d", path,
                     len(table.for_zone(self.settings.zone).routes))
        self._file = table
        self._use()
