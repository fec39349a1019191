"""HTTPS through the gateways' host-mode published ports, with the demo's CA.

The session's fixture made the CA and the certificate with `scripts/demo.sh certs`, as `make demo`
does, and the secrets with the commands of docs/swarm.md. The clients here trust that CA only.
The tests run before test_stacks.py (file order) and change nothing.
"""

from __future__ import annotations

import datetime
import json
import ssl
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography import x509

from agent.core import x509 as checks
from tests.support import require_programs, wait_until
from tests.support.gateway import http_get
from tests.support.tlsca import TestCA
from tests.swarm.stacks import (
    ADMIN_PORT,
    DMZ_GATEWAY_PORT,
    DMZ_HTTPS_PORT,
    GATEWAY_PORT,
    HTTPS_PORT,
    ROOT,
    Swarm,
    admin_headers,
    docs_commands,
    metric,
    run,
    stack_secrets,
)

pytestmark = pytest.mark.swarm

ROUTES = yaml.safe_load((ROOT / "stacks" / "routes.yml").read_text(encoding="utf-8"))["routes"]
TLS_ROUTES = [r for r in ROUTES if "tls" in r]
INTERNAL = ("managerhttp", "intrahttp")


def gateways(route: dict[str, object]) -> list[tuple[int, int, int]]:
    """(HTTP port, HTTPS port, admin port) of each gateway that serves the route."""
    served = [(GATEWAY_PORT, HTTPS_PORT, ADMIN_PORT)]
    if route.get("zone") == "dmz":
        served.append((DMZ_GATEWAY_PORT, DMZ_HTTPS_PORT, ADMIN_PORT + 1))
    return served


def leaf(certs: Path) -> x509.Certificate:
    """The server's certificate: the first of the demo_crt secret's file."""
    return x509.load_pem_x509_certificate((certs / "demo.crt").read_bytes())


def refused(swarm: Swarm, sni: str | None, port: int) -> bool:
    """True when the gateway refuses a TLS handshake for `sni` (None: no SNI at all), whatever
    certificate it would have shown: the client here does not verify."""
    anything = ssl.create_default_context()
    anything.check_hostname = False
    anything.verify_mode = ssl.CERT_NONE
    try:
        swarm.tls_connect(sni, port, anything).close()
    except ssl.SSLError:
        return True
    return False


def test_the_demo_ca_verifies_every_https_host_on_each_gateway(swarm: Swarm) -> None:
    assert swarm.certs is not None
    served = leaf(swarm.certs)
    assert TLS_ROUTES, "stacks/routes.yml has no route with tls"
    first = TLS_ROUTES[0]["hosts"][0]
    # the HTTPS servers come with the same configuration as the routes the fixture waited for
    try:
        wait_until(lambda: swarm.https_get(first)[0] == 200, 30, f"{first} over HTTPS",
                   interval=0.2)
    except AssertionError as exc:  # what the gateway says of its certificates
        status = http_get(ADMIN_PORT, None, "/status", headers=admin_headers())[1]
        raise AssertionError(f"{exc}\n/status tls: {json.loads(status).get('tls')}") from None
    for route in TLS_ROUTES:
        tasks = swarm.containers(route["service"])
        for _, https_port, admin_port in gateways(route):
            for host in route["hosts"]:
                status, body, der = swarm.https_get(host, https_port, "/?q=1")
                assert (status, body in tasks) == (200, True), (host, https_port, status, body)
                # the chain verified up to the demo CA, for this name; and it is the demo's
                assert x509.load_der_x509_certificate(der) == served, (host, https_port)
            valid = metric(admin_port, "gateway_tls_certificate_valid", "host")
            expiry = metric(admin_port, "gateway_tls_certificate_expiry_timestamp_seconds",
                            "host")
            for host in route["hosts"]:
                assert valid.get(host) == 1, (admin_port, valid)
                assert expiry.get(host) == served.not_valid_after_utc.timestamp(), expiry


def test_a_client_that_does_not_trust_the_demo_ca_is_refused(swarm: Swarm) -> None:
    host = TLS_ROUTES[0]["hosts"][0]
    with pytest.raises(ssl.SSLCertVerificationError):
        swarm.tls_connect(host, HTTPS_PORT, TestCA("Other").client_context()).close()


def test_names_without_https_get_no_certificate(swarm: Swarm) -> None:
    """The gateway never shows a certificate for a name it does not serve over HTTPS: not for an
    unknown name, a plain-HTTP route, no SNI (a client connecting to the address), and - on the
    dmz gateway - not for the intra routes, though the demo certificate would cover them."""
    for sni in ("unknown.example.com", "managerhttp", None):
        assert refused(swarm, sni, HTTPS_PORT), sni
    dmz_hosts = {h for r in TLS_ROUTES if r.get("zone") == "dmz" for h in r["hosts"]}
    for route in TLS_ROUTES:
        for host in route["hosts"]:
            assert refused(swarm, host, DMZ_HTTPS_PORT) == (host not in dmz_hosts), host
    # nor can a connection made for a dmz name ask the dmz gateway for an intra host
    internal = set().union(*(swarm.containers(s) for s in INTERNAL))
    dmz_host = sorted(dmz_hosts)[0]
    for route in TLS_ROUTES:
        for host in set(route["hosts"]) - dmz_hosts:
            status, body, _ = swarm.https_get(host, DMZ_HTTPS_PORT, sni=dmz_host)
            assert status in (404, 421), (host, status, body)
            assert body not in internal


def test_plain_http_redirects_to_https(swarm: Swarm) -> None:
    for route in TLS_ROUTES:
        tasks = swarm.containers(route["service"])
        for http_port, https_port, _ in gateways(route):
            for host in route["hosts"]:
                netloc = host if https_port == 443 else f"{host}:{https_port}"
                for path in ("/a/b?c=d", "/?c=d"):
                    status, _, headers = http_get(http_port, host, path)
                    assert (status, headers.get("location")) == (301, f"https://{netloc}{path}")
                # and where it points, a task answers (curl --resolve HOST:PORT:127.0.0.1)
                url = urlsplit(headers["location"])
                status, body, _ = swarm.https_get(url.hostname or "", url.port or 443,
                                                  f"{url.path}?{url.query}")
                assert (status, body in tasks) == (200, True), (url, status, body)
    # a route without tls answers over plain HTTP as before
    plain = next(r for r in ROUTES if "tls" not in r)
    status, body = swarm.get(plain["hosts"][0])
    assert (status, body in swarm.containers(plain["service"])) == (200, True)


def test_demo_certificate_passes_the_gateways_checks(tmp_path: Path) -> None:
    """What `scripts/demo.sh certs` makes (docs/swarm.md) is what the gateway accepts for every
    host of stacks/routes.yml with tls, and a CA that can sign names under example.com only."""
    require_programs("openssl")
    (make,) = docs_commands(r"scripts/demo\.sh certs")
    run(*make.split(), str(tmp_path))
    chain = checks.parse_chain((tmp_path / "demo.crt").read_bytes())
    key = checks.parse_key((tmp_path / "demo.key").read_bytes())
    ca = x509.load_pem_x509_certificate((tmp_path / "demo-ca.crt").read_bytes())
    hosts = [h for r in TLS_ROUTES for h in r["hosts"]]
    now = datetime.datetime.now(datetime.UTC)
    assert checks.check_key(chain[0], key) == []
    assert checks.check_usage(chain[0]) == []
    assert checks.check_chain(chain, None) == ([], ca)  # the file ends in the CA, a root
    assert checks.check_dates(chain, now) == []
    assert checks.check_names(chain[0], hosts) == []
    assert chain[0].not_valid_after_utc - now <= datetime.timedelta(days=30)
    constraints = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert constraints.value.permitted_subtrees == [x509.DNSName("example.com")]
    assert all(h.endswith(".example.com") for h in hosts)
    for name in ("demo.key", "demo-ca.key"):
        assert (tmp_path / name).stat().st_mode & 0o077 == 0, name


def test_docs_create_the_secrets_the_stacks_mount() -> None:
    commands = docs_commands(r"(?:openssl rand -hex 32 \| )?docker secret create \S+ \S+")
    created = {c.partition("docker secret create ")[2].split()[0] for c in commands}
    assert created == set(stack_secrets())
    names = {r["tls"][k] for r in TLS_ROUTES for k in ("certificate", "key")}
    assert names <= created, "a route names a file the gateway stack does not mount"
