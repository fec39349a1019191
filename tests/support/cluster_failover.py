"""The VIP failover on the multi-node cluster (tests/support/cluster.py), measured as a client
sees it: the tests' trials and the benchmark's part 7 both use these.

A client in the cluster's client container starts a request to the VIP every 10 ms, each on a new
connection, for managerhttp's /cgi-bin/peer page: the answer is the overlay address of the
gateway that forwarded it, which names its node. A trial kills the VIP holder's node container
(`node`: the machine is gone, keepalived with it) or only its gateway container (`gateway`), and
times the first answer from another gateway node. A killed node boots again once the swarm's
gossip has dropped it (about 6 s), and takes the VIP back (preempt).
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass

from tests.support.cluster import (
    GATEWAY_PORT,
    VIP,
    Cluster,
    Node,
    gateway_nodes,
    node,
    wait_for,
)
from tests.support.failover import Poller, Sample


@dataclass(frozen=True)
class Failover:
    kind: str         # "node": the master's node container killed; "gateway": its gateway only
    master: str       # the node that held the VIP
    successor: str    # the node that answered next
    seconds: float    # from the kill command to the first answer from the successor
    gap: float        # from the master's last answer to the successor's first
    lost: int         # requests started after the kill that got no answer
    requests: int


def gateway_addresses(cluster: Cluster) -> dict[str, str]:
    """{address of an http-gateway task on the overlays: its node}."""
    return {address: t["node"] for t in cluster.tasks("http-gateway")
            for address in t["addresses"].split()}


def vip_poller(cluster: Cluster) -> Poller:
    """A request to the VIP every 10 ms from the client container, each on a new connection,
    for managerhttp's peer page: the answer is the address of the gateway that forwarded it."""
    return Poller(client=cluster.client_namespace(), host=VIP, port=GATEWAY_PORT,
                  header="managerhttp", path="/cgi-bin/peer", interval=0.01, patience=0.5)


def failover_trial(cluster: Cluster, kind: str, timeout: float = 30,
                   jitter: float = 0.5) -> Failover:
    """Kill the VIP holder's node container (`node`) or its gateway container (`gateway`) while a
    client polls the VIP; measure until a gateway on another node answers."""
    master = node(wait_for(cluster.vip_holder, 60, "one gateway node to hold the VIP"))
    names = {n.name for n in gateway_nodes()}
    # after a node came back, its new gateway task shows once it runs
    def every_node() -> dict[str, str] | None:
        found = gateway_addresses(cluster)
        return found if set(found.values()) == names else None
    addresses = wait_for(every_node, 60, "a running gateway task on every gateway node")

    def answers_from(samples: list[Sample], after: float) -> list[tuple[Sample, str]]:
        # busybox httpd writes the peer as [::ffff:10.214.1.3]
        return [(s, addresses.get((s.answer or "").strip("[]").removeprefix("::ffff:"), "?"))
                for s in samples
                if s.answer is not None and s.sent >= after]

    poller = vip_poller(cluster)
    try:
        wait_for(lambda: any(name == master.name for _, name in answers_from(poller.samples, 0)),
                 10, f"{master.name} to answer on the VIP before the kill", interval=0.05)
        time.sleep(0.2 + random.uniform(0, jitter))
        killed = time.monotonic()
        if kind == "node":
            cluster.kill_node(master)
        else:
            cluster.kill_gateway(master)

        def successor() -> tuple[Sample, str] | None:
            later = [(s, name) for s, name in answers_from(list(poller.samples), killed)
                     if name in names and name != master.name]
            return min(later, key=lambda pair: pair[0].done, default=None)
        first, name = wait_for(successor, timeout, f"another gateway node to answer on the VIP "
                               f"after the {kind} kill on {master.name}", interval=0.01)
        time.sleep(0.3)  # requests started around the hand-over finish and are counted
    finally:
        samples = poller.stop()
    strangers = {s.answer for s, who in answers_from(samples, 0) if who not in names}
    if strangers:
        raise AssertionError(f"answers from no known gateway: {strangers} ({addresses})")
    from_master = [s for s, who in answers_from(samples, 0) if who == master.name]
    last = max((s.done for s in from_master), default=killed)
    after = [s for s in samples if s.sent >= killed]
    return Failover(kind, master.name, name, first.done - killed, first.done - last,
                    sum(1 for s in after if s.answer is None), len(after))


def bring_back(cluster: Cluster, n: Node, kind: str, timeout: float = 180) -> float:
    """After a trial: the node boots again (`node`: dockerd, then keepalived, as its init would)
    or swarm restarts its gateway (`gateway`); wait until its gateway answers on its own address.
    Seconds from the restart. A killed node boots once the swarm's gossip has dropped it, as a
    real machine's reboot would (Cluster.wait_forgotten)."""
    if kind == "node":
        cluster.wait_forgotten(n)
    started = time.monotonic()
    if kind == "node":
        cluster.restart_node(n)
        cluster.start_keepalived(n)
    wait_for(lambda: cluster.client_get(n.address, GATEWAY_PORT, "managerhttp")[0] == 200,
             timeout, f"the gateway on {n.name} to answer again")
    return time.monotonic() - started


def summarize(kind: str, trials: list[Failover]) -> str:
    times = sorted(t.seconds for t in trials)
    gaps = sorted(t.gap for t in trials)
    lost = sorted(t.lost for t in trials)
    return (f"VIP failover, {kind} killed, {len(trials)} trials: median "
            f"{statistics.median(times):.3f} s, worst {times[-1]:.3f} s (from the kill command; "
            f"gap between answers median {statistics.median(gaps):.3f} s, worst {gaps[-1]:.3f} s);"
            f" requests lost median {statistics.median(lost):g}, worst {lost[-1]} "
            f"(one every 10 ms)")
