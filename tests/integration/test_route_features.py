"""Route options through the real nginx, as a client notices them (docs/configuration.md).

Clients are told apart by the loopback address they connect from (any 127.x is this machine).
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import gzip
import hashlib
import http.client
import json
import subprocess
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from tests.integration.conftest import TASK_ADDRESSES
from tests.support import free_port, require_programs, wait_until
from tests.support.gateway import Agent, Dnsmasq, Upstream, http_get
from tests.support.tlsca import TestCA

T1, T2, T3, T4 = TASK_ADDRESSES[:4]
StartAgent = Callable[..., Agent]
INSIDE, OUTSIDE, PROXY = "127.0.20.5", "127.0.21.5", "127.0.22.1"


def web(port: int, **options: object) -> dict[str, object]:
    return {"hosts": ["web"], "service": "web", "port": port, **options}


def status_from(agent: Agent, source: str, host: str = "web", path: str = "/",
                headers: dict[str, str] | None = None) -> int:
    return http_get(agent.port, host, path, source=source, headers=headers)[0]


# -- allow -----------------------------------------------------------------------------------------


def test_allow_lets_in_only_the_listed_client_addresses(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.web", [T1])
    dns.set("tasks.open", [T2])
    agent = start_agent([web(upstream_port, allow=["127.0.20.0/24", "::1"]),
                         {"hosts": ["open"], "service": "open", "port": upstream_port}])
    assert http_get(agent.port, "web", source=INSIDE)[:2] == (200, "task1")
    status, body, _ = http_get(agent.port, "web", source=OUTSIDE)
    assert status == 403
    assert "task1" not in body
    # without a trusted proxy a client's own X-Forwarded-For is nothing but a header
    assert status_from(agent, OUTSIDE, headers={"X-Forwarded-For": INSIDE}) == 403
    # another route without `allow` lets everyone in
    assert http_get(agent.port, "open", source=OUTSIDE)[:2] == (200, "task2")


def test_allow_behind_a_trusted_proxy_checks_the_client_it_forwards(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.web", [T1])
    agent = start_agent([web(upstream_port, allow=["127.0.20.0/24"])],
                        "--trusted-proxies", "127.0.22.0/24")

    def through_proxy(forwarded_for: str) -> tuple[int, str]:
        status, body, _ = http_get(agent.port, "web", "/headers", source=PROXY,
                                   headers={"X-Forwarded-For": forwarded_for,
                                            "X-Forwarded-Proto": "https"})
        return status, body

    status, body = through_proxy(INSIDE)
    assert status == 200
    seen = json.loads(body)
    # the task sees the chain as before: the client, then the proxy; the proxy's scheme is kept
    assert seen["x-forwarded-for"] == f"{INSIDE}, {PROXY}"
    assert seen["x-real-ip"] == PROXY
    assert seen["x-forwarded-proto"] == "https"
    assert through_proxy(OUTSIDE)[0] == 403
    # a client that forges an allowed address in front of its own: the proxy appended the real
    # one, and that is the one checked (the right-most address that is not a trusted proxy)
    assert through_proxy(f"{INSIDE}, {OUTSIDE}")[0] == 403
    assert through_proxy(f"{OUTSIDE}, {INSIDE}, 127.0.22.9")[0] == 200
    # the proxy's own address is not allowed, and a client that is not a trusted proxy cannot
    # forward for anyone
    assert status_from(agent, PROXY) == 403
    assert status_from(agent, OUTSIDE, headers={"X-Forwarded-For": INSIDE}) == 403


# -- basic_auth ------------------------------------------------------------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def openssl_passwd(scheme: str, password: str) -> str:
    """A hash as `htpasswd` or `openssl passwd` writes it (-apr1, -6)."""
    return subprocess.run([require_programs("openssl")["openssl"], "passwd", scheme, "-stdin"],
                          input=password, capture_output=True, text=True, check=True,
                          ).stdout.strip()


def test_basic_auth_lets_in_only_users_with_their_password(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent, tmp_path: Path, reachable: Path) -> None:
    dns.set("tasks.web", [T1])
    dns.set("tasks.admin", [T2])
    files = tmp_path / "route-files"
    files.mkdir()
    sha = base64.b64encode(hashlib.sha1(b"alice-pw").digest()).decode()
    users = files / "users.htpasswd"
    users.write_text(f"# the shop's admins\nalice:{{SHA}}{sha}\n"
                     f"bob:{openssl_passwd('-apr1', 'bob-pw')}\n"
                     f"carol:{openssl_passwd('-6', 'carol-pw')}:a comment nginx ignores\n")
    (files / "plain.htpasswd").write_text("dave:{PLAIN}dave-pw\n")
    agent = start_agent([web(upstream_port, basic_auth={"file": "users.htpasswd",
                                                        "realm": "Shop admin"}),
                         {"hosts": ["admin"], "service": "admin", "port": upstream_port,
                          "basic_auth": "plain.htpasswd"}],
                        "--route-files-dir", str(files), workdir=reachable)

    status, body, headers = http_get(agent.port, "web")
    assert status == 401
    assert headers["www-authenticate"] == 'Basic realm="Shop admin"'
    assert "task1" not in body
    for user in ("alice", "bob", "carol"):
        assert http_get(agent.port, "web", headers=basic(user, f"{user}-pw"))[:2] == \
            (200, "task1"), user
        assert http_get(agent.port, "web", headers=basic(user, "wrong"))[0] == 401, user
    assert http_get(agent.port, "web", headers=basic("mallory", "alice-pw"))[0] == 401

    # a file nginx should not use locks its route instead of opening it
    status, body, _ = http_get(agent.port, "admin", headers=basic("dave", "dave-pw"))
    assert (status, body) == (503, "503 the password file of this route cannot be used\n")
    assert "password_file_refused file=plain.htpasswd" in agent.log_tail(400)
    assert "plain text" in agent.log_tail(400)
    assert "password file refused: plain.htpasswd" in agent.status()["status"]

    # a file replaced by a broken one: the last good copy keeps serving
    users.write_text("alice:not-a-hash\n")
    wait_until(lambda: "password file refused: plain.htpasswd: " in agent.status()["status"]
               and "; users.htpasswd: line 1 (user 'alice')" in agent.status()["status"], 10,
               "the broken file to be refused")
    assert http_get(agent.port, "web", headers=basic("bob", "bob-pw"))[0] == 200
    # and a good one replaces it
    users.write_text(f"erin:{openssl_passwd('-6', 'erin-pw')}\n")
    # (until the reload's old worker has stopped, it may still answer with the old file)
    wait_until(lambda: http_get(agent.port, "web", headers=basic("erin", "erin-pw"))[0] == 200
               and http_get(agent.port, "web", headers=basic("bob", "bob-pw"))[0] == 401,
               10, "the new file to serve")


def test_basic_auth_with_bcrypt_works_where_crypt_checks_it_and_is_refused_where_not(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent, tmp_path: Path, reachable: Path) -> None:
    dns.set("tasks.web", [T1])
    files = tmp_path / "route-files"
    files.mkdir()
    crypt = ctypes.CDLL(ctypes.util.find_library("crypt"))
    crypt.crypt.restype = ctypes.c_char_p
    # `htpasswd -B` with cost 5; the salt is fixed here, any would do
    hashed = crypt.crypt(b"frank-pw", b"$2y$05$saltsaltsaltsaltsalt.u").decode()
    (files / "bcrypt.htpasswd").write_text(f"frank:{hashed}\n")
    agent = start_agent([web(upstream_port, basic_auth="bcrypt.htpasswd")],
                        "--route-files-dir", str(files), workdir=reachable)
    if hashed.startswith("$2y$05$"):  # this machine's crypt(3), nginx's too, knows bcrypt
        assert http_get(agent.port, "web", headers=basic("frank", "frank-pw"))[:2] == \
            (200, "task1")
        assert http_get(agent.port, "web", headers=basic("frank", "wrong"))[0] == 401
    else:
        assert http_get(agent.port, "web", headers=basic("frank", "frank-pw"))[0] == 503
        assert "cannot check it" in agent.log_tail(400)


# -- rate_limit ------------------------------------------------------------------------------------


def test_rate_limit_answers_429_beyond_the_burst_per_client(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.web", [T1])
    dns.set("tasks.open", [T2])
    # one request a minute: no request of this test is allowed by time passing, only by burst
    agent = start_agent([web(upstream_port, rate_limit={"rate": "1r/m", "burst": 2}),
                         {"hosts": ["open"], "service": "open", "port": upstream_port}],
                        "--trusted-proxies", "127.0.22.0/24")
    before = tasks["task1"].server.hits
    assert [status_from(agent, INSIDE) for _ in range(5)] == [200, 200, 200, 429, 429]
    assert tasks["task1"].server.hits - before == 3, "a refused request never reaches a task"
    # another client has its own count; another route has no limit
    assert status_from(agent, OUTSIDE) == 200
    assert [status_from(agent, INSIDE, "open") for _ in range(5)] == [200] * 5

    # behind a trusted proxy each forwarded client is counted, not the proxy
    def via_proxy(client: str) -> int:
        return status_from(agent, PROXY, headers={"X-Forwarded-For": client})

    assert [via_proxy("127.0.30.1") for _ in range(4)] == [200, 200, 200, 429]
    assert [via_proxy("127.0.30.2") for _ in range(3)] == [200, 200, 200]
    assert via_proxy(INSIDE) == 429  # the same client as before, now through the proxy


# -- strip_prefix ----------------------------------------------------------------------------------


def test_strip_prefix_passes_the_path_below_the_prefix(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.web", [T1])
    dns.set("tasks.api", [T2])
    agent = start_agent([
        web(upstream_port, path="/api", strip_prefix=True),
        web(upstream_port, path="/kept"),  # without strip_prefix the path passes as it is
        {"hosts": ["web"], "service": "api", "port": upstream_port, "path": "/v1/api",
         "strip_prefix": True},
    ], "--trusted-proxies", "127.0.22.0/24")

    def seen(path: str, source: str = INSIDE,
             headers: dict[str, str] | None = None) -> tuple[int, str, str]:
        status, body, response = http_get(agent.port, "web", path, source=source,
                                          headers=headers)
        return status, body, response.get("x-seen-path", "")

    assert seen("/api/users?page=2") == (200, "task1", "/users?page=2")
    assert seen("/api/") == (200, "task1", "/")
    assert seen("/api") == (200, "task1", "/")
    assert seen("/api?x=1") == (200, "task1", "/?x=1")
    assert seen("/v1/api/users/7") == (200, "task2", "/users/7")
    assert seen("/kept/users") == (200, "task1", "/kept/users")
    assert seen("/apix")[0] == 404  # a prefix is whole segments

    # the task learns the prefix it was served under; a trusted proxy's own prefix comes first
    status, body, _ = seen("/api/headers")
    assert status == 200
    assert json.loads(body)["x-forwarded-prefix"] == "/api"
    status, body, _ = seen("/api/headers", source=OUTSIDE,
                           headers={"X-Forwarded-Prefix": "/evil"})
    assert json.loads(body)["x-forwarded-prefix"] == "/api", "a client's prefix is dropped"
    status, body, _ = seen("/api/headers", source=PROXY,
                           headers={"X-Forwarded-Prefix": "/shop"})
    assert json.loads(body)["x-forwarded-prefix"] == "/shop/api"


# -- headers ---------------------------------------------------------------------------------------


def test_headers_are_set_and_removed_both_ways(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.web", [T1])
    agent = start_agent([
        web(upstream_port, headers={
            "request": {"X-Api-Version": "2 (beta)", "X-Debug": None},
            "response": {"X-Frame-Options": "DENY", "X-Seen-Path": None,
                         "Content-Security-Policy": "default-src 'self'; img-src * data:"}}),
        web(upstream_port, path="/replaced", headers={"response": {"X-Seen-Path": "hidden"}}),
    ])
    status, body, response = http_get(agent.port, "web", "/headers",
                                      headers={"X-Debug": "1", "X-Api-Version": "1",
                                               "X-Other": "kept"})
    assert status == 200
    seen = json.loads(body)
    assert seen["x-api-version"] == "2 (beta)", "set: the client's value is replaced"
    assert "x-debug" not in seen, "removed before it reaches the task"
    assert seen["x-other"] == "kept"
    assert response["x-frame-options"] == "DENY"
    # a ';' between the quotes nginx writes is text, and the value arrives whole
    assert response["content-security-policy"] == "default-src 'self'; img-src * data:"
    assert "x-seen-path" not in response, "the task's header is removed"
    # an answer nginx gives itself carries them too ('always'): here 413, a body too large
    status, _, response = http_get(agent.port, "web", method="POST",
                                   headers={"Content-Length": str(2 << 20)})
    assert status == 413
    assert response["x-frame-options"] == "DENY"

    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=5)
    try:
        conn.request("GET", "/replaced/x", headers={"Host": "web"})
        answer = conn.getresponse()
        answer.read()
        values = [v for k, v in answer.getheaders() if k.lower() == "x-seen-path"]
    finally:
        conn.close()
    assert values == ["hidden"], "set: the task's own value is replaced, not doubled"


# -- redirect --------------------------------------------------------------------------------------


def test_a_host_or_path_that_only_redirects(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.web", [T1])
    agent = start_agent([
        {"hosts": ["www.example.com"], "redirect": "https://example.com"},  # www to the apex
        {"hosts": ["example.com"], "service": "web", "port": upstream_port},
        {"hosts": ["example.com"], "path": "/old",
         "redirect": {"to": "https://example.com/new", "code": 301, "keep_path": False}},
    ])
    status, _, headers = http_get(agent.port, "www.example.com", "/shop/cart?item=7")
    assert (status, headers["location"]) == (308, "https://example.com/shop/cart?item=7")
    status, _, headers = http_get(agent.port, "example.com", "/old/page")
    assert (status, headers["location"]) == (301, "https://example.com/new")
    assert http_get(agent.port, "example.com", "/oldies")[:2] == (200, "task1")
    assert http_get(agent.port, "example.com", "/")[:2] == (200, "task1")
    # nothing is looked up for a route that only redirects
    assert set(agent.status()["endpoints"]) == {"web"}


# -- compress --------------------------------------------------------------------------------------


def test_compress_gzips_text_for_clients_that_accept_it(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.web", [T1])
    agent = start_agent([web(upstream_port, compress=True),
                         web(upstream_port, path="/plain", strip_prefix=True)])
    pad = {"X-Pad": "a" * 2000}  # the task echoes the headers: a text body of some size

    def get(path: str, accept: str | None) -> tuple[int, bytes, dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=5)
        try:
            conn.request("GET", path, headers={"Host": "web", **pad,
                                               **({"Accept-Encoding": accept} if accept else {})})
            answer = conn.getresponse()
            return answer.status, answer.read(), {k.lower(): v for k, v in answer.getheaders()}
        finally:
            conn.close()

    status, body, headers = get("/headers", "gzip, deflate")
    assert status == 200
    assert headers["content-encoding"] == "gzip"
    assert "accept-encoding" in headers["vary"].lower()
    text = gzip.decompress(body)
    assert json.loads(text)["x-pad"] == pad["X-Pad"]
    assert len(body) < len(text) / 10
    # a client that does not ask, and a route that does not compress, get the body as it is
    for path, accept in (("/headers", None), ("/plain/headers", "gzip")):
        status, body, headers = get(path, accept)
        assert status == 200
        assert "content-encoding" not in headers
        assert json.loads(body)["x-pad"] == pad["X-Pad"]


# -- sticky ----------------------------------------------------------------------------------------


def test_a_sticky_client_stays_on_one_task_while_others_spread_static(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    dns.set("tasks.web", [T1, T2, T3, T4])
    # static: the consistent hash of the cookie (on resolve: tests/integration/test_traffic.py)
    agent = start_agent([web(upstream_port, sticky={"cookie": "gateway_task"})],
                        "--upstream-mode", "static")

    # a first visit: the gateway picks a task and hands the client a cookie for it
    status, first, headers = http_get(agent.port, "web")
    assert status == 200
    cookie = headers["set-cookie"].split(";")[0]
    name, _, value = cookie.partition("=")
    assert name == "gateway_task"
    assert value
    assert "HttpOnly" in headers["set-cookie"]
    # ... and then every request with it reaches that task, and sets no new cookie
    seen = set()
    for _ in range(100):
        status, body, headers = http_get(agent.port, "web", headers={"Cookie": cookie})
        assert status == 200
        assert "set-cookie" not in headers
        seen.add(body)
    assert seen == {first}

    # new clients (no cookie) spread over the tasks, each sticking to its own
    firsts = {}
    for _i in range(40):
        status, body, headers = http_get(agent.port, "web")
        firsts[headers["set-cookie"].split(";")[0]] = body
    assert len(set(firsts.values())) >= 3, firsts
    for client, task in list(firsts.items())[:10]:
        assert {agent.get("web", headers={"Cookie": client})[1] for _ in range(5)} == {task}

    # a cookie the application set itself works as well: the same value, the same task
    assert len({agent.get("web", headers={"Cookie": "gateway_task=user-42"})[1]
                for _ in range(20)}) == 1

    # its task stops: the client moves to another; clients of the other tasks stay where they
    # were (consistent hashing)
    gone = first
    dns.set("tasks.web", [t.address for t in tasks.values()
                          if t.address in (T1, T2, T3, T4) and t.name != gone])
    wait_until(lambda: agent.get("web", headers={"Cookie": cookie})[1] != gone, 10,
               "the client of a stopped task to move")
    stayed = {c: t for c, t in firsts.items() if t != gone}
    assert stayed
    assert {c: agent.get("web", headers={"Cookie": c})[1] for c in stayed} == stayed


# -- error_page, maintenance -----------------------------------------------------------------------

PAGE = "<!doctype html><title>Back soon</title><h1>The shop is back soon</h1>\n"


def test_a_route_answers_its_own_error_page_and_can_be_switched_to_maintenance(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent, tmp_path: Path, reachable: Path) -> None:
    dns.set("tasks.web", [T1])
    dns.set("tasks.gone", ["127.0.10.99"])  # an address where nothing listens
    files = tmp_path / "route-files"
    files.mkdir()
    (files / "shop.html").write_text(PAGE)
    agent = start_agent([
        {"hosts": ["web"], "service": "empty", "port": upstream_port, "error_page": "shop.html"},
        {"hosts": ["gone"], "service": "gone", "port": upstream_port, "error_page": "shop.html",
         "connect_timeout": "1s"},
        web(upstream_port, path="/shop", maintenance=True),
        web(upstream_port, path="/blog", maintenance=True, error_page="shop.html"),
        web(upstream_port, path="/plain"),
    ], "--route-files-dir", str(files), workdir=reachable)

    # no task: 503 with the route's page (also for a POST: the page is sent whatever the method)
    for method in ("GET", "POST"):
        status, body, headers = http_get(agent.port, "web", "/x", method=method)
        assert (status, body) == (503, PAGE), method
        assert headers["content-type"] == "text/html"
        assert headers["retry-after"] == "5"
    # the task does not answer: 502 with the page
    status, body, _ = http_get(agent.port, "gone", "/")
    assert (status, body) == (502, PAGE)
    # maintenance: 503 whatever the tasks, with the route's page or a line of text
    assert http_get(agent.port, "web", "/shop/cart")[:2] == (503, "503 down for maintenance\n")
    assert http_get(agent.port, "web", "/blog")[:2] == (503, PAGE)
    assert http_get(agent.port, "web", "/plain")[:2] == (200, "task1"), "the task is there"
    # the pages are internal: no client reaches them directly
    status, body, _ = http_get(agent.port, "web", "/.gateway-error-pages/")
    assert status == 404
    assert PAGE not in body


# -- protocol: grpc --------------------------------------------------------------------------------


def grpc_task(name: str, address: str, port: int) -> grpc.Server:
    """A gRPC service without TLS, as a task runs it, written with grpcio's generic handlers:
    `Echo/Who` answers the task's name and what the gateway told it; `Echo/Count` streams."""
    def who(request: bytes, context: grpc.ServicerContext) -> bytes:
        metadata = dict(context.invocation_metadata())
        return json.dumps({"task": name, "request": request.decode(),
                           "x-forwarded-for": metadata.get("x-forwarded-for"),
                           "x-forwarded-proto": metadata.get("x-forwarded-proto")}).encode()

    def count(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for i in range(int(request)):
            yield f"{name}:{i}".encode()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("gateway.Echo", {
        "Who": grpc.unary_unary_rpc_method_handler(who),
        "Count": grpc.unary_stream_rpc_method_handler(count),
    }),))
    server.add_insecure_port(f"{address}:{port}")
    server.start()
    return server


def test_grpc_calls_reach_the_tasks_over_https(
        dns: Dnsmasq, start_agent: StartAgent, tmp_path: Path) -> None:
    ca = TestCA()
    certs = tmp_path / "certs"
    certs.mkdir()
    ca.issue("grpc.example.com").write(certs, "grpc.example.com")
    port = free_port("127.0.11.1")
    servers = [grpc_task(f"grpc{i}", f"127.0.11.{i}", port) for i in (1, 2)]
    try:
        dns.set("tasks.echo", ["127.0.11.1", "127.0.11.2"])
        https = free_port()
        start_agent([{"hosts": ["grpc.example.com"], "service": "echo", "port": port,
                      "protocol": "grpc", "tls": True}],
                    "--https-listen", f"127.0.0.1:{https}", "--certs-dir", str(certs),
                    "--tls-ca-bundle", str(ca.write_bundle(tmp_path / "roots.pem")))
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.root_pem)
        options = [("grpc.ssl_target_name_override", "grpc.example.com"),
                   ("grpc.default_authority", "grpc.example.com")]
        with grpc.secure_channel(f"127.0.0.1:{https}", credentials, options) as channel:
            who = channel.unary_unary("/gateway.Echo/Who")
            answers = [json.loads(who(f"call {i}".encode(), timeout=10)) for i in range(10)]
            assert {a["task"] for a in answers} == {"grpc1", "grpc2"}, "calls are balanced"
            assert answers[3]["request"] == "call 3"
            assert answers[0]["x-forwarded-for"] == "127.0.0.1"
            assert answers[0]["x-forwarded-proto"] == "https"
            stream = channel.unary_stream("/gateway.Echo/Count")
            parts = [p.decode() for p in stream(b"5", timeout=10)]
            assert [p.split(":")[1] for p in parts] == ["0", "1", "2", "3", "4"]
            assert len({p.split(":")[0] for p in parts}) == 1, "one call, one task"
            with pytest.raises(grpc.RpcError) as info:
                channel.unary_unary("/gateway.Echo/Nothing")(b"", timeout=10)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # the task's own answer
    finally:
        for server in servers:
            server.stop(0)


def test_every_https_route_speaks_http2_to_clients_and_http1_to_its_tasks(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent, tmp_path: Path) -> None:
    """Why there is no `protocol: http2`: HTTP/2 to clients is on for every route with `tls`
    (ALPN), and nginx passes requests on to the tasks as HTTP/1.1 (grpc_pass aside)."""
    ca = TestCA()
    certs = tmp_path / "certs"
    certs.mkdir()
    ca.issue("web.example.com").write(certs, "web.example.com")
    dns.set("tasks.web", [T1])
    https = free_port()
    start_agent([{"hosts": ["web.example.com"], "service": "web", "port": upstream_port,
                  "tls": True}],
                "--https-listen", f"127.0.0.1:{https}", "--certs-dir", str(certs),
                "--tls-ca-bundle", str(ca.write_bundle(tmp_path / "roots.pem")))
    roots = ca.write_bundle(tmp_path / "client-roots.pem")

    def curl(*options: str) -> list[str]:
        out = subprocess.run(
            [require_programs("curl")["curl"], "-sS", "--cacert", str(roots), "--resolve",
             f"web.example.com:{https}:127.0.0.1", "-w", "\n%{http_version}", *options,
             f"https://web.example.com:{https}/headers"],
            capture_output=True, text=True, timeout=20, check=True)
        return out.stdout.rsplit("\n", 1)

    body, version = curl("--http2")
    assert version == "2", "HTTP/2 chosen by ALPN"
    # the task, an HTTP/1.1 server that knows no HTTP/2, answered
    assert json.loads(body)["x-forwarded-proto"] == "https"
    assert tasks["task1"].server.hits > 0
    assert curl("--http1.1")[1] == "1.1", "and HTTP/1.1 for clients that ask for it"
