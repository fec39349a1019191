"""How long and how often each benchmark runs: the full defaults, `--quick`, and flags."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path


@dataclass(frozen=True)
class Options:
    # 1. data path
    duration: float = 10.0  # seconds of wrk per measurement
    warmup: float = 2.0  # seconds of wrk before each measurement, not recorded
    rounds: int = 5  # interleaved rounds: every gateway once per round, rotating the order
    threads: int = 1  # wrk threads, the same for every gateway
    connections: int = 32  # wrk connections, the same for every gateway
    cost_pairs: int = 8  # back-to-back pairs per option whose cost is measured (log, metrics)
    # 2. convergence
    changes: int = 30  # DNS changes of each kind (add, remove) for the agent, HAProxy, Caddy
    article_changes: int = 30  # changes for the article's nginx, alternating add and remove
    # 3. reloads under load
    reload_changes: int = 100
    reload_poll_interval: float = 0.25
    reload_min_interval: float = 0.5
    # 4. failover
    failover_trials: int = 10
    # 5. scale and footprint
    route_counts: tuple[int, ...] = (10, 100, 1000)
    scale_cycles: int = 5  # cycles with a change, measured one by one, per route count
    idle_seconds: float = 30.0  # idle window for CPU per poll
    hosts_per_service: int = 1  # routes (one host each) on each service
    # 6. health check
    check_runs: int = 100
    # 7. cluster (VIP failover on the multi-node swarm): trials per kind of failure
    cluster_trials: int = 5
    # 8. capacity: WebSockets held, idle kept-alive clients, new TLS connections per burst
    capacity_websockets: int = 15_000
    capacity_idle: int = 10_000
    capacity_burst: int = 3000
    capacity_bursts: int = 3
    # where to write
    out: Path = field(default_factory=lambda: Path(__file__).parent / "results")
    keep: bool = False  # keep the working directory (logs, configurations) after the run


QUICK = {
    "duration": 2.0, "warmup": 0.5, "rounds": 2, "cost_pairs": 2, "changes": 3,
    "article_changes": 2,
    "reload_changes": 20, "failover_trials": 2, "scale_cycles": 2, "idle_seconds": 5.0,
    "check_runs": 20, "cluster_trials": 2,
    "capacity_websockets": 3000, "capacity_idle": 2000, "capacity_burst": 1000,
    "capacity_bursts": 1,
}


def quick(base: Options) -> Options:
    return replace(base, **QUICK)  # type: ignore[arg-type]
