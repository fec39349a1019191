"""HTTP/3 end to end: a real QUIC client (aioquic) on the HTTPS port's UDP side, certificates
made by the tests' CA, a real nginx. Each TLS route answers over HTTP/3 from its own task, HTTPS
over TCP advertises it (Alt-Svc), and a name no route serves is refused in the handshake."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import TASK_ADDRESSES
from tests.integration.test_tls import Gateway
from tests.support import free_port
from tests.support.gateway import Agent, Dnsmasq, Upstream
from tests.support.h3 import h3_get
from tests.support.tlsca import TestCA

StartAgent = Callable[..., Agent]


def test_each_tls_route_answers_over_http3(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int, tmp_path: Path,
        start_agent: StartAgent) -> None:
    ca = TestCA()
    certs = tmp_path / "certs"
    certs.mkdir()
    for host in ("a.test", "b.test"):
        ca.issue(host).write(certs, host)
    dns.set("tasks.a", [TASK_ADDRESSES[0]])
    dns.set("tasks.b", [TASK_ADDRESSES[1]])
    port = free_port()
    agent = start_agent([
        {"hosts": ["a.test"], "service": "a", "port": upstream_port, "tls": True},
        {"hosts": ["b.test"], "service": "b", "port": upstream_port, "tls": {"hsts": 600},
         "headers": {"response": {"X-Shop": "b"}}},
        {"hosts": ["plain.test"], "service": "a", "port": upstream_port},
    ], "--https-listen", f"127.0.0.1:{port}", "--https-redirect-port", str(port),
        "--certs-dir", str(certs), "--tls-ca-bundle", str(ca.write_bundle(tmp_path / "r.pem")))

    for host, task in (("a.test", "task1"), ("b.test", "task2")):
        answer = h3_get(port, host, ca.root_pem)
        assert (answer.status, answer.body.decode()) == (200, task), host
    # what the task is told: HTTPS, and no client certificate
    seen = json.loads(h3_get(port, "a.test", ca.root_pem, "/headers",
                             headers={"x-client-verify": "SUCCESS"}).body)
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-client-verify"] == "NONE"
    # HTTPS over TCP tells clients where HTTP/3 is, also beside a route's own headers
    gw = Gateway(agent, port, ca)
    for host in ("a.test", "b.test"):
        headers = gw.get(host)[2]
        assert headers["alt-svc"] == f'h3=":{port}"; ma=86400', host
    assert gw.get("b.test")[2]["strict-transport-security"] == "max-age=600"
    # a name no route serves over HTTPS: the QUIC handshake is refused, as the TCP one is
    for sni in ("plain.test", "nobody.test"):
        with pytest.raises((ConnectionError, TimeoutError)):
            h3_get(port, sni, ca.root_pem, timeout=5)
