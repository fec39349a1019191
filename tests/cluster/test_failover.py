"""A client on the VIP keeps being answered when the master gateway node dies, or only its
gateway; the node comes back and the VIP returns (preempt) or stays (nopreempt), never on two
nodes at once."""

from __future__ import annotations

import time

import pytest

from tests.support.cluster import Cluster, measured, node, wait_for
from tests.support.cluster_failover import (
    Failover,
    bring_back,
    failover_trial,
    summarize,
    vip_poller,
)

# two of each kind in `make test` (about 18 s each for a node, 11 s for a gateway): a second
# trial starts from a VIP that preemption brought back; the benchmark's part 7 runs as many as
# --cluster-trials says (5 by default)
TRIALS = 2


def no_split_brain(cluster: Cluster, seconds: float) -> int:
    """Look at who holds the VIP for `seconds`; fail on any moment with two holders. The number
    of looks."""
    looks = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        holders = cluster.vip_holders()
        assert len(holders) <= 1, f"split brain: {holders} hold the VIP"
        looks += 1
    return looks


@pytest.mark.parametrize("kind", ["node", "gateway"])
def test_a_client_on_the_vip_keeps_being_answered(cluster: Cluster, kind: str) -> None:
    trials: list[Failover] = []
    for _ in range(TRIALS):
        master = wait_for(cluster.vip_holder, 60, "one node to hold the VIP")
        assert master == "gw1"  # the highest priority, and preempt brought it back
        trial = failover_trial(cluster, kind)
        assert trial.successor == "gw2", trial
        assert cluster.vip_holders() == ["gw2"]
        # the node boots again (or swarm restarts the gateway); with preempt gw1 takes the VIP
        # back once its own gateway answers, and at no moment do both hold it
        poller = vip_poller(cluster)
        try:
            back = bring_back(cluster, node(master), kind)
            wait_for(lambda m=master: no_split_brain(cluster, 0.5) and cluster.vip_holder() == m,
                     60, f"{master} to take the VIP back (preempt)", interval=0)
            time.sleep(0.5)
        finally:
            samples = poller.stop()
        lost_back = sum(1 for s in samples if s.answer is None)
        measured(f"  {kind} trial: failover {trial.seconds:.3f} s (gap {trial.gap:.3f} s), "
                 f"lost {trial.lost} of {trial.requests}; back after {back:.0f} s, "
                 f"lost {lost_back} of {len(samples)} while it came back")
        trials.append(trial)
    measured(summarize(kind, trials))


def test_without_preempt_the_vip_stays_where_it_moved(cluster: Cluster) -> None:
    gw1 = node("gw1")
    cluster.start_keepalived_all(preempt=False)
    try:
        wait_for(lambda: cluster.vip_holder() == "gw1", 60, "gw1 to hold the VIP")
        trial = failover_trial(cluster, "gateway")
        assert trial.successor == "gw2"
        bring_back(cluster, gw1, "gateway")
        # gw1's check passes again: keepalived there leaves FAULT for BACKUP, and stays there
        wait_for(lambda: cluster.vrrp_state(gw1) == "BACKUP", 30,
                 "gw1's keepalived to be BACKUP again")
        looks = no_split_brain(cluster, 5)
        assert cluster.vip_holders() == ["gw2"], looks
        measured(f"nopreempt: gw1's gateway back, the VIP stayed on gw2 ({looks} looks in 5 s, "
                 "never two holders)")
    finally:
        cluster.start_keepalived_all(preempt=True)
        wait_for(lambda: cluster.vip_holder() == "gw1", 60, "gw1 to hold the VIP again")
