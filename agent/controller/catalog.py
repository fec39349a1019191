"""The catalog: the labelled services' routes merged with the routes file's, and the document
each zone is served (core/wire.py): the file's routes first (its http and tcp routes, for the
gateways that have no routes file of their own), then the labels'. Pure: no I/O."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from agent.controller.labels import LabelRoutes
from agent.core.merge import Merged, merge_sources
from agent.core.routes import RouteTable
from agent.core.wire import route_item, tcp_item


def _version(body: dict[str, Any]) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Catalog:
    """The labelled services' routes, and the document each zone is served. Pure."""

    def __init__(self, certificates: Callable[[str | None], list[dict[str, str]]] | None = None,
                 ) -> None:
        self.labels = LabelRoutes((), (), 0)
        self.merged: Merged = merge_sources(RouteTable(()), ())
        self.file = RouteTable(())  # the routes file's last good routes
        self.file_error: str | None = None  # why the routes file is not used now
        self.synced = False
        self.certificates = certificates  # ACME: the certificates of a zone's hosts
        self._documents: dict[str | None, dict[str, Any]] = {}

    def certificates_changed(self) -> bool:
        """The ACME certificates changed: True when a document served changed."""
        before = self.document(None) if self.synced else None
        self._documents = {}
        return self.synced and self.document(None) != before

    def update(self, labels: LabelRoutes, file: RouteTable | None = None,
               file_error: str | None = None) -> bool:
        """Take a new list; True when the routes or errors served changed. With the routes
        file's routes, a label route claiming one of its names is refused here too, and
        reported in this controller's /status as in the gateways'."""
        before = self.document(None) if self.synced else None
        self.labels = labels
        self.file = file or RouteTable(())
        self.file_error = file_error
        # two services claiming one host: the oldest keeps it; the file's names are the file's
        self.merged = merge_sources(file or RouteTable(()), labels.routes)
        self.synced = True
        self._documents = {}
        return self.document(None) != before

    @property
    def errors(self) -> list[tuple[str | None, str]]:
        """(zone, error): the routes file's (every zone's: it may name any), the labels', the
        conflicts'."""
        conflicts = [(route.zone, text) for route, text in zip(self.merged.refused,
                                                               self.merged.errors, strict=True)]
        file = [(None, f"routes file {self.file_error}")] if self.file_error else []
        return file + list(self.labels.errors) + conflicts

    def document(self, zone: str | None) -> dict[str, Any]:
        if zone not in self._documents:
            routes = [route_item(s, r) for s, r in zip(self.merged.sources,
                                                       self.merged.table.routes, strict=True)
                      if zone is None or r.zone == zone]
            tcp = [tcp_item(r) for r in self.file.tcp if zone is None or r.zone == zone]
            errors = [text for z, text in self.errors if zone is None or z == zone]
            if zone is not None and self.file_error:  # its words may name other zones' hosts
                errors.insert(0, "routes file refused by the controller (its /status says "
                              "why): the file's last good routes, if any, are served")
            body: dict[str, Any] = {"routes": routes, "tcp": tcp, "errors": errors}
            if self.certificates is not None:
                body["certificates"] = self.certificates(zone)
            self._documents[zone] = {"version": _version(body), **body}
        return self._documents[zone]
