"""4. Failover: on the keepalived cluster in network namespaces, the time from the master's
gateway dying to the VIP answering from the next node, and the requests lost on the way, for the
`vrrp_script` check and for the `track_file` watcher.

The measurement is the keepalived tier's own meter (tests/support/failover.py, on the cluster of
tests/support/netns.py): three nodes, a client starting a request to the VIP every 10 ms on a new
connection, the master's nginx killed (SIGKILL to its whole process group) at a random point of
keepalived's one-second script beat; between trials the node gets its nginx back and, with
preempt, the VIP.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import stats
from bench.options import Options

GOAL_S = 0.5
MODES = ("script", "track_file")


def available() -> str | None:
    """Why failover cannot be measured here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for program in ("ip", "keepalived", "nginx"):
        if shutil.which(program) is None and not Path("/usr/sbin", program).exists():
            return f"{program} is not installed"
    try:
        import tests.support.failover  # noqa: F401  (the keepalived tier's harness and meter)
    except ImportError as exc:
        return f"the namespace cluster harness (tests/support/failover.py) is missing: {exc}"
    return None


def run(opts: Options, workdir: Path) -> dict[str, Any]:
    reason = available()
    if reason is not None:
        return {"skipped": reason, "goals": [
            {"goal": "failover under 0.5 s", "measured": f"not measured: {reason}",
             "met": None}]}
    from tests.support import failover
    from tests.support.netns import Cluster

    modes: dict[str, Any] = {}
    for mode in MODES:
        trials = failover.measure(mode, opts.failover_trials)
        times = [t.failover_s for t in trials]
        lost = [float(t.lost) for t in trials]
        probe = Cluster(2)  # not set up: only to read the check settings the trials ran with
        try:
            check = probe.description(mode)["check"]
        finally:
            probe.close()
        modes[mode] = {
            "trials": [asdict(t) for t in trials], "failover": stats.summary(times),
            "lost": stats.summary(lost),
            "check": {k: v for k, v in check.items() if k not in ("command", "track_file")},
        }
    goals = [{"goal": f"failover under 0.5 s ({mode}, median and worst)",
              "measured": f"median {m['failover']['median']:.3f} s, "
                          f"worst {m['failover']['max']:.3f} s",
              "met": m["failover"]["max"] < GOAL_S}
             for mode, m in modes.items()]
    return {"params": {"trials": opts.failover_trials, "nodes": 3, "poll_every_s": 0.01,
                       "meter": "tests/support/failover.py"},
            "modes": modes, "goals": goals}
