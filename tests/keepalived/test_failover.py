"""What a client of the VIP notices when gateways die and come back, on real VRRP."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.keepalived.lint import lint_files
from tests.support import wait_until
from tests.support.netns import Cluster


def vrrp_state(cluster: Cluster, node: str) -> float | None:
    """keepalived_vrrp_state of the node's notify textfile (2 = MASTER)."""
    path = cluster.node(node).dir / "metrics" / "keepalived.prom"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "keepalived_vrrp_state":
                return sample.value
    return None


def stays(cluster: Cluster, name: str, seconds: float) -> None:
    """The VIP keeps answering from `name` for `seconds` (every probe, no gaps)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answer = cluster.answer(timeout=2)  # patient: a loaded machine is no failover
        assert answer == name, f"{answer} answered, not {name} ({cluster.holders()})"
        time.sleep(0.1)


@pytest.mark.parametrize("mode", ["script", "track_file"])
def test_vip_follows_priority_and_comes_back(cluster: Cluster, mode: str) -> None:
    paths = cluster.render(cluster.description(mode))
    assert lint_files(sorted(paths.values())) == []
    cluster.start(cluster.description(mode))
    node1, node2, _ = cluster.nodes

    cluster.wait_for_answer("node1", timeout=30)  # the highest priority serves
    assert cluster.holders() == ["node1"]

    cluster.kill_nginx(node1)
    cluster.wait_for_answer("node2")  # the next by priority
    cluster.kill_nginx(node2)
    cluster.wait_for_answer("node3")  # and the third
    assert cluster.holders() == ["node3"]

    cluster.start_nginx(node2)
    cluster.wait_for_answer("node2", timeout=30)  # preempt: the higher priority takes it back
    cluster.start_nginx(node1)
    cluster.wait_for_answer("node1", timeout=30)
    assert cluster.holders() == ["node1"]

    # the notify hook recorded it: node1 is MASTER again, node3 is back to BACKUP
    wait_until(lambda: vrrp_state(cluster, "node1") == 2, 10, "node1's textfile to say MASTER")
    wait_until(lambda: vrrp_state(cluster, "node3") == 1, 10, "node3's textfile to say BACKUP")


def test_nopreempt_leaves_the_vip_where_it_is(cluster: Cluster) -> None:
    cluster.start(cluster.description("track_file", preempt=False))
    node1, node2, _ = cluster.nodes
    first = wait_until(cluster.answer, 30, "a node to answer on the VIP")
    if first != "node1":
        # a loaded machine can make a lower node's check pass first, and without preemption
        # that node keeps the VIP, as it should: hand it to node1 as an outage would
        holder = next(n for n in cluster.nodes if n.name == first)
        cluster.kill_nginx(holder)
        cluster.wait_for_answer("node1")
        cluster.start_nginx(holder)
        stays(cluster, "node1", 3)  # its return takes nothing back either
    cluster.kill_nginx(node1)
    cluster.wait_for_answer("node2")
    cluster.start_nginx(node1)
    # longer than node1 needs to recover (rise) and to win an election (3 adverts + skew)
    stays(cluster, "node2", 5)
    cluster.kill_nginx(node2)
    cluster.wait_for_answer("node1")  # the highest healthy priority when a new master is due


@pytest.mark.parametrize("mode", ["script", "track_file"])
def test_a_hanging_gateway_does_not_keep_the_vip(cluster: Cluster, mode: str) -> None:
    """nginx replaced by a listener that accepts and never answers: the check runs into its
    deadline, and the VIP leaves."""
    cluster.start(cluster.description(mode))
    cluster.wait_for_answer("node1", timeout=30)
    cluster.hang_http(cluster.nodes[0])
    cluster.wait_for_answer("node2")
    assert cluster.holders() == ["node2"]


def test_unicast_cluster_fails_over(cluster: Cluster) -> None:
    cluster.start(cluster.description("track_file", unicast=True))
    cluster.wait_for_answer("node1", timeout=30)
    text = Path(cluster.nodes[0].dir / "keepalived.conf").read_text()
    assert "unicast_peer" in text
    cluster.kill_nginx(cluster.nodes[0])
    cluster.wait_for_answer("node2")
    assert cluster.holders() == ["node2"]


def test_stopping_the_watcher_hands_the_vip_over(cluster: Cluster) -> None:
    """A watcher that is stopped cannot vouch for its gateway any more."""
    cluster.start(cluster.description("track_file"))
    cluster.wait_for_answer("node1", timeout=30)
    cluster.stop(cluster.nodes[0], "watcher")
    cluster.wait_for_answer("node2")
