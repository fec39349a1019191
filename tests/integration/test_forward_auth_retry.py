"""auth (forward auth) and retry through the real nginx, as a client and a task notice them.

The auth service is a small one speaking oauth2-proxy's protocol: X-Forwarded-Method, -Proto,
-Host and -Uri in; 2xx (with X-Auth-Request-User and -Email), 401 or 403 out, by the client's
Authorization header."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.integration.conftest import TASK_ADDRESSES
from tests.support import free_port, wait_until
from tests.support.gateway import Agent, Dnsmasq, Upstream, http_get

T1, T2, T6 = (*TASK_ADDRESSES[:2], TASK_ADDRESSES[5])
AUTH = "127.0.30.1"
StartAgent = Callable[..., Agent]


class _Auth(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, str]]

    def do_GET(self) -> None:
        type(self).seen.append({k.lower(): v for k, v in self.headers.items()})
        token = self.headers.get("Authorization", "")
        code = {"Bearer alice": 202, "Bearer mallory": 403}.get(token, 401)
        self.send_response(code)
        if code == 202:
            self.send_header("X-Auth-Request-User", "alice")
            self.send_header("X-Auth-Request-Email", "alice@example.com")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def auth_service() -> Iterator[tuple[int, list[dict[str, str]]]]:
    port = free_port(AUTH)
    handler = type("Auth", (_Auth,), {"seen": []})
    server = ThreadingHTTPServer((AUTH, port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield port, handler.seen
    server.shutdown()
    server.server_close()


def test_forward_auth_admits_refuses_redirects_and_passes_identity(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int, start_agent: StartAgent,
        auth_service: tuple[int, list[dict[str, str]]]) -> None:
    auth_port, seen = auth_service
    dns.set("tasks.web", [T1])
    dns.set("tasks.auth", [AUTH])
    dns.set("tasks.gone", [])
    dns.set("auth.internal", [AUTH])
    dns.set("tasks.shadow", [T6])
    identity = ["X-Auth-Request-User", "X-Auth-Request-Email"]
    agent = start_agent([
        {"hosts": ["web"], "service": "web", "port": upstream_port,
         "auth": {"service": "auth", "port": auth_port, "path": "/oauth2/auth",
                  "response_headers": identity},
         "mirror": {"service": "shadow", "share": 100}},
        {"hosts": ["app"], "service": "web", "port": upstream_port,
         "auth": {"url": f"http://auth.internal:{auth_port}/oauth2/auth",
                  "signin": "https://login.example/oauth2/start"}},
        {"hosts": ["down"], "service": "web", "port": upstream_port,
         "auth": {"service": "gone", "port": auth_port}},
    ])
    status, body, _ = http_get(agent.port, "web", "/headers?a=1", headers={
        "Authorization": "Bearer alice", "X-Auth-Request-User": "admin",
        "X-Client-Subject": "CN=root"})
    assert status == 200
    task_saw = json.loads(body)
    # the identity is the auth service's, never the client's forged copy
    assert task_saw["x-auth-request-user"] == "alice"
    assert task_saw["x-auth-request-email"] == "alice@example.com"
    # and so is the mirror's copy of the request (the same request id, no forged identity)
    shadow = tasks["task6"].server

    def copy_seen() -> dict[str, str] | None:
        return next((h for p, h in list(shadow.requests) if p == "/headers?a=1"), None)

    wait_until(lambda: copy_seen() is not None, 5, "the mirror's copy of the request")
    copy = copy_seen()
    assert copy is not None
    assert (copy["x-auth-request-user"], copy["x-request-id"]) == (
        "alice", task_saw["x-request-id"])
    assert "x-client-subject" not in task_saw  # (no client certificate over plain HTTP)
    assert "x-client-subject" not in copy
    asked = seen[-1]
    assert (asked["x-forwarded-method"], asked["x-forwarded-host"], asked["x-forwarded-uri"],
            asked["x-forwarded-proto"]) == ("GET", "web", "/headers?a=1", "http")
    # a client the auth service does not know: 401; one it refuses: 403; neither reaches a task
    # (by their paths: the tasks are shared with other tests, whose stragglers count as hits)
    status, _, _ = http_get(agent.port, "web", "/unknown-client",
                            headers={"X-Auth-Request-User": "alice"})
    assert status == 401
    assert http_get(agent.port, "web", "/refused-client",
                    headers={"Authorization": "Bearer mallory"})[0] == 403
    assert http_get(agent.port, "web", "/headers?known",
                    headers={"Authorization": "Bearer alice"})[0] == 200
    paths = list(tasks["task1"].server.paths)
    assert "/headers?known" in paths
    assert not {"/unknown-client", "/refused-client"} & set(paths)
    # with signin, a 401 is a redirect carrying the URL asked for; a 403 stays a 403
    status, _, headers = http_get(agent.port, "app", "/report")
    assert status == 302
    assert headers["location"] == \
        "https://login.example/oauth2/start?rd=http://app/report"
    assert http_get(agent.port, "app", "/app-refused",
                    headers={"Authorization": "Bearer mallory"})[0] == 403
    assert http_get(agent.port, "app", "/app-admitted",
                    headers={"Authorization": "Bearer alice"})[:2] == (200, "task1")
    # an auth service without a task admits nobody
    assert http_get(agent.port, "down", "/down-refused",
                    headers={"Authorization": "Bearer alice"})[0] == 500
    paths = list(tasks["task1"].server.paths)
    assert "/app-admitted" in paths
    assert not {"/report", "/app-refused", "/down-refused"} & set(paths)


class Dead:
    """A task that takes each connection and closes it without an answer."""

    def __init__(self, address: str, port: int) -> None:
        self.sock = socket.create_server((address, port))
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.recv(65536)
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("non_idempotent", [False, True])
def test_a_dead_task_is_retried_for_get_and_for_post_only_when_asked(
        dns: Dnsmasq, start_agent: StartAgent, non_idempotent: bool) -> None:
    port = free_port(T1)
    dead, live = Dead(T1, port), Upstream("live", T2, port)
    try:
        dns.set("tasks.web", [T1, T2])
        agent = start_agent([{"hosts": ["web"], "service": "web", "port": port,
                              "fail_timeout": 1,
                              "retry": {"non_idempotent": non_idempotent}}])
        # GET: whichever task nginx tries first, the client gets the live one's answer
        for _ in range(4):
            assert http_get(agent.port, "web")[:2] == (200, "live")
        assert dead.connections >= 1
        # POST: a request sent to the dead task is answered 502 unless non_idempotent is set
        statuses = []
        before = dead.connections
        for _ in range(20):
            statuses.append(http_get(agent.port, "web", method="POST")[0])
            if dead.connections > before:
                break
            time.sleep(0.3)  # the dead task is left out for fail_timeout after a failure
        assert dead.connections > before
        assert statuses[-1] == (200 if non_idempotent else 502)
    finally:
        dead.close()
        live.stop()
