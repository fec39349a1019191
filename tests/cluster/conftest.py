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
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import CI, missing, require_programs, require_root
from tests.support.cluster import Cluster, measured, measurements


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/cluster/" in item.nodeid:
            item.add_marker(pytest.mark.cluster)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if measurements:
        terminalreporter.section("cluster measurements")
        for line in measurements:
            terminalreporter.write_line(line)


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not (CI or os.environ.get("GATEWAY_TEST_CLUSTER") == "1"):
        missing("cluster tests start dockerd and six Docker-in-Docker swarm nodes: set "
                "GATEWAY_TEST_CLUSTER=1 (CI=true runs them)")
    require_root()
    require_programs("docker", "dockerd", "debootstrap", "openssl")
    if not shutil.which("busybox") and not Path("/bin/busybox").exists():
        missing("busybox-static is not installed (scripts/setup.sh test installs it)")
    made = Cluster(tmp_path_factory.mktemp("cluster-state"))
    started = time.monotonic()
    try:
        made.up()
        measured(f"cluster up (images, 6 nodes, swarm, stacks, keepalived) in "
                 f"{time.monotonic() - started:.0f} s")
        yield made
    finally:
        made.down()
