"""The endpoints' file formats, in one place: the file --state-dir keeps (the endpoints behind
the configuration last applied, read at start), and the snapshot `gateway-agent render
--endpoints` reads (`{"service": ["10.0.1.3", ...]}`). Addresses from either pass the same
check as addresses from DNS (drivers/discovery.py sort_addresses)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from agent.core.files import write_atomic
from agent.core.routes import RouteTable
from agent.gateway.drivers.discovery import sort_addresses
from agent.gateway.model import Endpoints, Snapshot

log = logging.getLogger("agent.gateway.reconciler")
SAVED_NOTE = "saved by a previous run"


def endpoints_file(state_dir: Path | None) -> Path | None:
    return state_dir / "endpoints.json" if state_dir is not None else None


def decode_saved(doc: Any) -> dict[str, Endpoints]:
    """`{"endpoints": {name: {"addresses": [...], "since": T}}}`: stale, as they were saved.
    Raises ValueError, KeyError, TypeError or AttributeError on anything else."""
    return {name: Endpoints(sort_addresses(e["addresses"]), "ok" if e["addresses"] else "none",
                            True, SAVED_NOTE, float(e.get("since", 0.0)))
            for name, e in doc["endpoints"].items()}


def encode_saved(snapshot: Snapshot) -> str:
    return json.dumps({"endpoints": {
        n: {"addresses": list(e.addresses), "state": e.state, "since": e.since}
        for n, e in snapshot.items() if e.state != "unknown"}}, indent=1, sort_keys=True)


def load_saved(path: Path | None) -> dict[str, Endpoints]:
    """The endpoints a last run saved ({} when there are none, or they cannot be read)."""
    if path is None:
        return {}
    try:
        return decode_saved(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("state_unreadable file=%s error=%r", path, str(exc))
        return {}


def save(path: Path | None, snapshot: Snapshot) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, encode_saved(snapshot))
    except OSError as exc:
        log.warning("state_not_saved file=%s error=%r", path, str(exc))


def read_snapshot(path: Path, table: RouteTable) -> dict[str, Endpoints]:
    """`{"service": ["10.0.1.3", ...]}` as the discovery snapshot the plan takes (`render
    --endpoints`); a name of a route's target stands for its lookup name. Raises OSError or
    ValueError."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise ValueError("expected an object {\"service\": [\"10.0.1.3\", ...]}")
    by_name = {t.name: t for t in table.targets}
    snapshot: dict[str, Endpoints] = {}
    for name, addresses in doc.items():
        if not isinstance(addresses, list):
            raise ValueError(f"{name}: expected a list of addresses")
        target = by_name.get(name)
        ok = sort_addresses(addresses)
        snapshot[target.lookup_name if target else name] = Endpoints(ok, "ok" if ok else "none")
    return snapshot
