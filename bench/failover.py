"""4. Failover: on the keepalived cluster in network namespaces (tests/support/netns.py), the
time from the master's gateway dying to the VIP answering from the next node, and the requests
lost on the way, for the `vrrp_script` check and for the `track_file` watcher.

A client in its own namespace asks the VIP every POLL_EVERY seconds. Each trial: the first node
serves, its nginx is killed (SIGKILL to the whole process group, as a crash), and the clock runs
until the client gets an answer from another node. Then nginx comes back, the first node takes
the VIP back (preempt), and the next trial starts.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from bench import stats
from bench.options import Options
from bench.procs import BenchError

POLL_EVERY = 0.01
REQUEST_TIMEOUT = 0.2
GOAL_S = 0.5


def available() -> str | None:
    """Why failover cannot be measured here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for program in ("ip", "keepalived", "nginx"):
        if shutil.which(program) is None and not Path("/usr/sbin", program).exists():
            return f"{program} is not installed"
    try:
        import tests.support.netns  # noqa: F401  (the cluster harness, shared with the tests)
    except ImportError as exc:
        return f"the network-namespace harness (tests/support/netns.py) is not available: {exc}"
    return None


def _poll(samples: list[tuple[float, str | None]], halt: threading.Event,
          deadline: float) -> None:
    """Runs inside the client namespace: appends (time, answering node or None) until halted."""
    from tests.support.netns import VIP, http_get

    while not halt.is_set() and time.monotonic() < deadline:
        who = http_get(VIP, 80, "/", REQUEST_TIMEOUT)
        samples.append((time.monotonic(), who))
        time.sleep(POLL_EVERY)


def trial(cluster: Any) -> dict[str, Any]:
    first, others = cluster.nodes[0], {n.name for n in cluster.nodes[1:]}
    cluster.wait_for_answer(first.name, timeout=30)
    samples: list[tuple[float, str | None]] = []
    halt = threading.Event()
    future = cluster.client.submit(_poll, samples, halt, time.monotonic() + 40)
    try:
        time.sleep(0.3)
        t_kill = time.monotonic()
        cluster.kill_nginx(first)
        deadline = t_kill + 20
        while time.monotonic() < deadline and not future.done():
            time.sleep(0.05)
            if any(t >= t_kill and who in others for t, who in samples[:]):
                break
        time.sleep(0.3)  # a few answers more: does the new node keep answering?
    finally:
        halt.set()
    future.result(timeout=10)
    after = [(t, who) for t, who in samples if t >= t_kill]
    answered = next((t for t, who in after if who in others), None)
    window = [who for t, who in after if answered is None or t < answered]
    row = {
        "failover_s": None if answered is None else answered - t_kill,
        "requests_in_window": len(window),
        "failed_in_window": sum(1 for who in window if who is None),
        "answered_by": next((who for _, who in after if who in others), None),
    }
    cluster.start_nginx(first)
    cluster.wait_for_answer(first.name, timeout=30)
    return row


def run(opts: Options, workdir: Path) -> dict[str, Any]:
    reason = available()
    if reason is not None:
        return {"skipped": reason, "goals": [
            {"goal": "failover under 0.5 s", "measured": f"not measured: {reason}",
             "met": None}]}
    from tests.support.netns import Cluster

    modes: dict[str, Any] = {}
    for mode in ("script", "track_file"):
        rows = []
        with Cluster(size=3) as cluster:
            cluster.start(cluster.description(mode=mode))
            for _ in range(opts.failover_trials):
                rows.append(trial(cluster))
            settings = cluster.description(mode=mode)["check"]
        times = [r["failover_s"] for r in rows if r["failover_s"] is not None]
        if not times:
            raise BenchError(f"no failover observed in {mode} mode")
        modes[mode] = {
            "trials": rows, "failover": stats.summary(times),
            "not_observed": sum(1 for r in rows if r["failover_s"] is None),
            "failed_requests_median": stats.median([r["failed_in_window"] for r in rows]),
            "check": {k: v for k, v in settings.items() if k not in ("command", "track_file")},
        }
    goals = [{"goal": f"failover under 0.5 s ({mode}, median and worst)",
              "measured": f"median {m['failover']['median']:.3f} s, "
                          f"worst {m['failover']['max']:.3f} s",
              "met": m["failover"]["max"] < GOAL_S and not m["not_observed"]}
             for mode, m in modes.items()]
    return {"params": {"trials": opts.failover_trials, "nodes": 3, "poll_every_s": POLL_EVERY,
                       "request_timeout_s": REQUEST_TIMEOUT},
            "modes": modes, "goals": goals}
