"""ACME through the real programs: Pebble (a real ACME server that validates HTTP-01 for real),
`gateway-agent controller` as the only ACME client, and two gateways (real nginx), each on its
own address, as two nodes behind one name would be.

Pebble resolves the names in its own DNS server: a.test to gateway A's address, b.test to
gateway B's. So the challenge for a.test reaches gateway A only, and the one for b.test gateway B
only; each must pass it to the controller. Then both gateways must serve both certificates,
which verify against Pebble's root.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.integration.conftest import TASK_ADDRESSES
from tests.support import free_port, wait_until
from tests.support.controller import ControllerProcess
from tests.support.fakedocker import FakeDocker
from tests.support.gateway import Agent, Dnsmasq, Upstream, http_get, metric_samples
from tests.support.pebble import Pebble

TOKEN = "0123456789abcdef0123456789abcdef"
DMZ_TOKEN = "dmz0123456789abcdef0123456789ab"
ADDRESS_A, ADDRESS_B, NOBODY = "127.0.20.1", "127.0.20.2", "127.0.20.3"


def free_on_all(*addresses: str) -> int:
    """A TCP port free on every one of these addresses."""
    while True:
        port = free_port(addresses[0])
        try:
            for address in addresses[1:]:
                with socket.socket() as s:
                    s.bind((address, port))
        except OSError:
            continue
        return port


class Gateway:
    """A gateway on its own loopback address: plain HTTP on `http_port` (the port Pebble
    validates on), HTTPS on its own port."""

    def __init__(self, agent: Agent, address: str, http_port: int, https_port: int) -> None:
        self.agent, self.address = agent, address
        self.http_port, self.https_port = http_port, https_port

    def get(self, host: str, root_pem: str) -> tuple[int, str, int]:
        """A request over HTTPS naming `host`, verified against `root_pem`: (status, body,
        serial of the certificate served). Raises ssl.SSLError when the handshake fails."""
        ctx = ssl.create_default_context(cadata=root_pem)
        sock = socket.create_connection((self.address, self.https_port), timeout=5)
        conn = http.client.HTTPConnection(self.address, self.https_port, timeout=5)
        try:
            conn.sock = ctx.wrap_socket(sock, server_hostname=host)
            conn.putrequest("GET", "/", skip_host=True)
            conn.putheader("Host", host)
            conn.endheaders()
            resp = conn.getresponse()
            body = resp.read().decode()
            der = conn.sock.getpeercert(binary_form=True)
            assert der is not None
            return resp.status, body, x509.load_der_x509_certificate(der).serial_number
        finally:
            conn.close()
            sock.close()

    def serves(self, host: str, root_pem: str) -> int | None:
        """The serial of the verified certificate `host` is served with, or None."""
        try:
            status, body, serial = self.get(host, root_pem)
        except (OSError, ssl.SSLError):
            return None
        return serial if (status, body) == (200, "task1") else None


def controller_call(controller: ControllerProcess, path: str, method: str = "GET",
                    token: str | None = TOKEN) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, body, _ = http_get(controller.port, "localhost", path, headers=headers,
                               method=method)
    return status, body


def controller_metrics(controller: ControllerProcess) -> dict[str, float]:
    return metric_samples(controller.get("/metrics")[1])


@pytest.fixture
def acme_world(tmp_path: Path, dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
               agent_on: Callable[..., Agent]) -> Iterator[dict[str, Any]]:
    """Pebble, its DNS, a controller with ACME on, the labelled service, two gateways."""
    dns.set("tasks.shop", [TASK_ADDRESSES[0]])
    http_port = free_on_all(ADDRESS_A, ADDRESS_B, NOBODY)
    (tmp_path / "pebble-dns").mkdir()
    pebble_dns = Dnsmasq(tmp_path / "pebble-dns", address="127.0.0.61")
    pebble_dns.start()
    pebble_dns.set("a.test", [ADDRESS_A])
    pebble_dns.set("b.test", [ADDRESS_B])
    pebble_dns.set("c.test", [NOBODY])  # no gateway there: Pebble's validation must fail
    pebble = Pebble(tmp_path / "pebble", pebble_dns.nameserver, http_port)
    pebble.start()
    docker = FakeDocker()
    docker.create("shop", {"gateway.hosts": "a.test,b.test", "gateway.port": str(upstream_port),
                           "gateway.tls": "acme"})
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    dmz_token_file = tmp_path / "token-dmz"
    dmz_token_file.write_text(DMZ_TOKEN + "\n")
    dmz_token_file.chmod(0o600)
    controller_dir = tmp_path / "controller"
    controller_dir.mkdir()
    controller_args = [
        "--controller-token-file", str(token_file), "--zone-token-files",
        f"dmz={dmz_token_file}", "--acme-directory", pebble.directory_url,
        "--acme-ca-bundle", str(pebble.ca_bundle), "--acme-email", "ops@example.com",
        "--acme-state-dir", str(controller_dir / "acme"), "--acme-retry-min", "3600",
        "--new-service-wait", "0"]
    controller = ControllerProcess(controller_dir, docker, controller_args, token=TOKEN)
    controller.start()
    gateways = []
    for name, address in (("a", ADDRESS_A), ("b", ADDRESS_B)):
        https_port = free_port(address)
        agent = agent_on(dns.nameserver, [], "--routes-url", controller.url,
                         "--controller-token-file", str(token_file),
                         "--listen", f"{address}:{http_port}",
                         "--https-listen", f"{address}:{https_port}",
                         "--state-dir", str(tmp_path / f"state-{name}"),
                         workdir=tmp_path / f"gateway-{name}")
        gateways.append(Gateway(agent, address, http_port, https_port))
    world: dict[str, Any] = {
        "pebble": pebble, "pebble_dns": pebble_dns, "docker": docker, "controller": controller,
        "controller_args": controller_args, "controller_dir": controller_dir,
        "gateways": gateways}
    try:
        yield world
    finally:
        world["controller"].stop()
        docker.stop()
        pebble.stop()
        pebble_dns.stop()


def both_serve(gateways: list[Gateway], root: str) -> dict[str, set[int | None]] | None:
    """{host: the serials the two gateways serve it with}, once both serve both hosts."""
    seen = {h: {g.serves(h, root) for g in gateways} for h in ("a.test", "b.test")}
    return seen if all(None not in serials for serials in seen.values()) else None


def test_acme_certificates_are_obtained_through_either_gateway_and_served_by_both(
        acme_world: dict[str, Any]) -> None:
    pebble: Pebble = acme_world["pebble"]
    controller: ControllerProcess = acme_world["controller"]
    gateways: list[Gateway] = acme_world["gateways"]
    root = pebble.root_pem()

    seen = wait_until(lambda: both_serve(gateways, root), 60,
                      f"both gateways to serve a.test and b.test with Pebble's certificates; "
                      f"controller log:\n{controller.log()}\npebble log:\n{pebble.log()}",
                      interval=0.2)
    # one certificate per host, the same on both gateways, verified against Pebble's root
    assert all(len(serials) == 1 for serials in seen.values()), seen
    assert seen["a.test"] != seen["b.test"]
    # each challenge was answered through the one gateway Pebble reached for that name; what
    # is not a token's shape never reaches the controller
    for gateway in gateways:
        def challenge(token: str, g: Gateway = gateway) -> tuple[int, str]:
            status, body, _ = http_get(g.http_port, "a.test", "/.well-known/acme-challenge/"
                                       + token, address=g.address)
            return status, body
        assert challenge("x" * 43) == (404, "no such challenge\n")  # the controller's answer
        assert challenge("not.a.token.but.long.enough") == (
            404, "404 not an ACME challenge token\n")
        # nginx resolves the dots first: /routes of the service, never the controller's
        assert challenge("../../routes") == (200, "task1")
        assert challenge("x") == (404, "404 not an ACME challenge token\n")
    status = controller.status()["acme"]
    assert set(status["hosts"]) == {"a.test", "b.test"}
    assert all(h["certificate"] and h["failures"] == 0 for h in status["hosts"].values())
    assert status["account"], status
    for gateway in gateways:
        tls = gateway.agent.status()["tls"]
        assert tls["a.test"]["acme"], tls
        assert tls["a.test"]["serving"], tls
        assert tls["a.test"]["error"] is None

    # the keys go to those who show the token only
    assert controller_call(controller, "/routes", token=None)[0] == 401
    assert controller_call(controller, "/routes", token="x" * 32)[0] == 401
    routes = json.loads(controller_call(controller, "/routes")[1])
    assert sorted(c["host"] for c in routes["certificates"]) == ["a.test", "b.test"]
    assert controller_call(controller, "/acme/renew", "POST", token=None)[0] == 401

    # renewal, forced: a new certificate, served by both gateways
    before = {h: next(iter(s)) for h, s in seen.items()}
    status_code, body = controller_call(controller, "/acme/renew?host=a.test", "POST")
    assert (status_code, json.loads(body)) == (202, {"renewing": ["a.test"]})
    wait_until(lambda: {g.serves("a.test", root) for g in gateways} - {before["a.test"], None}
               and len({g.serves("a.test", root) for g in gateways}) == 1, 30,
               "both gateways to serve the renewed certificate of a.test", interval=0.2)
    assert {g.serves("b.test", root) for g in gateways} == {before["b.test"]}  # untouched
    metrics = controller_metrics(controller)
    assert metrics['gateway_controller_acme_orders_total{result="success"}'] == 3
    assert metrics['gateway_controller_acme_failures{host="a.test"}'] == 0


def renew_until_refused(controller: ControllerProcess, host: str, within: float = 60) -> None:
    """Force a renewal of `host` and wait until it is refused (failures: 1). Pebble reuses a
    valid authorization one time in a hundred even with PEBBLE_AUTHZREUSE=0 (its test is
    `rand.Intn(100) > percent`): that renewal is issued without a validation, and a new one is
    forced (seen in a CI run: "Order ... is fully authorized", no validation)."""
    issued = 'gateway_controller_acme_orders_total{result="success"}'
    deadline = time.monotonic() + within
    while True:
        before = controller_metrics(controller)[issued]
        assert controller_call(controller, f"/acme/renew?host={host}", "POST")[0] == 202

        def settled(before: float = before) -> str | None:
            if controller.status()["acme"]["hosts"][host]["failures"] == 1:
                return "refused"
            return "issued" if controller_metrics(controller)[issued] > before else None

        if wait_until(settled, max(1.0, deadline - time.monotonic()),
                      "the renewal to be refused", interval=0.2) == "refused":
            return


def test_acme_failures_are_reported_and_what_serves_keeps_serving(
        acme_world: dict[str, Any], tmp_path: Path) -> None:
    pebble: Pebble = acme_world["pebble"]
    controller: ControllerProcess = acme_world["controller"]
    gateways: list[Gateway] = acme_world["gateways"]
    docker: FakeDocker = acme_world["docker"]
    root = pebble.root_pem()
    seen = wait_until(lambda: both_serve(gateways, root), 60, "both gateways to serve",
                      interval=0.2)
    serials = {h: next(iter(s)) for h, s in seen.items()}

    # Pebble refuses: c.test resolves where no gateway answers; the others are not affected
    docker.create("elsewhere", {"gateway.hosts": "c.test", "gateway.port": "8888",
                                "gateway.tls": "acme"})
    wait_until(lambda: controller.status()["acme"]["hosts"].get("c.test", {}).get("failures"),
               60, "the order for c.test to fail", interval=0.2)
    failed = controller.status()["acme"]["hosts"]["c.test"]
    assert failed["certificate"] is False
    assert failed["last_error"].startswith("validation failed: c.test:"), failed
    assert controller_metrics(controller)['gateway_controller_acme_failures{host="c.test"}'] == 1
    for gateway in gateways:
        tls = wait_until(lambda g=gateway: g.agent.status()["tls"].get("c.test"), 10,
                         "the gateway to know c.test")
        assert tls["serving"] is False
        assert "no certificate from the controller's ACME client yet" in tls["error"]
        assert {h: gateway.serves(h, root) for h in serials} == serials

    # Pebble refuses a renewal (a.test now resolves where no gateway is): reported, and the
    # current certificate keeps serving
    acme_world["pebble_dns"].set("a.test", [NOBODY])
    renew_until_refused(controller, "a.test")
    refused = controller.status()["acme"]["hosts"]["a.test"]
    assert refused["certificate"] is True
    assert refused["last_error"].startswith("validation failed: a.test:"), refused
    assert controller_metrics(controller)['gateway_controller_acme_failures{host="a.test"}'] == 1
    for gateway in gateways:
        assert {h: gateway.serves(h, root) for h in serials} == serials

    # Pebble down: a renewal fails, is reported, and the current certificates keep serving
    pebble.stop()
    assert controller_call(controller, "/acme/renew?host=b.test", "POST")[0] == 202
    wait_until(lambda: controller.status()["acme"]["hosts"]["b.test"]["failures"] == 1, 30,
               "the renewal to fail", interval=0.2)
    failed = controller.status()["acme"]["hosts"]["b.test"]
    assert failed["certificate"] is True  # the one it has
    assert "Connection" in failed["last_error"], failed
    assert controller_metrics(controller)['gateway_controller_acme_failures{host="b.test"}'] == 1
    for gateway in gateways:
        assert {h: gateway.serves(h, root) for h in serials} == serials

    # the controller away: the gateways keep serving, and one restarted meanwhile serves the
    # certificates it saved (--state-dir), without asking anyone
    controller.stop()
    restarted = gateways[0]
    restarted.agent.stop()
    restarted.agent.start()
    wait_until(lambda: {h: restarted.serves(h, root) for h in serials} == serials, 20,
               f"the restarted gateway to serve its saved certificates; log:\n"
               f"{restarted.agent.log_tail()}", interval=0.2)
    assert {h: gateways[1].serves(h, root) for h in serials} == serials

    # the controller back, Pebble still down: it has its certificates from its volume and
    # orders nothing again
    again = ControllerProcess(acme_world["controller_dir"], docker,
                              acme_world["controller_args"], token=TOKEN)
    acme_world["controller"] = again
    again.start()
    hosts = wait_until(lambda: again.status()["acme"]["hosts"] or None, 10, "the hosts")
    assert hosts["a.test"]["certificate"]
    assert hosts["b.test"]["certificate"]
    routes = json.loads(controller_call(again, "/routes")[1])
    assert sorted(c["host"] for c in routes["certificates"]) == ["a.test", "b.test"]
    assert controller_metrics(again)['gateway_controller_acme_orders_total{result="success"}'] \
        == 0


def test_a_dmz_token_gets_no_other_zone_s_key_and_sees_its_zone_only(
        acme_world: dict[str, Any], upstream_port: int) -> None:
    """A service in zone dmz names a host another zone serves (a.test, under another path):
    the dmz gateways must not get a.test's private key, and the dmz token learns nothing of
    the other zones from /status or /metrics."""
    pebble: Pebble = acme_world["pebble"]
    controller: ControllerProcess = acme_world["controller"]
    docker: FakeDocker = acme_world["docker"]
    wait_until(lambda: both_serve(acme_world["gateways"], pebble.root_pem()), 60,
               "both gateways to serve", interval=0.2)
    docker.create("intruder", {"gateway.hosts": "a.test", "gateway.path": "/login",
                               "gateway.zone": "dmz", "gateway.port": str(upstream_port),
                               "gateway.tls": "acme"})

    def dmz_routes() -> dict[str, Any] | None:
        status, body = controller_call(controller, "/routes?zone=dmz", token=DMZ_TOKEN)
        assert status == 200, body
        doc: dict[str, Any] = json.loads(body)
        return doc if doc["routes"] else None

    # the intruder's route is in the dmz document (the controller took the change) ...
    doc = wait_until(dmz_routes, 10, "the dmz routes to have the intruder's route")
    assert [(r["source"], r["route"]["path"]) for r in doc["routes"]] == [
        ("service intruder", "/login")]
    # ... but not a.test's certificate: a.test is served in another zone too
    assert doc["certificates"] == []
    # the every-zone token still gets both
    every = json.loads(controller_call(controller, "/routes")[1])
    assert sorted(c["host"] for c in every["certificates"]) == ["a.test", "b.test"]

    # /status and /metrics: not without a token, not with the dmz token; its zone's status
    # only with it
    before = controller_metrics(controller)["gateway_controller_unauthorized_requests_total"]
    for path in ("/status", "/metrics", "/status?zone=", "/routes?zone=dmz&zone=intra"):
        for token in (None, DMZ_TOKEN):
            assert controller_call(controller, path, token=token)[0] == 401, (path, token)
    assert controller_call(controller, "/metrics?zone=dmz", token=DMZ_TOKEN)[0] == 401
    after = controller_metrics(controller)["gateway_controller_unauthorized_requests_total"]
    assert after - before == 9
    status, body = controller_call(controller, "/status?zone=dmz", token=DMZ_TOKEN)
    assert status == 200, body
    seen = json.loads(body)
    assert [(r["service"], r["path"]) for r in seen["routes"]] == [("intruder", "/login")]
    assert seen["acme"]["hosts"] == {}  # a.test's certificate is not the dmz's
    assert "b.test" not in body
    assert '"shop"' not in body
    # /healthz and the challenges stay open (the CA fetches them without credentials)
    assert controller_call(controller, "/healthz", token=None)[0] == 200
    assert controller_call(controller, "/.well-known/acme-challenge/" + "x" * 43,
                           token=None) == (404, "no such challenge\n")
