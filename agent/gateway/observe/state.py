"""What the gateway shows of itself: the reconciler's state (written by it only, read by the
admin server and the dashboard) and the words of its status lines."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from agent.core.routes import RouteTable
from agent.gateway.model import Endpoints, FilesPlan, Snapshot, TlsPlan

HISTORY = 20  # status lines kept for /status: the last reloads, refusals and failures
_QUIET = ("no change", "change pending", "reload refused earlier")  # cycles that only wait
_NOTES = ("; routes file refused: ", "; tcp port refused: ",
          "; certificate refused for ")  # what cycle() adds


def _notes(status: str) -> str:
    """What cycle() added to the outcome: '; routes file refused: ...', or ''."""
    found = [i for i in (status.find(n) for n in _NOTES) if i >= 0]
    return status[min(found):] if found else ""


@dataclass
class State:
    """What the admin server shows. Written only by the reconciler."""

    routes: RouteTable = field(default_factory=lambda: RouteTable(()))
    routes_error: str | None = None
    # tcp routes' ports nginx could not listen on (port: nginx's words); those routes wait
    tcp_refused: dict[int, str] = field(default_factory=dict)
    snapshot: Snapshot = field(default_factory=dict)
    status: str = "starting"
    last_error: str | None = None
    heartbeat: float = 0.0  # monotonic time of the last finished cycle
    last_discovery_ok: float = 0.0  # monotonic time the nameserver last answered a lookup
    last_reload_at: float | None = None  # wall clock
    last_reload_result: str | None = None
    last_reload_detail: str | None = None
    applied_generation: str | None = None
    serving_saved: bool = False  # started from --state-dir endpoints while DNS failed
    # at start: the names nginx has not looked up yet (of the agent's resolver), and until when
    # (monotonic) readiness waits for them
    first_lookups: set[str] = field(default_factory=set)
    first_lookups_until: float = 0.0
    # no routes file of its own, and no document from the controller yet (nor a saved one)
    routes_pending: str | None = None
    draining: bool = False  # told to stop: readiness off while traffic moves away (drain.py)
    tls: TlsPlan | None = None  # certificates per host of the routes with `tls` (gateway/tls.py)
    files: FilesPlan | None = None  # the files routes name: basic_auth, error_page
    started: float = field(default_factory=time.monotonic)
    # (wall clock, status line) of the last HISTORY cycles whose status changed, reloaded or
    # followed a change of tasks
    history: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=HISTORY))

    def record(self, status: str, at: float | None = None) -> None:
        """The cycle's status line. The history keeps what happened (reloads, refusals,
        failures), once each: not the quiet lines of the cycles in between, unless what they
        add ("; routes file refused: ...") is new."""
        self.status = status
        last = self.history[-1][1] if self.history else ""
        if status.startswith(_QUIET):
            if _notes(status) == _notes(last):
                return
        elif status == last and not status.startswith(("reloaded", "followed")):
            return
        self.history.append((time.time() if at is None else at, status))


def describe_change(old: Snapshot, new: Snapshot, old_routes: RouteTable,
                    new_routes: RouteTable) -> str:
    """'+2 endpoints for tasks.managerhttp, -1 for tasks.dmzhttp; routes 3 -> 4'."""
    parts = []
    for name in sorted(set(old) | set(new)):
        before = set(old.get(name, Endpoints()).addresses)
        after = set(new.get(name, Endpoints()).addresses)
        added, removed = len(after - before), len(before - after)
        if added or removed:
            change = " ".join(s for s in (f"+{added}" if added else "",
                                          f"-{removed}" if removed else "") if s)
            parts.append(f"{change} endpoints for {name}")
    if old_routes.routes != new_routes.routes:
        parts.append(f"routes {len(old_routes.routes)} -> {len(new_routes.routes)}")
    if old_routes.tcp != new_routes.tcp:
        parts.append(f"tcp routes {len(old_routes.tcp)} -> {len(new_routes.tcp)}")
    return ", ".join(parts) or "configuration changed"
