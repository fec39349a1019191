"""What the operator does to the gateways loses no request of strict clients on the VIP: a
routes change, an upgrade of the gateway service, a node drained for maintenance and made active
again, a certificate rotated; and a node that loses its power loses only what was on it.

Each event runs under StrictLoad (tests/support/lifecycle.py, tests/support/strict.py:
kept-alive GETs and POSTs, a new connection per request, a 5 s deadline, nothing retried) from
the client container. The gateway drains on SIGTERM (agent/gateway/drain.py): kept-alive clients
get `Connection: close`, /readyz fails so keepalived moves the VIP, nginx serves until then.
keepalived runs without preemption here, as docs/operations.md advises for zero-loss operations:
a VIP that came back by preemption would cut the kept-alive connections of the node it leaves,
which had no chance to drain (measured: 4 resets, one per kept-alive client).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from tests.support.cluster import Cluster, measured
from tests.support.lifecycle import run_event, set_preempt


@pytest.fixture(scope="module")
def nopreempt(cluster: Cluster) -> Iterator[Cluster]:
    set_preempt(cluster, False)
    try:
        yield cluster
    finally:
        set_preempt(cluster, True)


@pytest.mark.parametrize("name", ["routes", "upgrade", "drain", "certificate"])
def test_an_operators_change_loses_nothing(nopreempt: Cluster, name: str) -> None:
    event = run_event(nopreempt, name)
    measured(event.what)
    assert event.tally.failures == [], event.what
    if name == "routes":  # a reload in each gateway, not a new task
        assert not event.replaced, event.what
    else:
        assert event.replaced, event.what
        assert event.vip_moved_s is not None, event.what  # the drain handed the VIP over
        assert event.holds >= 1, event.what  # ...holding new connections while it did


def test_a_node_that_dies_loses_only_what_was_on_it(nopreempt: Cluster) -> None:
    """No chance to drain: the VIP holder loses its power. A connection opened once the node is
    dead never fails (its SYN is sent again and reaches the next holder); each client loses at
    most one request: the one in flight, or the next one on a kept-alive connection the dead
    node held."""
    event = run_event(nopreempt, "power")
    measured(event.what)
    assert event.dead is not None
    failures = event.tally.failures
    assert [f for f in failures if f.kind == "new" and f.at >= event.dead] == [], event.what
    per_client = Counter(f.client for f in failures)
    assert all(n <= 1 for n in per_client.values()), (per_client, event.what)
