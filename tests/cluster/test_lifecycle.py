"""What the operator does to the gateways loses no request of strict clients on the VIP: an
upgrade of the gateway service, a node drained for maintenance and made active again.

Each event runs under StrictLoad (tests/support/strict.py: kept-alive GETs and POSTs, a new
connection per request, a 5 s deadline, nothing retried) from the client container, and
asserts 0 failed requests. The gateway drains on SIGTERM (agent/gateway/drain.py): kept-alive
clients get `Connection: close`, /readyz fails so keepalived moves the VIP, nginx serves until
then. keepalived runs without preemption here, as docs/keepalived.md advises for zero-loss
operations: a VIP that came back by preemption would cut the kept-alive connections of the node
it leaves, which had no chance to drain.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.support.cluster import (
    GATEWAY_PORT,
    SERVICES,
    VIP,
    Cluster,
    measured,
    node,
    wait_for,
)
from tests.support.cluster_failover import bring_back
from tests.support.strict import StrictLoad

HOST = "managerhttp"
SETTLE = 3.0  # seconds of load before and after an event


@pytest.fixture(scope="module")
def nopreempt(cluster: Cluster) -> Iterator[Cluster]:
    cluster.start_keepalived_all(preempt=False)
    wait_for(lambda: cluster.vip_holder() is not None, 60, "a node to hold the VIP")
    try:
        yield cluster
    finally:
        cluster.start_keepalived_all(preempt=True)
        wait_for(lambda: cluster.vip_holder() == "gw1", 60, "gw1 to hold the VIP again")


def gateway_tasks(cluster: Cluster) -> dict[str, str]:
    """{node: the container of its running http-gateway task}."""
    return {t["node"]: t["container"] for t in cluster.tasks("http-gateway")}


def both_serving(cluster: Cluster, before: dict[str, str] | None = None) -> bool:
    """A new gateway task on both gateway nodes (other than `before`'s), each answering."""
    now = gateway_tasks(cluster)
    if set(now) != {"gw1", "gw2"}:
        return False
    if before is not None and set(now.values()) & set(before.values()):
        return False
    return all(cluster.client_get(node(n).address, GATEWAY_PORT, HOST)[0] == 200 for n in now)


def under_load(cluster: Cluster, what: str) -> StrictLoad:
    wait_for(lambda: cluster.client_get(VIP, GATEWAY_PORT, HOST)[0] == 200, 60,
             "the VIP to answer")
    load = StrictLoad(cluster.client_namespace(), VIP, GATEWAY_PORT, HOST)
    time.sleep(SETTLE)
    assert load.tally.ok > 0, f"no answer on the VIP before {what}"
    return load


def finish(load: StrictLoad, what: str) -> None:
    time.sleep(SETTLE)
    tally = load.stop()
    measured(load.summary(what))
    assert tally.failures == [], load.summary(what)


def test_an_upgrade_of_the_gateway_service_loses_nothing(nopreempt: Cluster) -> None:
    cluster = nopreempt
    before = gateway_tasks(cluster)
    holder = cluster.vip_holder()
    load = under_load(cluster, "the upgrade")
    try:
        cluster.docker("service", "update", "--force", "--detach", SERVICES["http-gateway"])
        wait_for(lambda: both_serving(cluster, before), 240,
                 "both gateway tasks replaced and serving", interval=1)
        wait_for(lambda: cluster.vip_holder() is not None, 30, "a node to hold the VIP")
    finally:
        finish(load, f"gateway upgraded (service update --force; the VIP was on {holder}, "
                     f"now on {cluster.vip_holder()})")


def test_a_node_drained_and_made_active_again_loses_nothing(nopreempt: Cluster) -> None:
    cluster = nopreempt
    holder = wait_for(cluster.vip_holder, 30, "a node to hold the VIP")
    drained = node(holder)
    load = under_load(cluster, "the drain")
    try:
        cluster.docker("node", "update", "--availability", "drain", drained.hostname)
        wait_for(lambda: drained.name not in gateway_tasks(cluster), 120,
                 f"the gateway task on {drained.name} to stop", interval=0.5)
        moved_to = wait_for(lambda: (h := cluster.vip_holder()) != holder and h, 30,
                            "the VIP to leave the drained node")
        cluster.docker("node", "update", "--availability", "active", drained.hostname)
        wait_for(lambda: both_serving(cluster), 240, "the gateway back on the drained node",
                 interval=1)
    finally:
        finish(load, f"{holder} drained (VIP to {cluster.vip_holder()}) and made active again")
    assert moved_to != holder


def test_a_certificate_rotated_loses_nothing(nopreempt: Cluster) -> None:
    """docs/tls.md's rotation: a new secret, then a service update that mounts it where the
    old one was; each gateway task is replaced through the drain."""
    cluster = nopreempt
    before = gateway_tasks(cluster)
    version = f"demo_crt_{int(time.time())}"
    cluster.manager_shell(f"docker secret create {version} .work/demo/certs/demo.crt")
    load = under_load(cluster, "the certificate rotation")
    try:
        cluster.docker("service", "update", "--detach", "--secret-rm", "demo_crt",
                       "--secret-add", f"source={version},target=demo_crt,mode=0444",
                       SERVICES["http-gateway"])
        wait_for(lambda: both_serving(cluster, before), 240,
                 "both gateway tasks replaced and serving", interval=1)
        wait_for(lambda: cluster.vip_holder() is not None, 30, "a node to hold the VIP")
    finally:
        finish(load, "certificate rotated (a new secret, service update)")
    status, _ = cluster.client_get(VIP, GATEWAY_PORT, HOST)
    assert status == 200


def test_a_routes_change_restarts_no_gateway_and_loses_nothing(nopreempt: Cluster) -> None:
    """docs/swarm.md's command: the controller stack deployed again with the edited routes file
    under a new config name; only the controller restarts, each gateway reloads."""
    cluster = nopreempt
    before = gateway_tasks(cluster)
    version = int(time.time())  # a new config name each run (a cluster may be reused)
    added = f"lifecycle-{version}"
    assert cluster.client_get(VIP, GATEWAY_PORT, added)[0] == 404
    load = under_load(cluster, "the routes change")
    try:
        cluster.manager_shell(f"printf '  - hosts: [{added}]\\n    service: managerhttp\\n"
                              f"    port: 8888\\n' >> stacks/routes.yml")
        cluster.manager_shell(f"ROUTES_VERSION={version} docker stack deploy --resolve-image "
                              "never -c stacks/controller.yml controller")
        wait_for(lambda: all(cluster.client_get(node(n).address, GATEWAY_PORT, added)[0] == 200
                             for n in ("gw1", "gw2")), 120, "both gateways to serve the new route")
    finally:
        finish(load, "routes changed (ROUTES_VERSION=2 docker stack deploy -c "
                     "stacks/controller.yml controller)")
    assert gateway_tasks(cluster) == before, "a gateway task was replaced"


def test_a_node_that_dies_loses_only_what_was_on_it(nopreempt: Cluster) -> None:
    """No chance to drain: the VIP holder loses its power. Clients opening new connections lose
    nothing (their SYN is sent again, and reaches the next holder); a kept-alive client loses
    the request it had in flight, or its next one on a connection the dead node held."""
    cluster = nopreempt
    holder = node(wait_for(cluster.vip_holder, 30, "a node to hold the VIP"))
    load = under_load(cluster, "the power cut")
    try:
        cluster.cut_power(holder)
        dead = time.monotonic()  # its link is down: nothing it had can answer any more
        wait_for(lambda: (h := cluster.vip_holder()) is not None and h != holder.name, 30,
                 "the VIP on another node")
        time.sleep(SETTLE)
    finally:
        tally = load.stop()
        measured(load.summary(f"{holder.name} lost its power (VIP to {cluster.vip_holder()})"))
    bring_back(cluster, holder, "node")
    # a connection opened once the node is dead never fails: its SYN is sent again, and
    # reaches the next holder
    assert [f for f in tally.failures if f.kind == "new" and f.at >= dead] == [], \
        load.summary("the power cut")
    # each client loses at most one request: the one in flight, or the next one on a kept-alive
    # connection of the dead node; after that it connects to the next holder
    per_client = Counter(f.client for f in tally.failures)
    assert all(n <= 1 for n in per_client.values()), (per_client, load.summary("the power cut"))
