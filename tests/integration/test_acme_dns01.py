"""DNS-01 through the real programs: Pebble validating DNS-01 for real against a real BIND 9,
which takes the controller's RFC 2136 updates (signed with a TSIG key the test made with
tsig-keygen) and answers Pebble's TXT queries; `gateway-agent controller` as the only ACME
client; two gateways (real nginx) serving what it obtains.

The hosts: `*.shop.test`, a wildcard, which only DNS-01 can validate, and `api.shop.test`,
which Pebble resolves to nothing (BIND has no address for it): HTTP-01 cannot reach any gateway
for it, DNS-01 (`--acme-challenge dns-01`) validates it all the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.integration.conftest import TASK_ADDRESSES
from tests.integration.test_acme import TOKEN, Gateway, controller_metrics, free_on_all
from tests.support import free_port, wait_until
from tests.support.bind import Bind, tsig_key
from tests.support.controller import ControllerProcess
from tests.support.fakedocker import FakeDocker
from tests.support.gateway import Agent, Dnsmasq, Upstream
from tests.support.pebble import Pebble
from tests.support.powerdns import PowerDns

ZONE = "shop.test"
ADDRESS_A, ADDRESS_B = "127.0.22.1", "127.0.22.2"
RECORD = f"_acme-challenge.{ZONE}"
# Pebble's certificates live this long, so that the controller renews them within the test
# (a third of their lifetime before expiry: after 12 s)
VALIDITY = 18


def secret_of(key_text: str) -> str:
    return key_text.split('secret "')[1].split('"')[0]


@pytest.fixture
def dns01_world(tmp_path: Path, dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
                agent_on: Callable[..., Agent]) -> Iterator[dict[str, Any]]:
    """BIND with the zone, Pebble asking it, a controller updating it, two gateways."""
    dns.set("tasks.shop", [TASK_ADDRESSES[0]])
    key_text = tsig_key("acme-controller")
    bind = Bind(tmp_path / "bind", ZONE, key_text, "127.0.0.1")
    bind.start()
    http_port = free_on_all(ADDRESS_A, ADDRESS_B)
    pebble = Pebble(tmp_path / "pebble", bind.nameserver, http_port, validity=VALIDITY)
    pebble.start()
    docker = FakeDocker()
    docker.create("shop", {"gateway.hosts": f"*.{ZONE},api.{ZONE}",
                           "gateway.port": str(upstream_port), "gateway.tls": "acme"})
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    key_file = tmp_path / "tsig.key"  # a swarm secret in real life
    key_file.write_text(key_text)
    key_file.chmod(0o600)
    controller_dir = tmp_path / "controller"
    controller_dir.mkdir()
    controller_args = [
        "--controller-token-file", str(token_file), "--acme-directory", pebble.directory_url,
        "--acme-ca-bundle", str(pebble.ca_bundle), "--acme-state-dir",
        str(controller_dir / "acme"), "--acme-retry-min", "3600", "--new-service-wait", "0",
        "--acme-dns-provider", "rfc2136", "--acme-dns-server", bind.nameserver,
        "--acme-dns-tsig-key-file", str(key_file), "--acme-challenge", "dns-01",
        "--acme-dns-propagation-timeout", "10"]
    world: dict[str, Any] = {"bind": bind, "pebble": pebble, "docker": docker,
                             "controller_dir": controller_dir, "key_text": key_text,
                             "controller_args": controller_args, "key_file": key_file}

    def start_controller() -> ControllerProcess:
        controller = ControllerProcess(controller_dir, docker, controller_args, token=TOKEN)
        world["controller"] = controller
        controller.start()
        return controller

    def start_gateways() -> list[Gateway]:
        gateways = []
        for name, address in (("a", ADDRESS_A), ("b", ADDRESS_B)):
            https_port = free_port(address)
            agent = agent_on(dns.nameserver, [], "--routes-url", world["controller"].url,
                             "--controller-token-file", str(token_file),
                             "--listen", f"{address}:{http_port}",
                             "--https-listen", f"{address}:{https_port}",
                             workdir=tmp_path / f"gateway-{name}")
            gateways.append(Gateway(agent, address, http_port, https_port))
        return gateways

    world["start_controller"] = start_controller
    world["start_gateways"] = start_gateways
    try:
        yield world
    finally:
        if "controller" in world:
            world["controller"].stop()
        docker.stop()
        pebble.stop()
        bind.stop()


def serials(gateways: list[Gateway], host: str, root: str) -> set[int | None]:
    return {g.serves(host, root) for g in gateways}


def test_a_wildcard_certificate_by_dns_01_is_issued_served_by_both_gateways_and_renewed(
        dns01_world: dict[str, Any]) -> None:
    pebble: Pebble = dns01_world["pebble"]
    bind: Bind = dns01_world["bind"]
    controller = dns01_world["start_controller"]()
    gateways = dns01_world["start_gateways"]()
    root = pebble.root_pem()
    names = ("x.shop.test", "other.shop.test", "api.shop.test")

    def all_served() -> dict[str, int] | None:
        """Each name's serial once both gateways serve it alike, and api.shop.test with its
        own certificate (until it has one, the wildcard's server answers its name too)."""
        seen = {n: serials(gateways, n, root) for n in names}
        if any(len(s) != 1 or None in s for s in seen.values()):
            return None
        one = {n: next(iter(s)) for n, s in seen.items() if next(iter(s)) is not None}
        return one if one["api.shop.test"] != one["x.shop.test"] else None

    first = wait_until(all_served, 40,
                       f"both gateways to serve the wildcard and api.shop.test; controller "
                       f"log:\n{controller.log()}\npebble log:\n{pebble.log()}", interval=0.2)
    # one wildcard certificate for every name under it, on both gateways; api's is its own
    assert first["x.shop.test"] == first["other.shop.test"]
    status = controller.status()["acme"]
    for host in ("*.shop.test", "api.shop.test"):
        assert status["hosts"][host]["certificate"], status
        assert status["hosts"][host]["challenge"] == "dns-01"
    # the records were written, and removed once the orders were done
    log = controller.log_file.read_text()
    assert f"acme_dns_record_added host=*.shop.test record={RECORD}" in log
    assert f"acme_dns_record_removed host=*.shop.test record={RECORD}" in log
    assert bind.txt(RECORD) == []
    assert "POST /chalZ/" in pebble.log_file.read_text()  # Pebble validated: through BIND

    # renewed by the controller itself (its renewal window: a third of the lifetime left),
    # through DNS-01 again, and the new certificate served by both gateways
    def renewed() -> set[int | None] | None:
        now = serials(gateways, "x.shop.test", root)
        return now if len(now) == 1 and not now & {None, first["x.shop.test"]} else None

    wait_until(renewed, VALIDITY, f"both gateways to serve a renewed wildcard certificate; "
               f"controller log:\n{controller.log()}", interval=0.2)
    metrics = controller_metrics(controller)
    assert metrics['gateway_controller_acme_orders_total{result="success"}'] >= 3
    assert metrics['gateway_controller_acme_orders_total{result="failure"}'] == 0
    assert bind.txt(RECORD) == []
    assert secret_of(dns01_world["key_text"]) not in controller.log_file.read_text()


def test_an_update_the_dns_server_refuses_is_reported_naming_the_host_and_no_secret(
        dns01_world: dict[str, Any]) -> None:
    """A TSIG key of the right name and a wrong secret: BIND refuses the update; the order
    stops before the CA is asked to validate, and /status says where, naming the host."""
    pebble: Pebble = dns01_world["pebble"]
    wrong = tsig_key("acme-controller")  # same name, another secret
    dns01_world["key_file"].write_text(wrong)
    controller = dns01_world["start_controller"]()
    gateways = dns01_world["start_gateways"]()

    def failed() -> dict[str, Any] | None:
        hosts = controller.status()["acme"]["hosts"]
        return hosts if all(hosts.get(h, {}).get("failures") for h in
                            ("*.shop.test", "api.shop.test")) else None

    hosts = wait_until(failed, 30, f"both orders to fail; log:\n{controller.log()}",
                       interval=0.2)
    error = hosts["*.shop.test"]["last_error"]
    assert error.startswith(f"DNS-01 for *.shop.test: adding TXT {RECORD} in zone {ZONE} at "
                            f"{dns01_world['bind'].nameserver}: the server refused the TSIG "
                            "key 'acme-controller'"), error
    assert hosts["*.shop.test"]["certificate"] is False
    assert any(p.startswith("*.shop.test: DNS-01 for *.shop.test:")
               for p in controller.status()["acme"]["problems"])
    # Pebble was never asked to validate (no validation to count against the account)
    assert "POST /order-plz" in pebble.log_file.read_text()  # it was asked to order ...
    assert "/chalZ/" not in pebble.log_file.read_text()  # ... never to validate a challenge
    log = controller.log_file.read_text()
    assert "acme_order_failed host=*.shop.test" in log
    for secret in (secret_of(wrong), secret_of(dns01_world["key_text"])):
        assert secret not in log
        assert secret not in controller.get("/status")[1]
    for gateway in gateways:
        tls = wait_until(lambda g=gateway: g.agent.status()["tls"].get("*.shop.test"), 10,
                         "the gateway to know the wildcard host")
        assert tls["serving"] is False
        assert "no certificate from the controller's ACME client yet" in tls["error"]


def test_a_wildcard_certificate_through_a_dns_provider_s_api_with_lexicon(
        tmp_path: Path) -> None:
    """dns-lexicon's `powerdns` provider against a real PowerDNS: the records go through its
    HTTP API with the key from a credentials file (a swarm secret), Pebble reads them over
    DNS; the certificate reaches the routes document, and the key is in no log."""
    zone = "example.com"  # lexicon's zone logic wants a public suffix; nothing leaves loopback
    pdns = PowerDns(tmp_path / "pdns", zone)
    pdns.start()
    pebble = Pebble(tmp_path / "pebble", pdns.nameserver, free_port())
    docker = FakeDocker()
    controller = None
    try:
        pebble.start()
        docker.create("shop", {"gateway.hosts": f"*.shop.{zone}", "gateway.port": "8080",
                               "gateway.tls": "acme"})
        (tmp_path / "token").write_text(TOKEN)
        credentials = tmp_path / "powerdns.env"
        credentials.write_text(f"# lexicon's options of the powerdns provider\n"
                               f"auth_token={pdns.api_key}\npdns_server={pdns.api_url}\n")
        credentials.chmod(0o600)
        (tmp_path / "controller").mkdir()
        controller = ControllerProcess(tmp_path / "controller", docker, [
            "--controller-token-file", str(tmp_path / "token"),
            "--acme-directory", pebble.directory_url, "--acme-ca-bundle", str(pebble.ca_bundle),
            "--acme-state-dir", str(tmp_path / "controller" / "acme"),
            "--new-service-wait", "0", "--acme-dns-provider", "lexicon:powerdns",
            "--acme-dns-credentials-file", str(credentials),
            "--acme-dns-server", pdns.nameserver], token=TOKEN)
        controller.start()

        def certificate() -> dict[str, str] | None:
            status, body = controller.get("/routes")  # as a gateway: the host may be ordered
            doc = json.loads(body) if status == 200 else {}
            return next(iter(doc.get("certificates", [])), None)

        cert = wait_until(certificate, 30, "the wildcard's certificate in /routes",
                          interval=0.3)
        assert cert["host"] == f"*.shop.{zone}"
        leaf = x509.load_pem_x509_certificate(cert["chain"].encode())
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == [f"*.shop.{zone}"]
        assert controller.status()["acme"]["hosts"][f"*.shop.{zone}"]["challenge"] == "dns-01"
        assert "/chalZ/" in pebble.log_file.read_text()
        assert pdns.txt(f"_acme-challenge.shop.{zone}") == []  # removed through the API
        assert pdns.api_key not in controller.log_file.read_text()
    finally:
        if controller is not None:
            controller.stop()
        docker.stop()
        pebble.stop()
        pdns.stop()
