"""Real keepalived and nginx in network namespaces (root): see tests/support/netns.py."""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

from tests.support import require_programs, require_root
from tests.support.netns import Cluster

FAILED = pytest.StashKey[bool]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/keepalived/" in item.nodeid:
            item.add_marker(pytest.mark.keepalived)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[FAILED] = report.failed



@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Three nodes and a client on a bridge in its own namespace; all of it gone afterwards."""
    require_root()
    require_programs("ip", "keepalived", "nginx")
    with Cluster(size=3) as made:
        yield made
        if request.node.stash.get(FAILED, False):
            print(made.logs())  # shown under "Captured stdout teardown"
