"""Client certificates on a route (`tls.client_ca`, `tls.client_verify`) and TLS to the tasks
(`upstream_tls`), end to end: certificates made by the tests' CAs, a real nginx, python's ssl as
the client, and tasks that serve HTTPS."""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import TASK_ADDRESSES
from tests.integration.test_tls import Gateway
from tests.support import free_port
from tests.support.gateway import Agent, Dnsmasq, Upstream
from tests.support.tlsca import Issued, TestCA

StartAgent = Callable[..., Agent]


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture(scope="module")
def clients_ca() -> TestCA:
    return TestCA("Clients")


def client_context(ca: TestCA, tmp_path: Path, issued: Issued | None) -> ssl.SSLContext:
    """A client trusting the gateway's CA, presenting `issued` (with its chain) if given."""
    ctx = ca.client_context()
    if issued is not None:
        crt, key = issued.write(tmp_path, f"client-{issued.serial}")
        ctx.load_cert_chain(crt, key)
    return ctx


def get(gw: Gateway, host: str, ctx: ssl.SSLContext, path: str = "/headers",
        headers: dict[str, str] | None = None) -> tuple[int, str]:
    conn = gw.connection(host, ctx)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


FORGED = {"X-Client-Verify": "SUCCESS", "X-Client-Subject": "CN=admin"}


def test_client_certificates_required_and_optional(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int, ca: TestCA,
        clients_ca: TestCA, tmp_path: Path, reachable: Path,
        start_agent: StartAgent) -> None:
    certs, files = reachable / "certs", reachable / "files"
    certs.mkdir()
    files.mkdir()
    for host in ("mtls.test", "opt.test", "open.test"):
        ca.issue(host).write(certs, host)
    # the CA file: the clients' root and intermediate (a client sends its leaf alone)
    (files / "clients.pem").write_bytes(clients_ca.root_pem + Issued(
        clients_ca.intermediate, clients_ca.intermediate_key, ()).leaf_pem)
    dns.set("tasks.app", [TASK_ADDRESSES[0]])
    port = free_port()
    agent = start_agent([
        {"hosts": ["mtls.test"], "service": "app", "port": upstream_port,
         "tls": {"client_ca": "clients.pem"}},
        {"hosts": ["opt.test"], "service": "app", "port": upstream_port,
         "tls": {"client_ca": "clients.pem", "client_verify": "optional"}},
        {"hosts": ["open.test"], "service": "app", "port": upstream_port, "tls": True},
    ], "--https-listen", f"127.0.0.1:{port}", "--certs-dir", str(certs),
        "--tls-ca-bundle", str(ca.write_bundle(tmp_path / "roots.pem")),
        "--route-files-dir", str(files), workdir=reachable)
    gw = Gateway(agent, port, ca)
    alice = client_context(ca, tmp_path, clients_ca.issue("alice", server_auth=False))
    anonymous = client_context(ca, tmp_path, None)
    mallory = client_context(ca, tmp_path, TestCA("Rogue").issue("mallory", server_auth=False))

    # required: no certificate refused, over HTTPS and over plain HTTP alike
    assert get(gw, "mtls.test", anonymous)[0] == 403
    assert agent.get("mtls.test", "/headers")[0] == 403
    # a certificate of another CA is refused by nginx's verification
    assert get(gw, "mtls.test", mallory)[0] == 400
    # a good one is admitted and named to the task, whatever the client claims
    status, body = get(gw, "mtls.test", alice, headers=FORGED)
    seen = json.loads(body)
    assert status == 200
    assert seen["x-client-verify"] == "SUCCESS"
    assert "CN=alice" in seen["x-client-subject"]
    assert "admin" not in seen["x-client-subject"]

    # optional: admitted without a certificate, and the task is told so (the forgery is gone)
    status, body = get(gw, "opt.test", anonymous, headers=FORGED)
    seen = json.loads(body)
    assert (status, seen["x-client-verify"]) == (200, "NONE")
    assert "x-client-subject" not in seen
    seen = json.loads(get(gw, "opt.test", alice)[1])
    assert seen["x-client-verify"] == "SUCCESS"
    assert "CN=alice" in seen["x-client-subject"]
    assert get(gw, "opt.test", mallory)[0] == 400  # a bad one is not "no certificate"

    # a connection made for a host without client certificates cannot ask for one with them
    conn = gw.connection("open.test", anonymous)
    try:
        conn.putrequest("GET", "/", skip_host=True)
        conn.putheader("Host", "mtls.test")
        conn.endheaders()
        assert conn.getresponse().status == 421
    finally:
        conn.close()

    # a route without client certificates passes no client's claim on either
    seen = json.loads(get(gw, "open.test", anonymous, headers=FORGED)[1])
    assert seen["x-client-verify"] == "NONE"
    assert "x-client-subject" not in seen
    status, body = agent.get("open.test", "/headers", headers=FORGED)
    assert status == 200
    assert "x-client-verify" not in json.loads(body)
    assert "x-client-subject" not in json.loads(body)


def test_tls_to_the_tasks_verified(dns: Dnsmasq, ca: TestCA, tmp_path: Path, reachable: Path,
                                   start_agent: StartAgent) -> None:
    files = reachable / "files"
    files.mkdir()
    (files / "tasks.pem").write_bytes(ca.root_pem)
    port = free_port(TASK_ADDRESSES[6])

    def serving(issued: Issued) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*issued.write(tmp_path, f"task-{issued.serial}"))
        return ctx

    good = Upstream("good", TASK_ADDRESSES[6], port, tls=serving(ca.issue("api.internal")))
    rogue = Upstream("rogue", TASK_ADDRESSES[7], port,
                     tls=serving(TestCA("Rogue").issue("api.internal")))
    try:
        dns.set("tasks.good", [good.address])
        dns.set("tasks.rogue", [rogue.address])
        verified = {"ca": "tasks.pem", "server_name": "api.internal"}
        agent = start_agent([
            {"hosts": ["good.test"], "service": "good", "port": port, "upstream_tls": verified},
            {"hosts": ["rogue.test"], "service": "rogue", "port": port,
             "upstream_tls": verified},
            {"hosts": ["unchecked.test"], "service": "rogue", "port": port,
             "upstream_tls": {"verify": False}},
            {"hosts": ["misnamed.test"], "service": "good", "port": port,
             "upstream_tls": {"ca": "tasks.pem", "server_name": "other.internal"}},
            {"hosts": ["plain.test"], "service": "good", "port": port},
        ], "--route-files-dir", str(files), workdir=reachable)
        assert agent.get("good.test") == (200, "good")  # reached over TLS, verified
        assert agent.get("rogue.test")[0] == 502  # a certificate of another CA
        assert agent.get("misnamed.test")[0] == 502  # the CA's, for another name
        assert agent.get("unchecked.test") == (200, "rogue")  # verify: false
        assert agent.get("plain.test")[0] == 502  # plain HTTP to a TLS task: no answer
        assert good.server.hits >= 1
    finally:
        good.stop()
        rogue.stop()


def test_a_ca_file_that_is_no_ca_locks_its_route(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int, ca: TestCA,
        tmp_path: Path, reachable: Path, start_agent: StartAgent) -> None:
    files = reachable / "files"
    files.mkdir()
    issued = ca.issue("leaf.test")
    (files / "leaf.pem").write_bytes(issued.leaf_pem + issued.key_pem)
    dns.set("tasks.app", [TASK_ADDRESSES[0]])
    agent = start_agent([{"hosts": ["locked.test"], "service": "app", "port": upstream_port,
                          "tls": {"client_ca": "leaf.pem"}},
                         {"hosts": ["other.test"], "service": "app", "port": upstream_port}],
                        "--route-files-dir", str(files), workdir=reachable)
    assert agent.get("locked.test")[0] == 503
    assert agent.get("other.test") == (200, "task1")
    assert "holds a private key" in json.dumps(agent.status())
