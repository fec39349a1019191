"""The dmz gateway on the dmz node cannot reach any intra task: by no Host, absolute URI,
forwarded header or address literal, and not at the network level either."""

from __future__ import annotations

from tests.support.cluster import (
    DMZ_GATEWAY_PORT,
    GATEWAY_PORT,
    Cluster,
    measured,
    node,
)

PORT = 8888


def tries(intra_addresses: list[str]) -> list[tuple[str, str, str]]:
    """(what, request target, headers): each an attempt to be served by an intra task."""
    names = ["intrahttp", "intra.example.com", "managerhttp", "manager.example.com",
             "INTRAHTTP", "intrahttp.", f"intrahttp:{PORT}", f"intrahttp:{DMZ_GATEWAY_PORT}",
             "tasks.intrahttp", "intra_intrahttp", "tasks.intra_intrahttp"]
    literals = [*intra_addresses, *(f"{a}:{PORT}" for a in intra_addresses)]
    out: list[tuple[str, str, str]] = []
    for host in [*names, *literals]:
        out.append((f"Host: {host}", "/", f"Host: {host}\r\n"))
        out.append((f"absolute URI http://{host}/", f"http://{host}/", "Host: dmzhttp\r\n"))
        out.append((f"X-Forwarded-Host: {host}", "/",
                    f"Host: dmzhttp\r\nX-Forwarded-Host: {host}\r\n"))
        out.append((f"Forwarded: host={host}", "/", f"Host: dmzhttp\r\nForwarded: host={host}\r\n"))
    for path in ("/../intrahttp/", "//intrahttp/", f"/http://intrahttp:{PORT}/",
                 "/%2e%2e/intrahttp/"):
        out.append((f"path {path}", path, "Host: dmzhttp\r\n"))
    out.append(("X-Original-URL", "/", "Host: dmzhttp\r\nX-Original-URL: http://intrahttp/\r\n"))
    out.append(("X-Rewrite-URL", "/", "Host: dmzhttp\r\nX-Rewrite-URL: http://intrahttp/\r\n"))
    return out


def send(cluster: Cluster, address: str, port: int, target: str, headers: str) -> tuple[int, str]:
    # client_get adds the Host line: put the whole header block in its place instead
    host, _, rest = headers.partition("\r\n")
    return cluster.client_get(address, port, host.removeprefix("Host: "), target=target,
                              headers=rest)


def test_the_dmz_gateway_reaches_no_intra_task_by_any_trick(cluster: Cluster) -> None:
    intra = cluster.tasks("intrahttp")
    forbidden = {t["container"] for t in intra} | cluster.task_hostnames("managerhttp")
    dmz_tasks = cluster.task_hostnames("dmzhttp")
    addresses = [a for t in intra for a in t["addresses"].split()]
    dmz, gw1 = node("dmz"), node("gw1")
    # the control: the intra tasks do answer, through the gateway that serves every zone
    assert send(cluster, gw1.address, GATEWAY_PORT, "/", "Host: intrahttp\r\n")[1] in forbidden
    assert send(cluster, dmz.address, DMZ_GATEWAY_PORT, "/", "Host: dmzhttp\r\n")[1] in dmz_tasks
    reached, statuses = [], []
    attempts = tries(addresses)
    for what, target, headers in attempts:
        status, body = send(cluster, dmz.address, DMZ_GATEWAY_PORT, target, headers)
        statuses.append(status)
        assert status != 0, f"{what}: the dmz gateway did not answer at all"
        if body in forbidden:
            reached.append(what)
        elif status == 200:
            # served, then by a dmz task: the trick fell back to the dmz route
            assert body in dmz_tasks, f"{what}: answered 200 with {body!r}"
    assert reached == [], f"the dmz gateway reached an intra or manager task by {reached}"
    measured(f"dmz gateway reaching intra: 0 of {len(attempts)} tries (statuses: "
             + ", ".join(f"{s} x{statuses.count(s)}" for s in sorted(set(statuses))) + ")")


def test_the_dmz_gateway_container_has_no_route_to_intra_tasks(cluster: Cluster) -> None:
    dmz = node("dmz")
    container = cluster.gateway_container(dmz, "dmz-gateway")
    assert container is not None

    def connects(address: str) -> bool:
        """A TCP connection from inside the dmz gateway's container (gateway-check's probe)."""
        return cluster.docker(
            "exec", container, "sh", "-c",
            f"gateway-check --tcp {address}:{PORT} --timeout 2 --quiet && echo connected",
            on=dmz, check=False).strip() == "connected"

    dmz_addresses = [a for t in cluster.tasks("dmzhttp") for a in t["addresses"].split()]
    assert dmz_addresses
    assert all(connects(a) for a in dmz_addresses)  # the probe works
    intra_addresses = [a for t in cluster.tasks("intrahttp") for a in t["addresses"].split()]
    assert intra_addresses
    assert [a for a in intra_addresses if connects(a)] == []
