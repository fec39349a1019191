"""HTTPS end to end: certificates made by a test CA, a real nginx, and a real TLS client that
checks the chain and the name (python's ssl, trusting the test CA's root only)."""

from __future__ import annotations

import datetime
import http.client
import json
import os
import socket
import ssl
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.integration.conftest import TASK_ADDRESSES
from tests.support import free_port, wait_until
from tests.support.gateway import Agent, Dnsmasq, Upstream, http_get
from tests.support.tlsca import DAY, NOW, Issued, TestCA

T1, T2, T3 = TASK_ADDRESSES[:3]
StartAgent = Callable[..., Agent]


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    directory = tmp_path / "certs"
    directory.mkdir()
    return directory


class Gateway:
    """The agent with HTTPS on its own port, and a client for it."""

    def __init__(self, agent: Agent, https_port: int, ca: TestCA) -> None:
        self.agent, self.https_port, self.ca = agent, https_port, ca

    def connect(self, sni: str | None, context: ssl.SSLContext | None = None) -> ssl.SSLSocket:
        """A TLS connection to the HTTPS port naming `sni`; raises ssl.SSLError if refused."""
        ctx = context or self.ca.client_context()
        if sni is None:
            ctx.check_hostname = False
        sock = socket.create_connection(("127.0.0.1", self.https_port), timeout=5)
        try:
            return ctx.wrap_socket(sock, server_hostname=sni)
        except BaseException:
            sock.close()
            raise

    def connection(self, sni: str, context: ssl.SSLContext | None = None,
                   ) -> http.client.HTTPConnection:
        """An HTTP/1.1 keep-alive connection over TLS, made for `sni`."""
        conn = http.client.HTTPConnection("127.0.0.1", self.https_port, timeout=10)
        conn.sock = self.connect(sni, context)
        return conn

    def get(self, host: str, path: str = "/", context: ssl.SSLContext | None = None,
            ) -> tuple[int, str, dict[str, str], int]:
        """(status, body, headers, serial of the certificate served) on a new connection."""
        conn = self.connection(host, context)
        try:
            status, body, headers = request(conn, host, path)
            return status, body, headers, served_serial(conn)
        finally:
            conn.close()

    def serial(self, host: str) -> int:
        with self.connect(host) as s:
            der = s.getpeercert(binary_form=True)
            assert der is not None
            return x509.load_der_x509_certificate(der).serial_number


def request(conn: http.client.HTTPConnection, host: str, path: str = "/",
            ) -> tuple[int, str, dict[str, str]]:
    conn.putrequest("GET", path, skip_host=True)
    conn.putheader("Host", host)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read().decode()
    return resp.status, body, {k.lower(): v for k, v in resp.getheaders()}


def served_serial(conn: http.client.HTTPConnection) -> int:
    assert isinstance(conn.sock, ssl.SSLSocket), "the connection was not over TLS"
    der = conn.sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture
def start_tls(start_agent: StartAgent, certs: Path, ca: TestCA, tmp_path: Path,
              ) -> Callable[..., Gateway]:
    def start(routes: list[dict[str, object]], *extra: str, wait_ready: bool = True,
              ) -> Gateway:
        port = free_port()
        bundle = ca.write_bundle(tmp_path / "roots.pem")
        agent = start_agent(routes, "--https-listen", f"127.0.0.1:{port}",
                            "--https-redirect-port", str(port), "--certs-dir", str(certs),
                            "--tls-ca-bundle", str(bundle), *extra, wait_ready=wait_ready)
        return Gateway(agent, port, ca)

    return start


def route(hosts: list[str], service: str, port: int, **tls: Any) -> dict[str, object]:
    return {"hosts": hosts, "service": service, "port": port, "tls": tls}


def tls_metrics(agent: Agent, name: str) -> dict[str, float]:
    prefix = f'gateway_tls_certificate_{name}{{host="'
    return {k[len(prefix):-2]: v for k, v in agent.metrics().items() if k.startswith(prefix)}


def test_each_host_gets_its_own_certificate_by_sni(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int, ca: TestCA, certs: Path,
        start_tls: Callable[..., Gateway]) -> None:
    dns.set("tasks.app", [T1])
    dns.set("tasks.shop", [T2])
    dns.set("tasks.wild", [T3])
    app = ca.issue("app.example.test")
    shop = ca.issue("shop.example.test")
    # the wildcard names an OCSP responder that is not there: nginx staples nothing, serves
    wild = ca.issue("*.wild.test", ocsp=f"http://127.0.0.1:{free_port()}/ocsp")
    app.write(certs, "app_crt")
    os.replace(certs / "app_crt.crt", certs / "app_crt")  # docker secret names: no extension
    os.replace(certs / "app_crt.key", certs / "app_key")
    shop.write(certs, "shop.example.test")
    wild.write(certs, "_wildcard.wild.test")
    gw = start_tls([
        route(["app.example.test"], "app", upstream_port, certificate="app_crt", key="app_key"),
        route(["shop.example.test"], "shop", upstream_port),
        route(["a.wild.test", "b.wild.test"], "wild", upstream_port),
        {"hosts": ["plain.example.test"], "service": "app", "port": upstream_port},
    ])

    for host, issued, task in (("app.example.test", app, "task1"),
                               ("shop.example.test", shop, "task2"),
                               ("a.wild.test", wild, "task3"), ("b.wild.test", wild, "task3")):
        status, body, _, serial = gw.get(host)
        assert (status, body) == (200, task), host
        assert serial == issued.serial, f"{host} got another host's certificate"

    # what the task is told: the request came over HTTPS
    seen = json.loads(gw.get("app.example.test", "/headers")[1])
    assert seen["x-forwarded-proto"] == "https"
    assert seen["host"] == "app.example.test"

    # a name no route serves over HTTPS, or no name at all: the handshake is refused
    for sni in ("plain.example.test", "nobody.example.test", None):
        with pytest.raises(ssl.SSLError):
            gw.connect(sni).close()
    assert gw.agent.get("plain.example.test") == (200, "task1")  # its HTTP is unchanged

    doc = gw.agent.status()["tls"]
    assert doc["a.wild.test"]["serving_certificate"] == "_wildcard.wild.test.crt"
    assert doc["a.wild.test"]["ocsp_stapling"] is True
    assert doc["app.example.test"]["ocsp_stapling"] is False  # no responder in the certificate
    expiry = tls_metrics(gw.agent, "expiry_timestamp_seconds")
    assert expiry == {h: i.cert.not_valid_after_utc.timestamp() for h, i in (
        ("app.example.test", app), ("shop.example.test", shop), ("a.wild.test", wild),
        ("b.wild.test", wild))}


def test_tls_versions_ciphers_and_session_resumption(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int, ca: TestCA, certs: Path,
        start_tls: Callable[..., Gateway]) -> None:
    dns.set("tasks.app", [T1])
    ca.issue("app.example.test").write(certs, "app.example.test")
    gw = start_tls([route(["app.example.test"], "app", upstream_port)])

    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = ca.client_context(minimum_version=version, maximum_version=version)
        conn = gw.connection("app.example.test", ctx)
        assert request(conn, "app.example.test")[:2] == (200, "task1")
        assert isinstance(conn.sock, ssl.SSLSocket)
        session = conn.sock.session
        conn.close()
        # a second connection resumes the session (shared cache; no full handshake)
        again = gw.connect("app.example.test", ctx)
        again.close()
        resumed = ctx.wrap_socket(socket.create_connection(("127.0.0.1", gw.https_port), 5),
                                  server_hostname="app.example.test", session=session)
        try:
            assert resumed.version() == ("TLSv1.2" if version == ssl.TLSVersion.TLSv1_2
                                         else "TLSv1.3")
            assert resumed.session_reused, f"{version.name}: the session was not resumed"
        finally:
            resumed.close()

    # TLS 1.0 and 1.1, which nginx 1.22 accepts by default, are refused
    old = ca.client_context()
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():  # python deprecates what this shows refused
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):
        gw.connect("app.example.test", old).close()
    # a legacy cipher (CBC with SHA-1) that nginx's own default list would accept is refused
    legacy = ca.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    legacy.set_ciphers("ECDHE-ECDSA-AES128-SHA")
    with pytest.raises(ssl.SSLError):
        gw.connect("app.example.test", legacy).close()
    modern = ca.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    modern.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    gw.connect("app.example.test", modern).close()


def write_bad(ca: TestCA, certs: Path) -> dict[str, str]:
    """A bad certificate per host, and the words its refusal must contain."""
    other = ca.issue("other.test")
    ca.issue("mismatch.test").write(certs, "mismatch.test")
    (certs / "mismatch.test.key").write_bytes(other.key_pem)
    ca.issue("expired.test", not_before=NOW - 30 * DAY, not_after=NOW - DAY).write(
        certs, "expired.test")
    ca.issue("future.test", not_before=NOW + DAY).write(certs, "future.test")
    other.write(certs, "wrongname.test")
    ca.issue("incomplete.test").write(certs, "incomplete.test", chain=False)
    (certs / "garbage.test.crt").write_text("not a certificate\n")
    (certs / "garbage.test.key").write_bytes(other.key_pem)
    # names that would end a directive if they reached the configuration
    ca.issue("hostile.test", "evil;name.test", "sp ace.test", "x}y.test").write(
        certs, "hostile.test")
    return {
        "hostile.test": "its subjectAltName has names that are not valid host names "
                        "('evil;name.test', 'sp ace.test', 'x}y.test')",
        "missing.test": "missing.test.crt: not found",
        "mismatch.test": "the key does not match the certificate",
        "expired.test": "expired on",
        "future.test": "is not valid before",
        "wrongname.test": "do not cover wrongname.test",
        "incomplete.test": "the chain is incomplete",
        "garbage.test": "garbage.test.crt: not a PEM file",
    }


def test_bad_certificates_are_refused_for_their_route_only(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int, ca: TestCA, certs: Path,
        start_tls: Callable[..., Gateway]) -> None:
    dns.set("tasks.app", [T1])
    good = ca.issue("good.test")
    good.write(certs, "good.test")
    bad = write_bad(ca, certs)
    routes = [route(["good.test"], "app", upstream_port)]
    routes += [route([host], "app", upstream_port, redirect=host == "expired.test")
               for host in bad]
    gw = start_tls(routes)

    assert gw.get("good.test")[:2] == (200, "task1")
    doc = gw.agent.status()
    for host, words in bad.items():
        with pytest.raises(ssl.SSLError):
            gw.connect(host).close()
        assert doc["tls"][host]["serving"] is False
        assert words in doc["tls"][host]["error"], (host, doc["tls"][host]["error"])
        assert f"certificate_refused host={host} certificate={host}.crt" in \
            gw.agent.log_tail(400)
    assert doc["tls"]["good.test"]["error"] is None
    assert "certificate refused for" in doc["status"]
    assert tls_metrics(gw.agent, "valid") == {"good.test": 1, **{h: 0 for h in bad}}
    assert set(tls_metrics(gw.agent, "expiry_timestamp_seconds")) == {"good.test"}

    # plain HTTP does what the route says: serve, or redirect (to an HTTPS that refuses)
    assert gw.agent.get("mismatch.test") == (200, "task1")
    status, _, headers = http_get(gw.agent.port, "expired.test")
    assert status == 301
    assert headers["location"] == f"https://expired.test:{gw.https_port}/"

    # once a good certificate arrives, the host is served without a restart
    ca.issue("missing.test").write(certs, "missing.test")
    wait_until(lambda: gw.get("missing.test")[:2] == (200, "task1"), 10,
               "the new certificate to be served")
    assert tls_metrics(gw.agent, "valid")["missing.test"] == 1


def test_http_redirects_to_https_and_hsts_is_sent_over_https_only(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int, ca: TestCA, certs: Path,
        start_tls: Callable[..., Gateway]) -> None:
    dns.set("tasks.app", [T1])  # tasks.down: NXDOMAIN, its path answers 503
    ca.issue("secure.test").write(certs, "secure.test")
    ca.issue("both.test").write(certs, "both.test")
    tls = {"redirect": True, "hsts": True}
    gw = start_tls([
        route(["secure.test"], "app", upstream_port, **tls),
        {**route(["secure.test"], "down", upstream_port, **tls), "path": "/down"},
        route(["both.test"], "app", upstream_port),
    ])

    status, _, headers = http_get(gw.agent.port, "secure.test", "/a/b?c=1&d=2")
    assert status == 301
    assert headers["location"] == f"https://secure.test:{gw.https_port}/a/b?c=1&d=2"
    assert "strict-transport-security" not in headers  # ignored over HTTP (RFC 6797)
    status, _, headers = http_get(gw.agent.port, "secure.test", "/down/x")
    assert (status, headers["location"]) == (301, f"https://secure.test:{gw.https_port}/down/x")

    status, body, headers, _ = gw.get("secure.test", "/a/b?c=1&d=2")
    assert (status, body) == (200, "task1")
    assert headers["strict-transport-security"] == "max-age=31536000"
    status, _, headers, _ = gw.get("secure.test", "/down/x")  # a location with its own headers
    assert status == 503
    assert headers["strict-transport-security"] == "max-age=31536000"

    # a route without `redirect` answers on both, and sends no HSTS
    assert gw.agent.get("both.test") == (200, "task1")
    status, body, headers, _ = gw.get("both.test")
    assert (status, body) == (200, "task1")
    assert "strict-transport-security" not in headers


def swap(certs: Path, stem: str, issued: Issued) -> None:
    """Replace a pair as a user would: the certificate, then the key, each atomically."""
    tmp = certs / ".new"
    tmp.mkdir(exist_ok=True)
    crt, key = issued.write(tmp, stem)
    os.replace(crt, certs / f"{stem}.crt")
    os.replace(key, certs / f"{stem}.key")


def test_swapped_certificate_is_served_without_dropping_connections(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int, ca: TestCA, certs: Path,
        start_tls: Callable[..., Gateway]) -> None:
    dns.set("tasks.app", [T1])
    first = ca.issue("app.example.test", not_after=NOW + 10 * DAY)
    first.write(certs, "app.example.test")
    gw = start_tls([route(["app.example.test"], "app", upstream_port)])
    assert gw.serial("app.example.test") == first.serial

    # a bad replacement is refused; the certificate in use keeps serving
    swap(certs, "app.example.test", ca.issue("app.example.test", not_after=NOW - DAY))
    wait_until(lambda: gw.agent.status()["tls"]["app.example.test"]["error"], 10,
               "the expired replacement to be refused")
    assert gw.serial("app.example.test") == first.serial
    assert tls_metrics(gw.agent, "valid")["app.example.test"] == 0

    # a keep-alive connection: one request done, a slow one in flight across the reload
    conn = gw.connection("app.example.test")
    assert request(conn, "app.example.test")[:2] == (200, "task1")
    assert served_serial(conn) == first.serial
    result: dict[str, Any] = {}

    def slow() -> None:
        result["response"] = request(conn, "app.example.test", "/slow?s=3")

    client = threading.Thread(target=slow)
    client.start()
    second = ca.issue("app.example.test", not_after=NOW + 60 * DAY)
    swap(certs, "app.example.test", second)
    wait_until(lambda: gw.serial("app.example.test") == second.serial, 10,
               "the new certificate on new connections")
    assert client.is_alive(), "the slow request ended before the reload: nothing was shown"
    client.join(10)
    status, body, headers = result["response"]
    # (over the same TLS connection: http.client reconnects only in plain TCP, which this
    # port would answer with 400)
    assert (status, body) == (200, "task1"), "the request in flight was dropped"
    # then the old worker ends the connection in good order, as nginx does on any reload
    assert headers["connection"] == "close"
    conn.close()
    expiry = tls_metrics(gw.agent, "expiry_timestamp_seconds")["app.example.test"]
    assert expiry == second.cert.not_valid_after_utc.timestamp()
    assert datetime.datetime.fromtimestamp(expiry, datetime.UTC) > NOW + 59 * DAY
    # the copies of the first certificate are gone once nothing refers to them
    store = gw.agent.prefix / "tls"
    wait_until(lambda: len(list(store.glob("*.crt"))) == 1, 5, "old copies to be removed")
    assert all(oct(p.stat().st_mode)[-3:] == "600" for p in store.glob("*.key"))


def test_a_hostile_certificate_freezes_nothing_but_its_own_host(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int, ca: TestCA, certs: Path,
        start_tls: Callable[..., Gateway]) -> None:
    """A certificate swapped in with a subjectAltName that is no host name: its host keeps the
    last good certificate, and every other change (here a task moving) is still applied."""
    dns.set("tasks.app", [T1])
    dns.set("tasks.shop", [T2])
    ca.issue("app.test").write(certs, "app.test")
    first = ca.issue("shop.test")
    first.write(certs, "shop.test")
    gw = start_tls([route(["app.test"], "app", upstream_port),
                    route(["shop.test"], "shop", upstream_port)])
    assert gw.get("shop.test")[::3] == (200, first.serial)
    ca.issue("shop.test", "shop.test;include", "*.*.test").write(certs, "shop.test")
    wait_until(lambda: gw.agent.status()["tls"]["shop.test"]["error"], 10,
               "the hostile certificate to be refused")
    dns.set("tasks.app", [T3])
    wait_until(lambda: gw.get("app.test")[1] == "task3", 10,
               f"the task change to be applied; log:\n{gw.agent.log_tail()}")
    assert gw.get("shop.test")[::3] == (200, first.serial)  # its last good certificate
    doc = gw.agent.status()
    assert "not valid host names ('shop.test;include', '*.*.test')" in \
        doc["tls"]["shop.test"]["error"]
    assert doc["tls"]["app.test"]["error"] is None
    assert doc["last_error"] is None or "refusing to write" not in doc["last_error"]
