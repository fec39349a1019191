"""The VRRP textfile: what `gateway-agent keepalived notify` writes on every transition
(keepalived/notify.py) and what a gateway reads back to show its node's VIP state (/status, the
dashboard). Both sides trust this one reader of the format."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

STATE_VALUES = {"STOP": 0, "DELETED": 0, "BACKUP": 1, "MASTER": 2, "FAULT": 3}
STATE_HELP = "VRRP state: 0 stopped, 1 backup, 2 master, 3 fault"
KINDS = {"INSTANCE": ("keepalived_vrrp_", "instance"), "GROUP": ("keepalived_vrrp_sync_group_",
                                                               "group")}


@dataclass
class Record:
    state: str = "STOP"
    priority: float = 0.0
    last_transition: float = 0.0
    transitions: dict[str, float] = field(default_factory=dict)


Records = dict[tuple[str, str], Record]  # (kind, name) -> what is known


def read_records(text: str) -> Records:
    """The records in a textfile this module wrote (anything else in it is ignored)."""
    records: Records = {}
    value_to_state = {2: "MASTER", 1: "BACKUP", 3: "FAULT", 0: "STOP"}
    for family in text_string_to_metric_families(text):
        for kind, (prefix, label) in KINDS.items():
            if not family.name.startswith(prefix):
                continue
            metric = family.name[len(prefix):]
            for sample in family.samples:
                name = sample.labels.get(label)
                if name is None or sample.name.endswith("_created"):
                    continue
                record = records.setdefault((kind, name), Record())
                if metric == "state":
                    record.state = value_to_state.get(int(sample.value), "STOP")
                elif metric == "priority":
                    record.priority = sample.value
                elif metric == "last_transition_timestamp_seconds":
                    record.last_transition = sample.value
                elif metric == "transitions":
                    record.transitions[sample.labels.get("state", "")] = sample.value
    return records


def vrrp_status(path: Path | None) -> dict[str, Any] | None:
    """The notify hook's textfile, as /status shows it; None when no file is configured."""
    if path is None:
        return None
    doc: dict[str, Any] = {"file": str(path), "instances": [], "modified_at": None,
                           "error": None}
    try:
        text = path.read_text(encoding="utf-8")
        doc["modified_at"] = os.stat(path).st_mtime
    except FileNotFoundError:
        doc["error"] = "no file yet: keepalived has not run the notify hook on this node"
        return doc
    except (OSError, UnicodeDecodeError) as exc:
        doc["error"] = f"cannot read it: {exc}"
        return doc
    try:
        records = read_records(text)
    except ValueError as exc:  # the parser's errors for a file that is not an exposition
        doc["error"] = f"not a textfile the notify hook wrote: {exc}"
        return doc
    doc["instances"] = [
        {"kind": kind.lower(), "name": name, "state": r.state, "priority": r.priority,
         "last_transition_at": r.last_transition or None,
         "transitions": dict(sorted(r.transitions.items()))}
        for (kind, name), r in sorted(records.items())]
    return doc
