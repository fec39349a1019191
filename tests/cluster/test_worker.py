"""A worker node dies: swarm runs its tasks on the other nodes of its zone, and the gateways on
other nodes follow; the node comes back and rejoins."""

from __future__ import annotations

import time

from tests.support.cluster import GATEWAY_PORT, Cluster, measured, node, wait_for


def answering(cluster: Cluster, address: str, host: str, requests: int) -> set[str]:
    seen = set()
    for _ in range(requests):
        status, body = cluster.client_get(address, GATEWAY_PORT, host, timeout=2)
        if status == 200:
            seen.add(body)
    return seen


def test_a_dead_worker_s_tasks_move_and_the_gateways_follow(cluster: Cluster) -> None:
    victim, other = node("intra1"), node("intra2")
    before = cluster.tasks("intrahttp")
    on_victim = {t["container"] for t in before if t["node"] == victim.name}
    assert on_victim, f"no intrahttp task on {victim.name}: {before}"
    killed = time.monotonic()
    cluster.kill_node(victim)
    try:
        wait_for(lambda: cluster.node_state(victim) == "down", 120,
                 f"the manager to see {victim.name} down")
        down = time.monotonic() - killed

        def moved() -> set[str] | None:
            tasks = cluster.tasks("intrahttp")
            if len(tasks) == 2 and all(t["node"] == other.name for t in tasks):
                return {t["container"] for t in tasks}
            return None
        now = wait_for(moved, 120, f"both intrahttp tasks to run on {other.name}")
        assert not now & on_victim
        rescheduled = time.monotonic() - killed
        for gateway in ("gw1", "gw2"):
            address = node(gateway).address
            wait_for(lambda a=address: answering(cluster, a, "intrahttp", 8) == now, 60,
                     f"{gateway} to answer intrahttp from the new tasks {sorted(now)} only")
        followed = time.monotonic() - killed
        measured(f"worker node killed: seen down after {down:.0f} s, its task running on "
                 f"{other.name} after {rescheduled:.0f} s, both gateways answering from the "
                 f"new tasks only after {followed:.0f} s")
    finally:
        cluster.restart_node(victim)
    wait_for(lambda: cluster.node_state(victim) == "ready", 120, f"{victim.name} to rejoin")
