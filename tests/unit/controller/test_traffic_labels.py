"""Labels of the route options of core/traffic.py: canary, mirror, protocol h2c
(docs/labels.md), with errors naming the label."""

from __future__ import annotations

import pytest

from agent.controller.labels import LabelError, route_from_labels
from agent.core.traffic import Canary, Mirror

LABELS = {"gateway.hosts": "shop.example.com", "gateway.port": "8080"}


def test_canary_mirror_and_h2c_from_labels() -> None:
    route = route_from_labels("shop", {
        **LABELS, "gateway.canary": "shop-next", "gateway.canary.weight": "10",
        "gateway.canary.cookie": "shop_side", "gateway.canary.header": "X-Canary",
        "gateway.canary.port": "9000", "gateway.mirror": "shop-shadow",
        "gateway.mirror.share": "5", "gateway.mirror.timeout": "500ms",
        "gateway.protocol": "h2c"})
    assert route is not None
    assert route.canary == Canary(service="shop-next", weight=10, port=9000, cookie="shop_side",
                                  header="X-Canary")
    assert route.mirror == Mirror(service="shop-shadow", share=5, timeout=0.5)
    assert route.protocol == "h2c"
    mirrored = route_from_labels("shop", {**LABELS, "gateway.mirror": "shop-shadow"})
    assert mirrored is not None
    assert mirrored.mirror == Mirror(service="shop-shadow")  # every request, 1 s


@pytest.mark.parametrize(("labels", "error"), [
    ({"gateway.canary": "next", "gateway.canary.weight": "ten"},
     "label gateway.canary.weight: 'ten': Input should be a valid integer"),
    ({"gateway.canary": "next", "gateway.canary.weight": "100"},
     "label gateway.canary.weight: 100: Input should be less than or equal to 99"),
    ({"gateway.canary.weight": "10"}, "label gateway.canary: required label is missing"),
    ({"gateway.canary": "next"}, "label gateway.canary.weight: required label is missing"),
    ({"gateway.canary": "shop", "gateway.canary.weight": "5"},
     "label gateway.canary: 'shop' is the route's own service and port"),
    ({"gateway.canary": "next", "gateway.canary.weight": "5", "gateway.canary.cookie": "a-b"},
     "label gateway.canary.cookie: 'a-b' is not a cookie name the gateway reads"),
    ({"gateway.canary": "next", "gateway.canary.weight": "5", "gateway.canary.header": "Host"},
     "label gateway.canary.header: 'Host' is a header the gateway itself sets"),
    ({"gateway.canary": "next", "gateway.canary.weight": "5", "gateway.sticky": "sid"},
     "label gateway.canary: not with 'sticky'"),
    ({"gateway.mirror": "a;b"}, "label gateway.mirror: 'a;b' is not a valid swarm service name"),
    ({"gateway.mirror": "m", "gateway.mirror.share": "0"},
     "label gateway.mirror.share: 0: Input should be greater than or equal to 1"),
    ({"gateway.mirror": "m", "gateway.mirror.timeout": "2h"},
     "label gateway.mirror.timeout: 7200 s: a mirror is given up after 60 s at most"),
    ({"gateway.mirror": "m", "gateway.mirror.color": "red"},
     "label gateway.mirror.color: unknown label"),
    ({"gateway.protocol": "h2c", "gateway.websocket": "true"},
     "label gateway.protocol: h2c: nginx passes no WebSocket upgrade"),
])
def test_bad_traffic_labels_are_refused_naming_the_label(labels: dict[str, str],
                                                         error: str) -> None:
    with pytest.raises(LabelError) as refused:
        route_from_labels("shop", {**LABELS, **labels})
    assert any(e.startswith(f"service shop: {error}") for e in refused.value.errors), \
        refused.value.errors
