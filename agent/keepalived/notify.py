"""Record keepalived's VRRP transitions for node_exporter's textfile collector, and in the log.

keepalived runs the `notify` command of an instance (or sync group) on every transition and
appends four arguments: TYPE ("INSTANCE" or "GROUP"), NAME, STATE ("MASTER", "BACKUP",
"FAULT", "STOP", "DELETED") and PRIORITY. Each call is a separate process, so the state between
calls lives in the textfile itself: it is read back, updated and replaced atomically, under a
lock file because keepalived may run two notify scripts at once.

Series written (instances; sync groups get the same with `keepalived_vrrp_sync_group_` and a
`group` label):

    keepalived_vrrp_state{instance}                         0 stopped, 1 backup, 2 master, 3 fault
    keepalived_vrrp_priority{instance}                      priority given with the last transition
    keepalived_vrrp_transitions_total{instance,state}       transitions into each state
    keepalived_vrrp_last_transition_timestamp_seconds{instance}
"""

from __future__ import annotations

import fcntl
import os
import sys
import syslog
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.core.files import write_atomic
from agent.core.vrrp import KINDS, STATE_HELP, STATE_VALUES, Record, Records, read_records


class NotifyError(ValueError):
    """Arguments that are not what keepalived passes."""





def apply(records: Records, kind: str, name: str, state: str, priority: float,
          now: float) -> Record:
    record = records.setdefault((kind, name), Record())
    record.state = state
    record.priority = priority
    record.last_transition = now
    record.transitions[state] = record.transitions.get(state, 0) + 1
    return record


class RecordsCollector(Collector):
    def __init__(self, records: Records) -> None:
        self.records = records

    def collect(self) -> Iterator[Metric]:
        for kind, (prefix, label) in KINDS.items():
            items = sorted((n, r) for (k, n), r in self.records.items() if k == kind)
            if not items:
                continue
            state = GaugeMetricFamily(f"{prefix}state", STATE_HELP, labels=[label])
            priority = GaugeMetricFamily(f"{prefix}priority",
                                         "Priority keepalived gave with the last transition",
                                         labels=[label])
            last = GaugeMetricFamily(f"{prefix}last_transition_timestamp_seconds",
                                     "Time of the last transition (Unix seconds)", labels=[label])
            transitions = CounterMetricFamily(f"{prefix}transitions",
                                              "Transitions into each VRRP state",
                                              labels=[label, "state"])
            for name, record in items:
                state.add_metric([name], STATE_VALUES.get(record.state, 0))
                priority.add_metric([name], record.priority)
                last.add_metric([name], record.last_transition)
                for into, count in sorted(record.transitions.items()):
                    transitions.add_metric([name, into], count)
            yield from (state, priority, last, transitions)


def _read_own(textfile: Path) -> str:
    """The textfile as this module left it; "" when there is none. A link is refused."""
    try:
        fd = os.open(textfile, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return ""
    with os.fdopen(fd, "rb") as f:
        return f.read().decode("utf-8", errors="replace")


def record_transition(textfile: Path, kind: str, name: str, state: str, priority: str,
                      now: float | None = None) -> str:
    """Update `textfile` with one transition; return the log line describing it."""
    kind, state = kind.upper(), state.upper()
    if kind not in KINDS:
        raise NotifyError(f"type {kind!r}: expected INSTANCE or GROUP")
    if state not in STATE_VALUES:
        raise NotifyError(f"state {state!r}: expected one of {', '.join(STATE_VALUES)}")
    try:
        priority_value = float(priority)
    except ValueError:
        raise NotifyError(f"priority {priority!r}: not a number") from None
    now = time.time() if now is None else now
    textfile.parent.mkdir(parents=True, exist_ok=True)
    # keepalived runs this as root: no file is opened through a link planted beside the
    # textfile (O_NOFOLLOW), and the new textfile is written to a temporary file of a name
    # no one can guess, created with O_EXCL, then renamed over the old one (agent.core.files)
    lock = os.open(f"{textfile}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                   0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = _read_own(textfile)
        records = read_records(text)
        previous = records[(kind, name)].state if (kind, name) in records else None
        apply(records, kind, name, state, priority_value, now)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(RecordsCollector(records))
        write_atomic(textfile, generate_latest(registry), 0o644)
    finally:
        os.close(lock)
    label = KINDS[kind][1]
    return (f"keepalived_transition {label}={name} state={state} "
            f"previous={previous or 'unknown'} priority={priority_value:g}")


def log(line: str) -> None:
    """keepalived throws a notify script's output away: the system log is where it shows."""
    print(line, file=sys.stderr, flush=True)
    if os.path.exists("/dev/log"):
        syslog.openlog("gateway-keepalived-notify", 0, syslog.LOG_DAEMON)
        syslog.syslog(syslog.LOG_NOTICE, line)


def main(textfile: str, kind: str, name: str, state: str, priority: str) -> int:
    try:
        line = record_transition(Path(textfile), kind, name, state, priority)
    except NotifyError as exc:
        log(f"keepalived_notify_rejected error={exc!s}")
        return 2
    except OSError as exc:
        log(f"keepalived_notify_failed textfile={textfile} error={exc!s}")
        return 1
    log(line)
    return 0
