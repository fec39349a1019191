"""What an operator does to the gateways, on the multi-node cluster, under strict clients on the
VIP: the tests (tests/cluster/test_lifecycle.py) assert on these events, the benchmark's
cluster part (bench/cluster.py) reports them.

Each event runs under StrictLoad (tests/support/strict.py: kept-alive GETs and POSTs, a new
connection per request, a 5 s deadline, nothing retried) from the client container, with
SETTLE seconds of load before and after, while a watcher notes who holds the VIP every 0.1 s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.support.cluster import (
    GATEWAY_PORT,
    SERVICES,
    VIP,
    Cluster,
    node,
    wait_for,
)
from tests.support.cluster_failover import bring_back
from tests.support.strict import StrictLoad, Tally

HOST = "managerhttp"
SETTLE = 3.0  # seconds of load before and after an event
EVENTS = ("routes", "upgrade", "drain", "certificate", "power")


@dataclass
class Event:
    name: str
    what: str = ""  # the summary line (StrictLoad.summary)
    tally: Tally = field(default_factory=Tally)
    started: float = 0.0  # time.monotonic() of the operator's command
    dead: float | None = None  # power: when the node's link went down
    holders: list[tuple[float, str | None]] = field(default_factory=list)  # (seconds, holder)
    replaced: bool = False  # a gateway task was replaced
    holds: int = 0  # hand-overs the watchers held new connections for (agent/check/hold.py)

    @property
    def vip_moved_s(self) -> float | None:
        """Seconds from the command until another node held the VIP (None: it never moved)."""
        first = self.holders[0][1] if self.holders else None
        return next((at for at, h in self.holders if h is not None and h != first), None)

    @property
    def vip_back_s(self) -> float | None:
        """Seconds until the VIP was on the first holder again, after it had moved."""
        moved = self.vip_moved_s
        first = self.holders[0][1] if self.holders else None
        if moved is None:
            return None
        return next((at for at, h in self.holders if at > moved and h == first), None)

    def record(self) -> dict[str, object]:
        return {"event": self.name, "label": WORDS[self.name], "requests": self.tally.requests,
                "failed": len(self.tally.failures), "longest_s": round(self.tally.longest, 3),
                "vip_moved_s": self.vip_moved_s, "vip_back_s": self.vip_back_s,
                "gateway_replaced": self.replaced, "summary": self.what}


def gateway_tasks(cluster: Cluster) -> dict[str, str]:
    """{node: the container of its running http-gateway task}."""
    return {t["node"]: t["container"] for t in cluster.tasks("http-gateway")}


def both_serving(cluster: Cluster, before: dict[str, str] | None = None) -> bool:
    """A gateway task on both gateway nodes (none of `before`'s), each answering."""
    now = gateway_tasks(cluster)
    if set(now) != {"gw1", "gw2"}:
        return False
    if before is not None and set(now.values()) & set(before.values()):
        return False
    return all(cluster.client_get(node(n).address, GATEWAY_PORT, HOST)[0] == 200 for n in now)


def holds(cluster: Cluster) -> int:
    """How often the gateway nodes' watchers held new connections for a hand-over."""
    return sum(int(cluster.exec(n, "sh", "-c", "grep -c 'hold: new connections' "
                                "/var/log/gateway-check.log || true").strip() or 0)
               for n in (node("gw1"), node("gw2")))


def set_preempt(cluster: Cluster, preempt: bool) -> None:
    """keepalived on the gateway nodes restarted with or without preemption; gw1 holds the VIP."""
    cluster.start_keepalived_all(preempt=preempt)
    wait_for(lambda: cluster.vip_holder() == "gw1", 60, "gw1 to hold the VIP")


def _upgrade(cluster: Cluster, event: Event) -> None:
    before = gateway_tasks(cluster)
    cluster.docker("service", "update", "--force", "--detach", SERVICES["http-gateway"])
    wait_for(lambda: both_serving(cluster, before), 240, "both gateway tasks replaced",
             interval=1)


def _drain(cluster: Cluster, event: Event) -> None:
    drained = node(wait_for(cluster.vip_holder, 30, "a node to hold the VIP"))
    cluster.docker("node", "update", "--availability", "drain", drained.hostname)
    wait_for(lambda: drained.name not in gateway_tasks(cluster), 120,
             f"the gateway task on {drained.name} to stop", interval=0.5)
    wait_for(lambda: cluster.vip_holder() not in (None, drained.name), 30,
             "the VIP to leave the drained node")
    cluster.docker("node", "update", "--availability", "active", drained.hostname)
    wait_for(lambda: both_serving(cluster), 240, "the gateway back on the drained node",
             interval=1)


def _certificate(cluster: Cluster, event: Event) -> None:
    """docs/tls.md's rotation: a new secret mounted where the old one was."""
    before = gateway_tasks(cluster)
    version = f"demo_crt_{int(time.time())}"
    cluster.manager_shell(f"docker secret create {version} .work/demo/certs/demo.crt")
    # the secret mounted as demo_crt now (itself, or an earlier rotation's)
    mounted = cluster.docker(
        "service", "inspect", "-f", '{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}'
        '{{if eq .File.Name "demo_crt"}}{{.SecretName}}{{end}}{{end}}',
        SERVICES["http-gateway"]).strip()
    cluster.docker("service", "update", "--detach", "--secret-rm", mounted,
                   "--secret-add", f"source={version},target=demo_crt,mode=0444",
                   SERVICES["http-gateway"])
    wait_for(lambda: both_serving(cluster, before), 240, "both gateway tasks replaced",
             interval=1)


def _routes(cluster: Cluster, event: Event) -> None:
    """docs/swarm.md's command, with a route added to the routes file; a new config name each
    time (a cluster may be reused)."""
    version = int(time.time())
    added = f"lifecycle-{version}"
    assert cluster.client_get(VIP, GATEWAY_PORT, added)[0] == 404
    cluster.manager_shell(f"printf '  - hosts: [{added}]\\n    service: managerhttp\\n"
                          f"    port: 8888\\n' >> stacks/routes.yml")
    cluster.manager_shell(f"ROUTES_VERSION={version} docker stack deploy --resolve-image never "
                          "-c stacks/controller.yml controller")
    wait_for(lambda: all(cluster.client_get(node(n).address, GATEWAY_PORT, added)[0] == 200
                         for n in ("gw1", "gw2")), 120, "both gateways to serve the new route")


def _power(cluster: Cluster, event: Event) -> None:
    """The VIP holder loses its power: no chance to drain. It boots again afterwards."""
    holder = node(wait_for(cluster.vip_holder, 30, "a node to hold the VIP"))
    cluster.cut_power(holder)
    event.dead = time.monotonic()
    wait_for(lambda: cluster.vip_holder() not in (None, holder.name), 30,
             "the VIP on another node")
    time.sleep(SETTLE)
    bring_back(cluster, holder, "node")


ACTIONS: dict[str, Callable[[Cluster, Event], None]] = {
    "routes": _routes, "upgrade": _upgrade, "drain": _drain, "certificate": _certificate,
    "power": _power}
WORDS = {
    "routes": "routes changed (docs/swarm.md: the controller stack under a new ROUTES_VERSION)",
    "upgrade": "gateway upgraded (docker service update --force)",
    "drain": "VIP holder drained, then active again (docker node update --availability)",
    "certificate": "certificate rotated (a new secret, docker service update)",
    "power": "VIP holder lost its power (link down, then everything killed)",
}


def run_event(cluster: Cluster, name: str) -> Event:
    """One event under StrictLoad on the VIP; what the clients saw and where the VIP was."""
    event = Event(name)
    wait_for(lambda: cluster.client_get(VIP, GATEWAY_PORT, HOST)[0] == 200, 60,
             "the VIP to answer")
    before = gateway_tasks(cluster)
    held = holds(cluster)
    load = StrictLoad(cluster.client_namespace(), VIP, GATEWAY_PORT, HOST)
    stop_watch = threading.Event()

    def watch() -> None:
        while not stop_watch.is_set():
            holder = cluster.vip_holder()
            event.holders.append((time.monotonic() - event.started, holder))
            stop_watch.wait(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        time.sleep(SETTLE)
        assert load.tally.ok > 0, f"no answer on the VIP before: {WORDS[name]}"
        event.started = time.monotonic()
        watcher.start()
        ACTIONS[name](cluster, event)
        time.sleep(SETTLE)
    finally:
        stop_watch.set()
        event.tally = load.stop()
        if watcher.is_alive():
            watcher.join(5)
    event.replaced = gateway_tasks(cluster) != before
    event.holds = holds(cluster) - held
    moved, back = event.vip_moved_s, event.vip_back_s
    vip = "the VIP stayed" if moved is None else (
        f"the VIP moved after {moved:.1f} s" + (f", back after {back:.1f} s" if back else ""))
    event.what = f"{load.summary(WORDS[name])}; {vip}"
    return event
