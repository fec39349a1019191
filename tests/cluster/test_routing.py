"""Each gateway routes by Host to tasks on other nodes, over the overlay; label routes from the
controller on the manager reach the gateways on other nodes."""

from __future__ import annotations

import ipaddress
import time

import pytest

from tests.support.cluster import (
    ADDRESS_POOL,
    GATEWAY_PORT,
    IMAGES,
    Cluster,
    measured,
    node,
    wait_for,
)


def answering(cluster: Cluster, address: str, host: str, requests: int) -> set[str]:
    """The bodies of the 200 answers to `requests` requests for `host` (task hostnames)."""
    seen = set()
    for _ in range(requests):
        status, body = cluster.client_get(address, GATEWAY_PORT, host)
        if status == 200:
            seen.add(body)
    return seen


@pytest.mark.parametrize("gateway", ["gw1", "gw2"])
def test_each_gateway_routes_by_host_to_tasks_on_other_nodes(cluster: Cluster,
                                                              gateway: str) -> None:
    address = node(gateway).address
    for host, service in (("managerhttp", "managerhttp"), ("intrahttp", "intrahttp"),
                          ("dmzhttp", "dmzhttp")):
        tasks = cluster.tasks(service)
        assert tasks
        assert all(t["node"] != gateway for t in tasks), tasks
        # the task addresses are on the swarm's overlays: the only way from this gateway to them
        pool = ipaddress.ip_network(ADDRESS_POOL)
        assert all(ipaddress.ip_address(a) in pool for t in tasks for a in t["addresses"].split())
        want = {t["container"] for t in tasks}
        wait_for(lambda w=want, h=host: answering(cluster, address, h, 3 * len(w) + 3) == w,
                 30, f"{gateway} to answer {host} from each of its tasks {sorted(want)}")
    status, _ = cluster.client_get(address, GATEWAY_PORT, "unknown.example")
    assert status == 404


def test_label_routes_from_the_controller_reach_gateways_on_other_nodes(cluster: Cluster) -> None:
    (controller,) = cluster.tasks("gateway-controller")
    assert controller["node"] == "manager"
    name = "gwcluster-labelled"
    created = time.monotonic()
    # --no-resolve-image: no registry to ask for the image's digest (the CLI would wait 20 s
    # for the lookup to time out; the nodes have the image loaded)
    cluster.docker("service", "create", "--detach", "--no-resolve-image", "--name", name,
                   "--network", "gateway-intra", "--label", "gateway.hosts=shop.example.com",
                   "--label", "gateway.port=8888",
                   "--constraint", "node.labels.zone.intra == true", IMAGES["APP_IMAGE"])
    try:
        task = wait_for(lambda: cluster.tasks(name), 60, f"{name}'s task to run")[0]
        assert task["node"] in ("intra1", "intra2")
        for gateway in ("gw1", "gw2"):
            address = node(gateway).address
            wait_for(lambda a=address: cluster.client_get(a, GATEWAY_PORT,
                                                          "shop.example.com")[0] == 200,
                     150, f"{gateway} to route shop.example.com", interval=0.2)
            assert cluster.client_get(address, GATEWAY_PORT, "shop.example.com") == (
                200, task["container"])
        measured(f"a label route reached both gateways {time.monotonic() - created:.1f} s after "
                 f"`docker service create` (the controller on the manager, the task on "
                 f"{task['node']})")
    finally:
        cluster.docker("service", "rm", name, check=False)
    for gateway in ("gw1", "gw2"):
        address = node(gateway).address
        wait_for(lambda a=address: cluster.client_get(a, GATEWAY_PORT,
                                                      "shop.example.com")[0] == 404,
                 60, f"{gateway} to drop the route of the removed service")
