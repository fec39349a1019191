"""The article's scenario on a real multi-node swarm on this machine (tests/support/cluster.py).

Runs when CI=true or GATEWAY_TEST_CLUSTER=1 (it starts dockerd if none answers, builds images and
runs six Docker-in-Docker nodes on 10.213.70.0/24); skips otherwise. One cluster serves every test
of this folder and is removed after the last one (containers, their volumes, the network, the
images it built; the debootstrap base images are kept as a cache). Every client runs in the
cluster's client container.

Measurements (failover times, requests lost, the time to come up) are printed at the end of the
run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import require_docker_tier
from tests.support.cluster import Cluster, measured


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_docker_tier("GATEWAY_TEST_CLUSTER",
                        "cluster tests start dockerd and six Docker-in-Docker swarm nodes")
    reuse = os.environ.get("GATEWAY_TEST_CLUSTER_STATE")
    if reuse:  # the cluster `make cluster` made (its --state): kept after the tests
        yield Cluster(Path(reuse))
        return
    made = Cluster(tmp_path_factory.mktemp("cluster-state"))
    started = time.monotonic()
    try:
        made.up()
        measured(f"cluster up (images, 6 nodes, swarm, stacks, keepalived) in "
                 f"{time.monotonic() - started:.0f} s")
        yield made
    finally:
        made.down()
