"""The routes file as the controller reads it (--routes): served to the gateways that have no
routes file of their own, its names refused to labels, and with ACME its `tls: acme` routes get
certificates.

Read again whenever it changes (a new swarm config, or a bind-mounted file edited in place:
controller/sync.py looks every FILE_POLL seconds). A file that cannot be used keeps its last good
routes served, and its error (every problem with its place) is reported in the controller's
/status and, through the routes document, in the gateways'.
"""

from __future__ import annotations

import logging
from pathlib import Path

from agent.core.files import FileStamp, stamp
from agent.core.routes import RoutesError, RouteTable, load_routes

log = logging.getLogger("agent.controller")

FILE_POLL = 1.0  # seconds between two looks at the file's stamp (a stat, no read)


class RoutesFile:
    """The last good routes of the file, and why the file is not used now (None: it is)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.table = RouteTable(())
        self.error: str | None = None
        self._stamp: FileStamp | None = None
        self._read = False
        self._good = False  # read once without error

    def refresh(self) -> bool:
        """Read the file again when its stamp changed; True when what it serves or its error
        changed."""
        current = stamp(self.path)
        if self._read and current == self._stamp:
            return False
        self._read, self._stamp = True, current
        before = (self.table, self.error)
        try:
            self.table = load_routes(self.path, self.table)
            self.error = None
            self._good = True
        except RoutesError as exc:
            kept = len(self.table.routes) + len(self.table.tcp)
            self.error = f"{exc}; " + (f"its last good routes ({kept}) are served" if self._good
                                       else "none of its routes are served")
            log.error("routes_file_refused file=%s kept=%d error=%r", self.path, kept, str(exc))
        if (self.table, self.error) != before:
            if self.error is None:
                log.info("routes_file_loaded file=%s routes=%d tcp=%d", self.path,
                         len(self.table.routes), len(self.table.tcp))
            return True
        return False

    def __call__(self) -> RouteTable:
        self.refresh()
        return self.table
