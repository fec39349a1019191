"""ACME on the real swarm: the controller of stacks/controller.yml, turned on as docs/acme.md says,
orders a certificate from Pebble for a labelled service, Pebble's HTTP-01 challenge comes in
through the gateway's published port 8080, and the gateway serves the certificate on 443.

Pebble runs on the host, on the address containers reach it at (the docker_gwbridge gateway),
with a DNS server of its own that sends the test's host name to this node. The controller is
updated with the settings and rolled back at the end; the service made here is removed.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.support import wait_until
from tests.support.gateway import Dnsmasq
from tests.support.pebble import Pebble
from tests.swarm.stacks import GATEWAY_PORT, IMAGES, Swarm, measured, run

pytestmark = pytest.mark.swarm

CONTROLLER = "controller_gateway-controller"
SERVICE, HOST = "acme-shop", "shop.acme.test"
CA_CONFIG = "acme-test-pebble-ca"


def controller_call(path: str, method: str = "GET") -> tuple[int, Any]:
    """A request to the controller from inside its container, with the token of its secret."""
    probe = ("import json, sys, urllib.request, urllib.error\n"
             "token = open('/run/secrets/gateway-controller-token').read().strip()\n"
             "req = urllib.request.Request('http://127.0.0.1:9280' + sys.argv[1],\n"
             "    method=sys.argv[2], headers={'Authorization': 'Bearer ' + token})\n"
             "try:\n"
             "    r = urllib.request.urlopen(req, timeout=5)\n"
             "except urllib.error.HTTPError as e:\n"
             "    r = e\n"
             "print(r.status); print(r.read().decode())\n")
    (container,) = run("docker", "ps", "-q", "--filter",
                       f"label=com.docker.swarm.service.name={CONTROLLER}").split()
    status, _, body = run("docker", "exec", container, "python3", "-c", probe, path,
                          method).partition("\n")
    return int(status), json.loads(body) if body.strip().startswith("{") else body


def serving(swarm: Swarm, root_pem: str) -> int | None:
    """The serial of the certificate HOST is served with, when a task of SERVICE answers."""
    try:
        status, body, der = swarm.https_get(
            HOST, context=ssl.create_default_context(cadata=root_pem))
    except (OSError, ssl.SSLError):
        return None
    if status != 200 or body not in swarm.containers(SERVICE):
        return None
    return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture(scope="module")
def pebble(swarm: Swarm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    workdir: Path = tmp_path_factory.mktemp("acme")
    bridge = run("docker", "network", "inspect", "docker_gwbridge", "--format",
                 "{{(index .IPAM.Config 0).Gateway}}").strip()
    (workdir / "dns").mkdir()
    dns = Dnsmasq(workdir / "dns", address="127.0.0.62")
    dns.start()
    dns.set(HOST, ["127.0.0.1"])  # this node: its gateway publishes 8080 in host mode
    server = Pebble(workdir / "pebble", dns.nameserver, GATEWAY_PORT, address=bridge,
                    names=("pebble",))
    server.start()
    run("docker", "config", "create", CA_CONFIG, str(server.ca_bundle))
    try:
        # docs/acme.md: the directory (here Pebble, by a name its certificate has) and the CA
        # that signed its HTTPS certificate; a short first retry, so that a test can see one
        run("docker", "service", "update", "--detach=false", "--quiet",
            "--host-add", f"pebble:{bridge}",
            "--config-add", f"source={CA_CONFIG},target=/etc/gateway/acme-ca.pem,mode=0444",
            "--env-add", f"GATEWAY_ACME_DIRECTORY={server.directory_url}",
            "--env-add", "GATEWAY_ACME_CA_BUNDLE=/etc/gateway/acme-ca.pem",
            "--env-add", "GATEWAY_ACME_EMAIL=ops@example.com", CONTROLLER, timeout=180)
        yield server
    finally:
        run("docker", "service", "rm", SERVICE, check=False)
        run("docker", "service", "rollback", "--detach=false", "--quiet", CONTROLLER,
            check=False, timeout=180)
        run("docker", "config", "rm", CA_CONFIG, check=False)
        server.stop()
        dns.stop()


def test_a_labelled_service_gets_a_certificate_from_acme_through_the_published_port(
        swarm: Swarm, pebble: Pebble) -> None:
    root = pebble.root_pem()
    started = time.monotonic()
    run("docker", "service", "create", "--detach", "--quiet", "--name", SERVICE,
        "--network", "gateway-intra", "--constraint", "node.labels.zone.manager==true",
        "--label", f"gateway.hosts={HOST}", "--label", "gateway.port=8888",
        "--label", "gateway.tls=acme", IMAGES["APP_IMAGE"])
    try:
        serial = wait_until(lambda: serving(swarm, root), 120,
                            f"{HOST} to be served over HTTPS with Pebble's certificate",
                            interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\ncontroller: {controller_call('/status')[1]}\n"
                             f"pebble: {pebble.log()}") from None
    measured(f"acme: `docker service create --label gateway.tls=acme` to HTTPS verified against "
             f"the ACME CA: {time.monotonic() - started:.1f} s")
    status, body = controller_call("/status")
    assert status == 200
    host = body["acme"]["hosts"][HOST]
    assert host["certificate"] is True
    assert host["failures"] == 0

    # the account key and the certificate are in the controller's volume: a new controller
    # task has them, and orders nothing
    run("docker", "service", "update", "--detach=false", "--quiet", "--force", CONTROLLER,
        timeout=180)
    status, body = wait_until(lambda: (s := controller_call("/status"))[0] == 200 and s, 60,
                              "the new controller task to answer", interval=0.5)
    assert body["acme"]["hosts"][HOST]["certificate"] is True
    assert body["acme"]["hosts"][HOST]["last_attempt_at"] is None  # nothing ordered
    assert serving(swarm, root) == serial

    # a forced renewal: a new certificate, served without a redeploy
    assert controller_call(f"/acme/renew?host={HOST}", "POST")[0] == 202
    renewed = wait_until(lambda: (s := serving(swarm, root)) not in (None, serial) and s, 60,
                         "the renewed certificate to be served", interval=0.2)
    assert renewed != serial
