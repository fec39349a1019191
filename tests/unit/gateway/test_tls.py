"""Certificates: the checks, the `tls` block of a route, the plan per host, and rendering."""

from __future__ import annotations

import argparse
import datetime
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.core.routes import RoutesError, parse_routes
from agent.core.settings import SettingsError
from agent.core.x509 import (
    check_chain,
    check_dates,
    check_key,
    check_names,
    check_usage,
    covers,
    parse_chain,
    parse_key,
)
from agent.gateway import settings as settings_mod
from agent.gateway.drivers.tls import Certificates
from agent.gateway.model import Endpoints
from agent.gateway.observe.certs import TlsCollector, status
from agent.gateway.plan.desired import Planner
from agent.gateway.plan.filters import RenderError
from tests.support.tlsca import DAY, NOW, TestCA


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


class Clock:
    def __init__(self) -> None:
        self.now = NOW.timestamp()

    def __call__(self) -> float:
        return self.now


def table(*routes: dict[str, object]):  # type: ignore[no-untyped-def]
    return parse_routes({"routes": list(routes)})


def tls_route(hosts: list[str], **tls: object) -> dict[str, object]:
    return {"hosts": hosts, "service": "app", "port": 80, "tls": tls}


# -- the checks ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "host", "expected"), [
    ("a.example.com", "a.example.com", True),
    ("A.Example.com", "a.example.COM", True),
    ("*.example.com", "a.example.com", True),
    ("*.example.com", "example.com", False),  # a wildcard covers one label, not its parent
    ("*.example.com", "a.b.example.com", False),  # nor two labels
    ("*.example.com", "*.example.com", True),  # a wildcard route needs a wildcard certificate
    ("a.example.com", "*.example.com", False),
    ("*.other.com", "a.example.com", False),
])
def test_names_a_certificate_covers(name: str, host: str, expected: bool) -> None:
    assert covers(name, host) is expected


def test_a_complete_chain_passes_and_finds_its_root(ca: TestCA) -> None:
    issued = ca.issue("a.test")
    chain = parse_chain(issued.chain_pem)
    assert check_key(chain[0], parse_key(issued.key_pem)) == []
    problems, root = check_chain(chain, lambda name: [ca.root] if name == ca.root.subject else [])
    assert problems == []
    assert root == ca.root
    # a root at the end of the file completes the chain by itself
    problems, root = check_chain([*chain, ca.root], None)
    assert (problems, root) == ([], ca.root)


def test_chain_out_of_order_or_incomplete_is_named(ca: TestCA) -> None:
    issued = ca.issue("a.test")
    problems, _ = check_chain([ca.intermediate, issued.cert], lambda _: [ca.root])
    assert len(problems) == 1
    assert "certificate 1 of the file" in problems[0]
    assert "Intermediate CA" in problems[0]
    assert "write the server's certificate first" in \
        problems[0]
    problems, root = check_chain([issued.cert], lambda name: [ca.root])
    assert root is None
    assert "the chain is incomplete" in problems[0]
    assert "Test Intermediate CA" in problems[0]
    # without a CA bundle, completeness cannot be judged: the file is taken as it is
    assert check_chain([issued.cert], None) == ([], None)


def test_key_must_match_and_be_strong_enough(ca: TestCA) -> None:
    a, b = ca.issue("a.test"), ca.issue("b.test")
    assert "does not match" in check_key(a.cert, b.key)[0]
    weak = rsa.generate_private_key(65537, 1024)
    assert any("1024 bits" in p for p in check_key(a.cert, weak))
    encrypted = a.key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.BestAvailableEncryption(b"secret"))
    with pytest.raises(ValueError, match="encrypted"):
        parse_key(encrypted)
    with pytest.raises(ValueError, match="not a PEM private key"):
        parse_key(b"-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ValueError, match="not a PEM file"):
        parse_chain(a.key_pem.replace(b"-----BEGIN", b"").replace(b"-----END", b""))


def test_dates_names_and_usage(ca: TestCA) -> None:
    expired = ca.issue("a.test", not_before=NOW - 10 * DAY, not_after=NOW - DAY)
    future = ca.issue("a.test", not_before=NOW + DAY)
    assert "expired on" in check_dates([expired.cert], NOW)[0]
    assert "not valid before" in check_dates([future.cert], NOW)[0]
    assert check_dates(list(parse_chain(ca.issue("a.test").chain_pem)), NOW) == []
    wild = ca.issue("*.a.test", "a.test")
    assert check_names(wild.cert, ["x.a.test", "a.test", "*.a.test"]) == []
    assert "do not cover x.y.a.test" in check_names(wild.cert, ["x.y.a.test"])[0]
    assert "not for TLS servers" in check_usage(ca.issue("a.test", server_auth=False).cert)[0]


# -- the tls block of a route ----------------------------------------------------------------


def test_tls_block_forms() -> None:
    routes = table(tls_route(["a.test"], certificate="app.crt", redirect=True, hsts=True),
                   tls_route(["b.test"], certificate="b_cert", key="b_key", hsts=600),
                   {"hosts": ["c.test"], "service": "app", "port": 80, "tls": True},
                   {"hosts": ["d.test"], "service": "app", "port": 80, "tls": False}).routes
    assert routes[0].tls is not None
    assert routes[0].tls.key_name == "app.key"
    assert routes[0].tls.hsts == 31536000
    assert routes[0].tls.redirect
    assert routes[1].tls is not None
    assert routes[1].tls.key_name == "b_key"
    assert routes[2].tls is not None
    assert routes[2].tls.certificate is None
    assert routes[3].tls is None


@pytest.mark.parametrize(("tls", "message"), [
    ({"certificate": "../etc/shadow"}, "routes[0].tls.certificate: '../etc/shadow' is not"),
    ({"certificate": "/run/secrets/x.crt"}, "is not a valid file name"),
    ({"certificate": "a b.crt"}, "is not a valid file name"),
    ({"certificate": "x.crt;"}, "is not a valid file name"),
    ({"certificate": "cert"}, "give 'key' for certificate 'cert'"),
    ({"key": "k.key"}, "'key' needs 'certificate'"),
    ({"hsts": -1}, "routes[0].tls.hsts: -1 is not true, false or a max-age"),
    ({"hsts": "1y"}, "is not true, false or a max-age"),
    ({"redirect": "yes"}, "routes[0].tls.redirect"),
    ({"certificat": "x.crt"}, "routes[0].tls.certificat: unknown field"),
])
def test_tls_block_refuses(tls: dict[str, object], message: str) -> None:
    with pytest.raises(RoutesError) as exc:
        table(tls_route(["a.test"], **tls))
    assert message in str(exc.value)


def test_routes_sharing_a_host_must_agree_on_tls() -> None:
    with pytest.raises(RoutesError, match=r"routes\[1\].tls: 'a.test' is also routed by "
                                          r"routes\[0\]"):
        table(tls_route(["a.test"], redirect=True),
              {"hosts": ["a.test"], "path": "/api", "service": "api", "port": 80})
    same = {"redirect": True}
    table(tls_route(["a.test"], **same), {**tls_route(["a.test"], **same), "path": "/api"})


def test_settings_have_environment_variables() -> None:
    args = argparse.Namespace()
    s = settings_mod.from_sources(args, {
        "GATEWAY_HTTPS_LISTEN": "9443", "GATEWAY_HTTPS_REDIRECT_PORT": "443",
        "GATEWAY_CERTS_DIR": "/certs", "GATEWAY_TLS_CA_BUNDLE": "/roots.pem"})
    assert str(s.https_listen) == "0.0.0.0:9443"
    assert (s.https_redirect_port, s.certs_dir, s.tls_ca_bundle) == (
        443, Path("/certs"), Path("/roots.pem"))
    assert settings_mod.GatewaySettings().https_listen.port == 8443
    with pytest.raises(SettingsError, match="GATEWAY_HTTPS_REDIRECT_PORT"):
        settings_mod.from_sources(args, {"GATEWAY_HTTPS_REDIRECT_PORT": "0"})


# -- the plan per host -----------------------------------------------------------------------


def store(tmp_path: Path, ca: TestCA, clock: Clock | None = None) -> Certificates:
    (tmp_path / "certs").mkdir(exist_ok=True)
    return Certificates(tmp_path / "certs", tmp_path / "store",
                        ca.write_bundle(tmp_path / "roots.pem"), clock or Clock())


def test_directory_mode_prefers_the_host_file_then_the_wildcard(tmp_path: Path,
                                                                ca: TestCA) -> None:
    certs = store(tmp_path, ca)
    ca.issue("*.w.test").write(certs.certs_dir, "_wildcard.w.test")
    ca.issue("own.w.test").write(certs.certs_dir, "own.w.test")
    ca.issue("*.w.test").write(certs.certs_dir, "_wildcard.w.test")
    plan = certs.plan(table(tls_route(["own.w.test", "x.w.test", "*.w.test", "none.test"])))
    assert plan is not None
    by = {h.host: h for h in plan.hosts}
    assert by["own.w.test"].source.certificate == "own.w.test.crt"
    assert by["x.w.test"].source.certificate == "_wildcard.w.test.crt"
    assert by["*.w.test"].source.certificate == "_wildcard.w.test.crt"
    assert by["x.w.test"].served == by["*.w.test"].served  # one copy, one server block
    assert by["none.test"].served is None
    assert by["none.test"].error is not None
    assert "none.test.crt: not found" in \
        by["none.test"].error
    assert certs.plan(table({"hosts": ["a.test"], "service": "a", "port": 80})) is None


def test_copies_are_named_by_content_and_removed_when_unused(tmp_path: Path,
                                                             ca: TestCA) -> None:
    certs = store(tmp_path, ca)
    routes = table(tls_route(["a.test"]))
    ca.issue("a.test").write(certs.certs_dir, "a.test")
    first = certs.plan(routes)
    assert first is not None
    assert first.hosts[0].served is not None
    served = first.hosts[0].served
    assert served.chain.read_bytes().count(b"BEGIN CERTIFICATE") == 2
    assert served.key.stat().st_mode & 0o077 == 0
    assert certs.plan(routes) == first  # nothing changed: the same plan, the same render
    ca.issue("a.test").write(certs.certs_dir, "a.test")
    second = certs.plan(routes)
    assert second is not None
    assert second.hosts[0].served is not None
    assert second.hosts[0].served.chain != served.chain
    assert served.chain.exists()  # until the new plan is applied (a rollback needs it)
    certs.applied(second)
    assert not served.chain.exists()
    assert not served.key.exists()
    assert second.hosts[0].served.chain.exists()


def test_a_bad_replacement_keeps_the_last_good_certificate(tmp_path: Path, ca: TestCA) -> None:
    clock = Clock()
    certs = store(tmp_path, ca, clock)
    routes = table(tls_route(["a.test"]), tls_route(["b.test"]))
    good = ca.issue("a.test", not_after=NOW + 10 * DAY)
    good.write(certs.certs_dir, "a.test")
    ca.issue("b.test").write(certs.certs_dir, "b.test")
    plan = certs.plan(routes)
    assert plan is not None
    assert plan.errors == ()
    in_use = plan.hosts[0].served
    other = ca.issue("other.test")
    (certs.certs_dir / "a.test.key").write_bytes(other.key_pem)  # half of a swap
    plan = certs.plan(routes)
    assert plan is not None
    assert plan.hosts[0].served == in_use
    assert plan.hosts[0].error is not None
    assert "does not match" in plan.hosts[0].error
    assert plan.hosts[1].error is None  # the other host is not concerned
    (certs.certs_dir / "a.test.key").write_bytes(good.key_pem)
    plan = certs.plan(routes)
    assert plan is not None
    assert plan.errors == ()
    # the certificate in use expires: it is reported, and kept (nothing better to serve)
    clock.now = (NOW + 11 * DAY).timestamp()
    plan = certs.plan(routes)
    assert plan is not None
    assert plan.hosts[0].served == in_use
    assert plan.hosts[0].error is not None
    assert "expired on" in plan.hosts[0].error
    doc = status(plan)
    assert doc["a.test"]["serving"] is True
    assert "expired" in doc["a.test"]["error"]
    collector = TlsCollector()
    collector.plan = plan
    samples = {(m.name, s.labels["host"]): s.value for m in collector.collect()
               for s in m.samples}
    assert samples[("gateway_tls_certificate_valid", "a.test")] == 0
    assert samples[("gateway_tls_certificate_valid", "b.test")] == 1
    assert samples[("gateway_tls_certificate_expiry_timestamp_seconds", "a.test")] == \
        good.cert.not_valid_after_utc.timestamp()


def test_at_start_a_bad_certificate_serves_nothing(tmp_path: Path, ca: TestCA) -> None:
    certs = store(tmp_path, ca)
    ca.issue("a.test", not_after=NOW - DAY, not_before=NOW - 2 * DAY).write(
        certs.certs_dir, "a.test")
    plan = certs.plan(table(tls_route(["a.test"])))
    assert plan is not None
    assert plan.hosts[0].served is None
    assert plan.hosts[0].error is not None
    assert plan.hosts[0].error.startswith("a.test.crt: ")


# -- rendering -------------------------------------------------------------------------------


def renderer(**kw: object) -> Planner:
    args: dict[str, object] = {"listen": "0.0.0.0:8080", "status_listen": "127.0.0.1:9181",
                               "https_listen": "0.0.0.0:8443", "resolver": "127.0.0.11:53"}
    args.update(kw)
    return Planner(**args)  # type: ignore[arg-type]


SNAPSHOT = {"tasks.app": Endpoints(("10.0.1.3",), "ok")}


def test_rendering_puts_each_certificate_in_its_server_and_redirects(
        tmp_path: Path, ca: TestCA) -> None:
    certs = store(tmp_path, ca)
    ca.issue("a.test").write(certs.certs_dir, "a.test")
    ca.issue("b.test", ocsp="http://ocsp.test/").write(certs.certs_dir, "b.test")
    routes = table(tls_route(["a.test", "bad.test"], redirect=True, hsts=600),
                   tls_route(["b.test"]),
                   {"hosts": ["plain.test"], "service": "app", "port": 80})
    plan = certs.plan(routes)
    text = renderer(https_redirect_port=8443).render(routes, SNAPSHOT, tls=plan).text
    servers = text.split("\nserver {")
    a = next(s for s in servers if "server_name a.test;" in s and "ssl_certificate " in s)
    assert plan is not None
    by = {h.host: h for h in plan.hosts}
    assert by["a.test"].served is not None
    assert by["b.test"].served is not None
    assert f"ssl_certificate {by['a.test'].served.chain};" in a
    assert 'add_header Strict-Transport-Security "max-age=600" always;' in a
    assert "ssl_stapling" not in a
    b = next(s for s in servers if "server_name b.test;" in s and "ssl_certificate " in s)
    assert "ssl_stapling on;" in b
    assert "ssl_stapling_verify on;" in b
    assert "Strict-Transport-Security" not in b
    assert "resolver 127.0.0.11:53" in text  # for the OCSP responder's name
    # HTTP: the hosts that asked redirect, the refused one too; the others are served
    redirect = next(s for s in servers if "server_name a.test bad.test;" in s)
    assert "return 301 https://$host:8443$request_uri;" in redirect
    assert "proxy_pass" not in redirect
    assert not any("bad.test" in s and "ssl_certificate " in s and "server_name" in s
                   for s in servers)
    assert "ssl_reject_handshake on;" in text
    plain_b = next(s for s in servers
                   if re.search(r"server_name [^;]*\bb\.test\b", s)
                   and "ssl_certificate " not in s)
    assert "proxy_pass" in plain_b
    assert "return 301" not in plain_b
    assert "return 301 https://$host$request_uri;" in renderer().render(
        routes, SNAPSHOT, tls=plan).text  # port 443 is not written
    # no HTTPS listener configured (e.g. `gateway-agent render`): no HTTPS at all
    assert "ssl_certificate" not in renderer(https_listen=None).render(
        routes, SNAPSHOT, tls=plan).text
    assert "ssl_certificate" not in renderer().render(routes, SNAPSHOT).text


def test_a_certificate_path_that_is_not_a_plain_token_is_refused(tmp_path: Path,
                                                                 ca: TestCA) -> None:
    (tmp_path / "a dir").mkdir()
    certs = Certificates(tmp_path / "a dir", tmp_path / "a dir" / "store",
                         ca.write_bundle(tmp_path / "roots.pem"), Clock())
    ca.issue("a.test").write(certs.certs_dir, "a.test")
    routes = table(tls_route(["a.test"]))
    with pytest.raises(RenderError, match="refusing to write"):
        renderer().render(routes, SNAPSHOT, tls=certs.plan(routes))


def test_time_is_an_input_only_through_the_clock(tmp_path: Path, ca: TestCA) -> None:
    clock = Clock()
    certs = store(tmp_path, ca, clock)
    ca.issue("a.test", not_before=NOW + DAY).write(certs.certs_dir, "a.test")
    routes = table(tls_route(["a.test"]))
    plan = certs.plan(routes)
    assert plan is not None
    assert plan.hosts[0].served is None
    clock.now = (NOW + 2 * DAY).timestamp()
    plan = certs.plan(routes)
    assert plan is not None
    assert plan.hosts[0].served is not None
    assert datetime.datetime.fromtimestamp(plan.hosts[0].served.not_after,
                                           datetime.UTC) > NOW + 80 * DAY


# -- tls: acme: the certificates the controller sent ---------------------------------------


def acme_store(tmp_path: Path, bundle: Path | None) -> Certificates:
    """A gateway with --routes-url: gateway/source.py writes the ACME certificates to acme_dir."""
    (tmp_path / "certs").mkdir(exist_ok=True)
    (tmp_path / "acme").mkdir(exist_ok=True)
    return Certificates(tmp_path / "certs", tmp_path / "store", bundle, Clock(),
                        acme_dir=tmp_path / "acme")


def test_an_acme_host_is_served_what_the_controller_sent(tmp_path: Path, ca: TestCA) -> None:
    certs = acme_store(tmp_path, ca.write_bundle(tmp_path / "roots.pem"))
    ca.issue("a.test").write(certs.certs_dir, "a.test")  # not this one: it is not from ACME
    routes = table(tls_route(["a.test"], acme=True))
    plan = certs.plan(routes)
    assert plan is not None
    assert plan.hosts[0].served is None
    assert plan.hosts[0].error == ("a.test.crt: no certificate from the controller's ACME "
                                   "client yet (its /status tells why)")
    assert status(plan)["a.test"]["acme"] is True
    sent = ca.issue("a.test")
    sent.write(tmp_path / "acme", "a.test")
    plan = certs.plan(routes)
    assert plan is not None
    assert plan.hosts[0].error is None
    assert plan.hosts[0].served is not None
    assert plan.hosts[0].served.chain.read_bytes() == sent.chain_pem


def test_an_acme_chain_is_taken_as_the_ca_sent_it(tmp_path: Path, ca: TestCA) -> None:
    """A staging CA's root is in no bundle: the gateway has no say in what the CA issues."""
    bundle = TestCA("Other").write_bundle(tmp_path / "roots.pem")  # without ca's root
    certs = acme_store(tmp_path, bundle)
    issued = ca.issue("a.test")
    issued.write(tmp_path / "acme", "a.test")
    issued.write(certs.certs_dir, "a.test")
    plan = certs.plan(table(tls_route(["a.test"], acme=True)))
    assert plan is not None
    assert (plan.hosts[0].error, plan.hosts[0].served is not None) == (None, True)
    # the very same files given in --certs-dir: their chain is incomplete for this bundle
    plan = certs.plan(table(tls_route(["a.test"])))
    assert plan is not None
    assert plan.hosts[0].served is None
    assert plan.hosts[0].error is not None
    assert "the chain is incomplete" in plan.hosts[0].error


def test_an_acme_certificate_is_checked_like_any_other(tmp_path: Path, ca: TestCA) -> None:
    certs = acme_store(tmp_path, None)
    ca.issue("other.test").write(tmp_path / "acme", "a.test")
    plan = certs.plan(table(tls_route(["a.test"], acme=True)))
    assert plan is not None
    assert plan.hosts[0].served is None
    assert plan.hosts[0].error is not None
    assert "do not cover a.test" in plan.hosts[0].error


def test_without_a_controller_there_is_no_acme_certificate(tmp_path: Path, ca: TestCA) -> None:
    certs = store(tmp_path, ca)  # no acme_dir: the gateway has no --routes-url
    ca.issue("a.test").write(certs.certs_dir, "a.test")
    plan = certs.plan(table(tls_route(["a.test"], acme=True)))
    assert plan is not None
    assert plan.hosts[0].served is None
    assert plan.hosts[0].error is not None
    assert "--routes-url" in plan.hosts[0].error
