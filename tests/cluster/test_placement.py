"""Tasks land where the node labels say; a host-mode global gateway runs once per labelled node."""

from __future__ import annotations

import json
from collections import Counter

from tests.support.cluster import GATEWAY_PORT, NODES, Cluster


def test_tasks_run_on_the_nodes_their_zone_labels_name(cluster: Cluster) -> None:
    zones = {"managerhttp": ({"manager"}, 3), "intrahttp": ({"intra1", "intra2"}, 2),
             "dmzhttp": ({"dmz"}, 2), "gateway-controller": ({"manager"}, 1)}
    for service, (allowed, replicas) in zones.items():
        nodes = [t["node"] for t in cluster.tasks(service)]
        assert len(nodes) == replicas, f"{service}: {nodes}"
        assert set(nodes) <= allowed, f"{service} runs on {nodes}, its label allows {allowed}"
    # swarm spreads a zone's replicas over the zone's nodes
    assert {t["node"] for t in cluster.tasks("intrahttp")} == {"intra1", "intra2"}


def test_a_host_mode_global_gateway_runs_once_per_labelled_node(cluster: Cluster) -> None:
    assert Counter(t["node"] for t in cluster.tasks("http-gateway")) == {"gw1": 1, "gw2": 1}
    assert Counter(t["node"] for t in cluster.tasks("dmz-gateway")) == {"dmz": 1}
    for service in ("gateway_http-gateway", "gateway_dmz-gateway"):
        ports = json.loads(cluster.docker("service", "inspect", "-f", "{{json .Endpoint.Ports}}",
                                          service))
        assert ports
        assert {p["PublishMode"] for p in ports} == {"host"}, ports
    # what a client sees: the gateway's port answers on the gateway nodes, and nowhere else
    for n in NODES:
        status, _ = cluster.client_get(n.address, GATEWAY_PORT, "managerhttp")
        if n.name in ("gw1", "gw2"):
            assert status == 200, n.name
        else:
            assert status == 0, f"{n.name}:{GATEWAY_PORT} answered {status}: no gateway runs there"
