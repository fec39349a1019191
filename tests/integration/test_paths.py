"""Paths an application reads otherwise than nginx, through the real nginx (gateway/paths.py).

One service behind `/` (open), `/admin` (basic_auth) and `/internal` (allow): Tomcat, Spring
and IIS read `/x/..;/admin/users`, `/ADMIN/users` or `/x\\..\\internal\\keys` as the checked
path, which nginx gives to the open route. The task answers with the request target it got
(X-Seen-Path) and counts what reaches it.
"""

from __future__ import annotations

import base64
import hashlib
import socket
from pathlib import Path

from tests.integration.conftest import TASK_ADDRESSES
from tests.integration.test_route_features import StartAgent, basic
from tests.support.gateway import Agent, Dnsmasq, Upstream, http_get

T1 = TASK_ADDRESSES[0]
INSIDE, OUTSIDE = "127.0.20.5", "127.0.21.5"

# the review's forms, then more that some application reads as /admin or /internal
REVIEW = ["/x/..;/admin/users", "/admin;jsessionid=1/users", "/ADMIN/users", "/internal;/keys",
          "/x\\..\\internal\\keys"]
MORE = [
    # `;` parameters in any segment, raw or encoded
    "/x/..;/internal/keys", "/x;/..;/admin/users", "/admin;/users", "/x/..%3b/admin/users",
    "/admin%3Bx/users", "/x/%2e%2e;/admin/users",
    # backslashes, raw and encoded
    "/x\\..\\admin\\users", "/x%5c..%5cadmin%5cusers", "/x/..%5Cinternal/keys",
    # encoded dots and slashes, double encoding, overlong and %u forms, NUL
    "/x/%2e%2e/admin/users", "/x/%2E%2E/internal/keys", "/x/..%2fadmin/users",
    "/admin%2fusers", "/x/%252e%252e/admin/users", "/x/%252e%252e%252finternal%252fkeys",
    "/x/..%c0%afadmin/users", "/x/%u002e%u002e/admin/users", "/admin%00/users",
    # another case, trailing dots and spaces (IIS), encoded letters
    "/Admin/users", "/aDmIn", "/INTERNAL/keys", "/%41DMIN/users", "/admin./users",
    "/admin%20/users", "/admin.%20./users", "/internal./keys",
    # dot segments and `//`, which nginx resolves itself
    "/x/../admin/users", "/./admin/users", "//admin/users", "/x//../admin/users",
    "/admin/../admin/users",
    # the absolute form of a request target
    "http://web/x/..;/admin/users", "http://web/ADMIN/users",
]


def raw_get(port: int, target: str, host: str = "web", source: str = OUTSIDE,
            headers: dict[str, str] | None = None) -> tuple[int, str]:
    """A request with `target` sent exactly as written: (status, the path the task got)."""
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Connection: close",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    with socket.create_connection(("127.0.0.1", port), timeout=5,
                                  source_address=(source, 0)) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    seen = next((h.split(": ", 1)[1] for h in head[1:]
                 if h.lower().startswith("x-seen-path:")), "")
    return int(head[0].split(" ")[1]), seen


def _agent(dns: Dnsmasq, start_agent: StartAgent, port: int, workdir: Path) -> Agent:
    dns.set("tasks.app", [T1])
    certs = workdir / "route-files"
    certs.mkdir()
    sha = base64.b64encode(hashlib.sha1(b"alice-pw").digest()).decode()
    (certs / "users.htpasswd").write_text(f"alice:{{SHA}}{sha}\n")
    app = {"service": "app", "port": port}
    return start_agent([{"hosts": ["web"], **app},
                        {"hosts": ["web"], "path": "/admin", "basic_auth": "users.htpasswd",
                         **app},
                        {"hosts": ["web"], "path": "/internal", "allow": ["127.0.20.0/24"],
                         **app},
                        {"hosts": ["open"], **app},
                        {"hosts": ["open"], "path": "/admin", **app}],
                       "--route-files-dir", str(certs), workdir=workdir)


def test_no_path_an_application_reads_as_a_checked_route_passes_the_check(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent, reachable: Path) -> None:
    agent = _agent(dns, start_agent, upstream_port, reachable)
    task = tasks["task1"].server
    # what may reach the task does: the open route, the checked ones for whom they let in
    assert raw_get(agent.port, "/shop/item") == (200, "/shop/item")
    assert raw_get(agent.port, "/admin/users", headers=basic("alice", "alice-pw")) == (
        200, "/admin/users")
    assert raw_get(agent.port, "/internal/keys", source=INSIDE) == (200, "/internal/keys")
    assert raw_get(agent.port, "/admin/users")[0] == 401
    assert raw_get(agent.port, "/internal/keys")[0] == 403

    before = task.hits
    answers = {target: raw_get(agent.port, target)[0] for target in REVIEW + MORE}
    reached = task.hits - before
    assert reached == 0, f"{reached} of {len(answers)} reached the task: {answers}"
    assert {t: s for t, s in answers.items() if s not in (400, 401, 403)} == {}
    assert all(answers[t] == 400 for t in REVIEW), answers


def test_normal_paths_and_queries_and_hosts_without_checked_routes_are_as_before(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent, reachable: Path) -> None:
    agent = _agent(dns, start_agent, upstream_port, reachable)
    alice = basic("alice", "alice-pw")
    for target, headers in [
            ("/", None), ("/shop/item.html", None), ("/a-b_c~d/e,f:g@h+i", None),
            ("/administrator/x", None),  # not /admin: the open route
            ("/search?q=a;b&next=../x&e=%2e%2e%2f;%5c", None),  # `;` and `..` in the query
            ("/shop/%C3%A9t%C3%A9", None), ("/shop/a%20b", None),
            ("/admin/users?back=/x/..;/y", alice), ("/admin", alice)]:
        assert raw_get(agent.port, target, headers=headers) == (200, target), target
    # a host whose routes check nothing is left as it was: every target reaches the task as sent
    for target in ["/x/..;/admin/users", "/admin;jsessionid=1/users", "/ADMIN/users",
                   "/x\\..\\internal\\keys", "/x/%2e%2e;/admin", "/admin./users",
                   "/x/%252e%252e/admin"]:
        assert raw_get(agent.port, target, host="open") == (200, target), target
    assert http_get(agent.port, "open", "/admin/x")[:2] == (200, "task1")
