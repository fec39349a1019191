"""A route can never make the gateway serve one of its secrets (issue #24, finding 1), through
the real agent and nginx.

The files routes name (error pages, htpasswd files) come from --route-files-dir. Here the
secrets' folder (--certs-dir) holds the agent's own admin token and a TLS key, and routes try
to reach them: by name (refused by the routes model, naming the route and the field), through a
symbolic link and a hard link in the route files' folder (refused by the agent, naming the file
and the routes). The secrets' bytes appear in no answer: not the routes', not /status', not the
metrics'. The legitimate page and password file work.

The folder is given as GATEWAY_ROUTE_FILES_DIR: an agent without the option ignores it and
reads the files from --certs-dir, which is what this test catches.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.integration.conftest import TASK_ADDRESSES, write_routes
from tests.support import wait_until
from tests.support.gateway import Agent, Dnsmasq, Upstream

T1 = TASK_ADDRESSES[0]
StartAgent = Callable[..., Agent]
TOKEN = "admin-token-" + "9f2c" * 8
KEY = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIKeyOfTheGatewayDoNotServe0123456789ab\n" \
      "-----END PRIVATE KEY-----\n"
PAGE = "<!doctype html><title>Back soon</title><h1>Back soon</h1>\n"


def route(host: str, upstream_port: int, **options: object) -> dict[str, object]:
    return {"hosts": [host], "service": "web", "port": upstream_port, **options}


def test_no_route_serves_a_secret_of_the_gateway(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent, tmp_path: Path, reachable: Path) -> None:
    workdir = reachable  # the secrets' folder too: the agent's admin token file is written there
    dns.set("tasks.web", [T1])
    (workdir / "demo.key").write_text(KEY)
    (workdir / "demo.key").chmod(0o600)
    files = tmp_path / "route-files"
    files.mkdir()
    (files / "page.html").write_text(PAGE)
    sha = base64.b64encode(hashlib.sha1(b"alice-pw").digest()).decode()
    (files / "users.htpasswd").write_text(f"alice:{{SHA}}{sha}\n")
    (files / "link.html").symlink_to(workdir / "admin-token")
    (files / "link.htpasswd").symlink_to(workdir / "admin-token")
    os.link(workdir / "demo.key", files / "hard.html")
    routes = [
        route("page", upstream_port, maintenance=True, error_page="page.html"),
        route("link", upstream_port, maintenance=True, error_page="link.html"),
        route("hard", upstream_port, maintenance=True, error_page="hard.html"),
        route("auth", upstream_port, basic_auth="users.htpasswd"),
        route("lock", upstream_port, basic_auth="link.htpasswd"),
    ]
    agent = start_agent(routes, "--certs-dir", str(workdir), workdir=workdir,
                        admin_token=TOKEN, env={"GATEWAY_ROUTE_FILES_DIR": str(files)})
    assert (workdir / "admin-token").read_text().strip() == TOKEN

    # routes naming the secrets themselves: a change of the routes file while it serves
    evil = [route("evil", upstream_port, maintenance=True, error_page="admin-token"),
            route("evil2", upstream_port, maintenance=True, error_page="demo.key"),
            route("evil3", upstream_port, basic_auth="admin-token")]
    write_routes(workdir / "routes.yaml", routes + evil)
    wait_until(lambda: agent.status()["routes_error"] or agent.get("evil")[0] != 404, 15,
               "the agent to take or refuse the change")

    hosts = ["page", "link", "hard", "auth", "lock", "evil", "evil2", "evil3"]
    answers = {host: agent.get(host) for host in hosts}
    answers |= {path: agent.admin(path) for path in ("/status", "/metrics")}
    for where, (_, body) in answers.items():
        for secret in (TOKEN, KEY.splitlines()[1]):
            assert secret not in body, f"{where} answered a secret: {body[:200]!r}"
    log = agent.log_tail(2000)
    assert TOKEN not in log
    assert KEY.splitlines()[1] not in log

    # refused by name, each with its route and field; the routes already serving keep serving
    error = agent.status()["routes_error"]
    assert "routes[5].error_page: 'admin-token' is not a file name error_page takes" in error
    assert "routes[6].error_page: 'demo.key' is not a file name error_page takes" in error
    assert "routes[7].basic_auth.file: 'admin-token' is not a file name basic_auth takes" in \
        error
    assert {answers[h][0] for h in ("evil", "evil2", "evil3")} == {404}
    # refused by the agent, naming the file, why, and the routes that name it
    status = agent.status()["status"]
    assert (f"error page refused: hard.html: the same file as {workdir / 'demo.key'}, a "
            "secret of the gateway: no route reads it (error_page of hard/)") in status
    assert (f"link.html: a symbolic link: a route's file is read only as a file of {files} "
            "itself, never through a link (error_page of link/)") in status
    assert (f"password file refused: link.htpasswd: a symbolic link: a route's file is read "
            f"only as a file of {files} itself, never through a link (basic_auth of lock/)"
            ) in status
    assert answers["link"] == answers["hard"] == (503, "503 down for maintenance\n")
    assert answers["lock"] == (503, "503 the password file of this route cannot be used\n")

    # the files meant for routes work
    assert answers["page"] == (503, PAGE)
    assert answers["auth"][0] == 401
    alice = base64.b64encode(b"alice:alice-pw").decode()
    assert agent.get("auth", headers={"Authorization": f"Basic {alice}"}) == (200, "task1")
    # and their copies are nginx's workers' alone
    copies = [p for p in (workdir / "nginx" / "route-files").rglob("*") if p.is_file()]
    assert len(copies) == 2
    assert {p.stat().st_mode & 0o777 for p in copies} == {0o400 if os.geteuid() == 0 else 0o600}


def test_render_reads_route_files_as_run_does(tmp_path: Path) -> None:
    """`gateway-agent render` goes through the same reading: the page of --route-files-dir is in
    the configuration, a link to a secret is refused and said on stderr, and --certs-dir is
    never read for a route's file."""
    certs, files = tmp_path / "secrets", tmp_path / "route-files"
    certs.mkdir()
    files.mkdir()
    (certs / "admin-token").write_text(TOKEN)
    (files / "page.html").write_text(PAGE)
    (files / "link.html").symlink_to(certs / "admin-token")
    routes = write_routes(tmp_path / "routes.yaml", [
        route("page", 80, maintenance=True, error_page="page.html"),
        route("link", 80, maintenance=True, error_page="link.html")])
    done = subprocess.run([sys.executable, "-m", "agent", "render", "--routes", str(routes),
                           "--certs-dir", str(certs), "--route-files-dir", str(files)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == (f"error_page_refused file=link.html error=\"link.html: a symbolic "
                           f"link: a route's file is read only as a file of {files} itself, "
                           "never through a link (error_page of link/)\" effect=\"its routes "
                           "answer nginx's own error text\"\n")
    assert done.stdout.count("error_page 502 503 504 /.gateway-error-pages/") == 1
    same = subprocess.run([sys.executable, "-m", "agent", "render", "--routes", str(routes),
                           "--certs-dir", str(files), "--route-files-dir", str(files)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert "is (or is inside)" in same.stderr
    assert "error_page 502" not in same.stdout
