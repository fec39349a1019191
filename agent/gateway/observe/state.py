"""What the gateway shows of itself: the reconciler's state (written by it only, read by the
admin server and the dashboard), and the words of its outcomes: made here, for the log and
/status, and never read back."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from agent.core.routes import RouteTable
from agent.gateway.model import Change, Endpoints, FilesPlan, Outcome, Snapshot, TlsPlan

HISTORY = 20  # outcomes kept for /status: the last reloads, refusals and failures
_NOTE_WORDS = {"routes_file": ("routes file refused: ", "; "),
               "tcp_port": ("tcp port refused: ", ", "),
               "certificate": ("certificate refused for ", ", "),
               "password_file": ("password file refused: ", "; "),
               "error_page": ("error page refused: ", "; "),
               "ca_file": ("CA file refused: ", "; ")}


def change_words(change: Change | None) -> str:
    """'+2 endpoints for tasks.managerhttp, -1 endpoints for tasks.dmzhttp, routes 3 -> 4'."""
    if change is None:
        return "configuration changed"
    parts = []
    for name, added, removed in change.endpoints:
        delta = " ".join(s for s in (f"+{added}" if added else "",
                                     f"-{removed}" if removed else "") if s)
        parts.append(f"{delta} endpoints for {name}")
    if change.routes is not None:
        parts.append(f"routes {change.routes[0]} -> {change.routes[1]}")
    if change.tcp is not None:
        parts.append(f"tcp routes {change.tcp[0]} -> {change.tcp[1]}")
    return ", ".join(parts) or "configuration changed"


def words(outcome: Outcome | None) -> str:
    """The status line of a cycle, for the log and /status: "no change", "reloaded: +2
    endpoints for tasks.web", "reload refused (...): nginx -t said ...", then what was refused
    alone ("; routes file refused: ..."). Made here only, and never read back."""
    if outcome is None:
        return "starting"
    kind = outcome.kind
    if kind == "started":
        line = "started" + (f" with saved endpoints for {', '.join(outcome.saved)}"
                            if outcome.saved else "")
    elif kind == "no_change":
        line = "no change"
    elif kind == "followed":
        line = f"followed without reload: {change_words(outcome.change)}"
    elif kind == "pending":
        line = f"change pending: applying in {outcome.wait:.1f}s"
    elif kind == "retry_pending":
        line = f"reload refused earlier; retrying in {outcome.wait:.1f}s"
    elif kind == "reloaded":
        line = f"reloaded: {change_words(outcome.change)}"
    elif kind == "refused":
        line = f"reload refused ({change_words(outcome.change)}): {outcome.error}"
    else:
        line = f"cycle failed: {outcome.error}"
    for note in outcome.notes:
        said, sep = _NOTE_WORDS[note.kind]
        line += "; " + said + sep.join(note.items)
    return line


def describe_change(old: Snapshot, new: Snapshot, old_routes: RouteTable,
                    new_routes: RouteTable) -> Change | None:
    """What differs (None: nothing this can name)."""
    endpoints = []
    for name in sorted(set(old) | set(new)):
        before = set(old.get(name, Endpoints()).addresses)
        after = set(new.get(name, Endpoints()).addresses)
        if before != after:
            endpoints.append((name, len(after - before), len(before - after)))
    change = Change(
        tuple(endpoints),
        (len(old_routes.routes), len(new_routes.routes))
        if old_routes.routes != new_routes.routes else None,
        (len(old_routes.tcp), len(new_routes.tcp)) if old_routes.tcp != new_routes.tcp else None)
    return None if change == Change() else change


@dataclass
class State:
    """What the admin server shows. Written only by the reconciler."""

    routes: RouteTable = field(default_factory=lambda: RouteTable(()))
    routes_error: str | None = None
    # tcp routes' ports nginx could not listen on (port: nginx's words); those routes wait
    tcp_refused: dict[int, str] = field(default_factory=dict)
    snapshot: Snapshot = field(default_factory=dict)
    outcome: Outcome | None = None  # the last cycle's (words: `status`)
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
    # (wall clock, outcome) of the last HISTORY cycles whose outcome changed, reloaded or
    # followed a change of tasks
    history: deque[tuple[float, Outcome]] = field(
        default_factory=lambda: deque(maxlen=HISTORY))

    @property
    def status(self) -> str:
        """The last cycle's status line."""
        return words(self.outcome)

    def record(self, outcome: Outcome, at: float | None = None) -> None:
        """The cycle's outcome. The history keeps what happened (reloads, refusals, failures),
        once each: not the quiet cycles in between, unless what they add (a routes file
        refused, ...) is new."""
        self.outcome = outcome
        last = self.history[-1][1] if self.history else None
        if outcome.quiet:
            if outcome.notes == (last.notes if last is not None else ()):
                return
        elif outcome == last and outcome.kind not in ("reloaded", "followed"):
            return
        self.history.append((time.time() if at is None else at, outcome))
