"""The drain: what the gateway does between being told to stop and nginx quitting, so that no
client sees a refused connection because this gateway went away.

    SIGTERM (swarm's update or drain, `docker stop`, a node shutting down)
      -> nginx reloads with `keepalive_timeout 0`: its listeners stay, every kept-alive client
         gets `Connection: close` with its next answer (nginx.Nginx.close_client_connections)
      -> /readyz answers 503 "draining": gateway-check fails, keepalived hands the VIP to
         another node (or a load balancer stops sending here)
      -> wait until this node holds no VIP (--vrrp-state-file, written by keepalived's notify
         hook), or --drain-delay seconds when there is no such file; nginx keeps serving
         whatever still arrives meanwhile
      -> nginx quits gracefully (SIGQUIT): the requests in flight finish

nginx closing its listeners while the VIP is still here is what refused connections before:
keepalived's check notices a dead gateway only after the fact. A second SIGTERM ends the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from agent.core.vrrp import read_records

log = logging.getLogger("agent.gateway.drain")

POLL = 0.05  # seconds between two looks at the VRRP state file


def holds_vip(path: Path | None) -> bool | None:
    """Whether keepalived on this node is MASTER of an instance (holds its VIP), from the
    notify hook's textfile; None when that is not known (no file, or nothing in it)."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        records = read_records(text)
    except ValueError:
        return None
    instances = [r for (kind, _), r in records.items() if kind == "INSTANCE"]
    if not instances:
        return None
    return any(r.state == "MASTER" for r in instances)


async def wait_for_handover(vrrp_state_file: Path | None, delay: float, hurry: asyncio.Event,
                            clock: Callable[[], float] = time.monotonic) -> str:
    """Until traffic has left this node: the VIP gone (when the VRRP state file tells), or
    `delay` seconds (when it does not, or the VIP stays that long), or `hurry` set. Says
    which."""
    started = clock()
    deadline = started + delay
    known = holds_vip(vrrp_state_file)
    while clock() < deadline and not hurry.is_set():
        known = holds_vip(vrrp_state_file)
        if known is False:
            return f"the VIP left this node after {clock() - started:.2f}s"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), min(POLL, max(0.0, deadline - clock())))
    if hurry.is_set():
        return f"told again to stop after {clock() - started:.2f}s"
    if known:
        return f"this node still holds the VIP after {delay:g}s (--drain-delay)"
    return f"waited --drain-delay {delay:g}s"
