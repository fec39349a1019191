"""7. Cluster: the VIP failover on a real multi-node swarm (six Docker-in-Docker nodes on this
machine, tests/support/cluster.py), for a dead gateway node and for a dead gateway container.

The same meter as the cluster tests: a client container starts a request to the VIP every 10 ms
on a new connection, for a page that names the gateway that forwarded it; the VIP holder's node
container is killed (`docker kill`: the machine is gone, keepalived with it) or only its gateway
container (swarm starts a new one). Between trials the node boots again (dockerd, keepalived)
and, with preempt, takes the VIP back. Brings the cluster up and removes it (a few minutes).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from bench import stats
from bench.options import Options

GOALS = {"median": 1.0, "worst": 2.0}  # seconds, a gateway node killed
KINDS = ("node", "gateway")


def available() -> str | None:
    """Why the cluster cannot be measured here, or None."""
    if os.geteuid() != 0:
        return "needs root (dockerd, the nodes' network)"
    for program in ("docker", "dockerd", "debootstrap"):
        if shutil.which(program) is None:
            return f"{program} is not installed"
    return None


def run(opts: Options, workdir: Path) -> dict[str, Any]:
    reason = available()
    if reason is not None:
        return {"skipped": reason, "goals": [
            {"goal": "VIP failover, gateway node killed, under 1 s median and 2 s worst",
             "measured": f"not measured: {reason}", "met": None}]}
    from tests.support import cluster as c
    from tests.support import cluster_failover as f

    kinds: dict[str, Any] = {}
    with c.started(workdir / "cluster") as made:
        up_s = float((workdir / "cluster" / "up-seconds").read_text())
        for kind in KINDS:
            trials = []
            for _ in range(opts.cluster_trials):
                trial = f.failover_trial(made, kind)
                f.bring_back(made, c.node(trial.master), kind)
                c.wait_for(partial(made.holds_alone, trial.master), 60,
                           f"{trial.master} to take the VIP back")
                trials.append(trial)
            kinds[kind] = {
                "trials": [asdict(t) for t in trials],
                "failover": stats.summary([t.seconds for t in trials]),
                "gap": stats.summary([t.gap for t in trials]),
                "lost": stats.summary([float(t.lost) for t in trials]),
            }
    node = kinds["node"]["failover"]
    goals = [{"goal": "VIP failover, gateway node killed, under 1 s median and 2 s worst",
              "measured": f"median {node['median']:.3f} s, worst {node['max']:.3f} s",
              "met": node["median"] < GOALS["median"] and node["max"] < GOALS["worst"]}]
    return {"params": {"trials": opts.cluster_trials, "nodes": len(c.NODES),
                       "poll_every_s": 0.01, "advert_int_s": c.ADVERT_INT,
                       "meter": "tests/support/cluster_failover.py"},
            "up_s": up_s, "kinds": kinds, "goals": goals}
