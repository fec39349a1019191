"""gateway-check against real sockets on loopback: servers that answer, refuse, hang, blackhole
or drip, a Docker API on a unix socket, and the watcher writing its track file."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import ThreadingUnixStreamServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from agent import check
from tests.support import free_port, wait_until

GENEROUS = 3.0  # seconds of slack on top of a deadline, for a loaded machine


def gateway_check(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.check", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


# --- servers ----------------------------------------------------------------------------------


class Health:
    """What the test HTTP server answers; tests change it while the server runs."""

    def __init__(self) -> None:
        self.status = 200
        self.requests = 0


@pytest.fixture
def http_server() -> Iterator[tuple[str, Health]]:
    health = Health()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            health.requests += 1
            self.send_response(health.status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/healthz", health
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def silent_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """Accepts connections and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        listener.close()
        for conn in accepted:
            conn.close()


@pytest.fixture
def blackhole_port() -> Iterator[int]:
    """A loopback port whose accept queue is full: new SYNs are dropped, connect() hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.1)
    try:
        yield port
    finally:
        for s in [*fillers, listener]:
            s.close()


@pytest.fixture
def dripping_server() -> Iterator[int]:
    """Starts an HTTP answer and then sends one header byte every 50 ms, forever: no single
    read ever times out, only a deadline on the whole exchange ends it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        try:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Drip: ")
            while not stop.wait(0.05):
                conn.sendall(b"a")
        except OSError:
            pass
        finally:
            conn.close()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()


# --- one-shot checks --------------------------------------------------------------------------


def test_all_checks_pass(http_server: tuple[str, Health]) -> None:
    url, health = http_server
    port = urlsplit(url).port
    result = gateway_check("--http", url, "--tcp", f"127.0.0.1:{port}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK ")
    assert health.requests == 1


def test_quiet_success_prints_nothing(http_server: tuple[str, Health]) -> None:
    url, _ = http_server
    result = gateway_check("--http", url, "--quiet")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_http_error_status_fails_and_says_so(http_server: tuple[str, Health]) -> None:
    url, health = http_server
    health.status = 503
    result = gateway_check("--http", url)
    assert result.returncode == 1
    assert result.stderr.strip() == f"FAIL http {url}: HTTP 503 Service Unavailable"


def test_refused_connections_name_the_failed_check(http_server: tuple[str, Health]) -> None:
    url, _ = http_server
    dead = free_port()
    result = gateway_check("--http", url, "--tcp", f"127.0.0.1:{dead}")
    assert result.returncode == 1
    line = result.stderr.strip()
    assert line == f"FAIL tcp 127.0.0.1:{dead}: connection refused"
    assert "\n" not in line


def test_silent_target_ends_at_the_deadline(silent_server: tuple[int, list[socket.socket]],
                                            ) -> None:
    port, _ = silent_server
    started = time.monotonic()
    result = gateway_check("--http", f"http://127.0.0.1:{port}/", "--timeout", "0.5")
    assert time.monotonic() - started < 0.5 + GENEROUS
    assert result.returncode == 1
    assert f"http http://127.0.0.1:{port}/" in result.stderr


def test_blackholed_target_ends_at_the_deadline(blackhole_port: int) -> None:
    started = time.monotonic()
    result = gateway_check("--tcp", f"127.0.0.1:{blackhole_port}",
                           "--http", f"http://127.0.0.1:{blackhole_port}/", "--timeout", "0.5")
    assert time.monotonic() - started < 0.5 + GENEROUS
    assert result.returncode == 1
    assert "no answer within 0.5s" in result.stderr


def test_dripping_answer_cannot_outlast_the_deadline(dripping_server: int) -> None:
    started = time.monotonic()
    result = gateway_check("--http", f"http://127.0.0.1:{dripping_server}/", "--timeout", "0.6")
    assert time.monotonic() - started < 0.6 + GENEROUS
    assert result.returncode == 1


def test_sigterm_ends_a_run_promptly(silent_server: tuple[int, list[socket.socket]]) -> None:
    port, accepted = silent_server
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.check", "--http", f"http://127.0.0.1:{port}/",
         "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: accepted, 10, "gateway-check to connect")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=GENEROUS)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 1
    assert "stopped by SIGTERM" in stderr


@pytest.mark.parametrize("args", [[], ["--tcp", "nohostport"], ["--http", "ftp://x/"],
                                  ["--timeout", "0", "--tcp", "127.0.0.1:1"],
                                  ["--watch", "--tcp", "127.0.0.1:1"]])
def test_bad_arguments_exit_2(args: list[str]) -> None:
    assert gateway_check(*args).returncode == 2


def test_imports_nothing_heavy() -> None:
    heavy = {"aiohttp", "prometheus_client", "pydantic", "yaml", "jinja2", "docker", "pycares"}
    code = ("import sys, agent.check; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_run_checks_in_process_reports_every_failure() -> None:
    def fails(reason: str) -> Callable[[float], None]:
        def run(deadline: float) -> None:
            raise check.CheckFailed(reason)
        return run

    verdict = check.run_checks([check.Check("a", lambda d: None), check.Check("b", fails("x")),
                                check.Check("c", fails("y"))], timeout=1)
    assert verdict == check.Verdict(False, "FAIL b: x; c: y")


# --- --docker-service against a Docker API on a unix socket -----------------------------------


class FakeEngine:
    """Answers /info and /containers/json the way the Docker engine does (the fields used)."""

    def __init__(self) -> None:
        self.node_id = "nodeid0123456789"
        self.swarm_state = "active"
        self.containers: list[dict[str, Any]] = []
        self.queries: list[dict[str, Any]] = []


@pytest.fixture
def docker_socket(tmp_path: Path) -> Iterator[tuple[str, FakeEngine]]:
    engine = FakeEngine()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/info":
                body: Any = {"Swarm": {"NodeID": engine.node_id if engine.swarm_state ==
                                       "active" else "", "LocalNodeState": engine.swarm_state}}
            elif parts.path == "/containers/json":
                filters = json.loads(parse_qs(parts.query)["filters"][0])
                engine.queries.append(filters)
                wanted = set(filters["label"])
                body = [c for c in engine.containers
                        if wanted <= {f"{k}={v}" for k, v in c["Labels"].items()}
                        and c["State"] in filters["status"]]
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

        def address_string(self) -> str:
            return "docker.sock"

    path = str(tmp_path / "docker.sock")
    server = ThreadingUnixStreamServer(path, Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield path, engine
    finally:
        server.shutdown()
        server.server_close()


def task(service: str, node_id: str, status: str = "Up 3 minutes") -> dict[str, Any]:
    return {"State": "running", "Status": status,
            "Labels": {"com.docker.swarm.service.name": service,
                       "com.docker.swarm.node.id": node_id}}


def test_docker_service_running_on_this_node(docker_socket: tuple[str, FakeEngine]) -> None:
    path, engine = docker_socket
    engine.containers = [task("gw_gateway", engine.node_id, "Up 2 minutes (healthy)")]
    result = gateway_check("--docker-service", "gw_gateway", "--docker-socket", path)
    assert result.returncode == 0, result.stderr
    assert engine.queries[0]["label"] == ["com.docker.swarm.service.name=gw_gateway",
                                          f"com.docker.swarm.node.id={engine.node_id}"]


@pytest.mark.parametrize(("containers", "swarm_state", "reason"), [
    ([], "active", "no running task on this node (nodeid012345)"),
    ([task("gw_gateway", "someothernode")], "active", "no running task on this node"),
    ([task("gw_other", "nodeid0123456789")], "active", "no running task on this node"),
    ([task("gw_gateway", "nodeid0123456789", "Up 1 minute (unhealthy)")], "active",
     "not ready: unhealthy"),
    ([task("gw_gateway", "nodeid0123456789", "Up 1 second (health: starting)")], "active",
     "health check still starting"),
    ([], "inactive", "not an active swarm node (state inactive)"),
])
def test_docker_service_failures(docker_socket: tuple[str, FakeEngine],
                                 containers: list[dict[str, Any]], swarm_state: str,
                                 reason: str) -> None:
    path, engine = docker_socket
    engine.containers = containers
    engine.swarm_state = swarm_state
    result = gateway_check("--docker-service", "gw_gateway", "--docker-socket", path)
    assert result.returncode == 1
    assert result.stderr.startswith("FAIL docker service gw_gateway: ")
    assert reason in result.stderr


def test_docker_socket_missing(tmp_path: Path) -> None:
    result = gateway_check("--docker-service", "x", "--docker-socket", str(tmp_path / "none"))
    assert result.returncode == 1
    assert f"no Docker socket at {tmp_path / 'none'}" in result.stderr


# --- the watcher ------------------------------------------------------------------------------


def read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


@pytest.fixture
def watcher(tmp_path: Path, http_server: tuple[str, Health],
            ) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    url, _ = http_server
    procs: list[subprocess.Popen[str]] = []

    def start(*extra: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.check", "--watch", "--track-file",
             str(tmp_path / "state"), "--interval", "0.05", "--rise", "2", "--http", url,
             "--timeout", "0.5", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()


def test_watcher_follows_the_gateway(tmp_path: Path, http_server: tuple[str, Health],
                                     watcher: Callable[..., subprocess.Popen[str]]) -> None:
    _, health = http_server
    state = tmp_path / "state"
    proc = watcher()
    wait_until(lambda: read(state) == "0", 10, "the watcher to write 0 (OK)")
    health.status = 500
    wait_until(lambda: read(state) == "1", 10, "the watcher to write 1 (FAIL)")
    health.status = 200
    wait_until(lambda: read(state) == "0", 10, "the watcher to write 0 again")
    # keepalived's `init_file 1 overwrite` on a restart: the watcher puts the truth back
    state.write_text("1\n")
    wait_until(lambda: read(state) == "0", 10, "the watcher to repair the file")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=GENEROUS)
    assert proc.returncode == 0
    assert read(state) == "1", "a stopped watcher cannot vouch for the gateway"
    assert "FAIL -> " in stderr
    assert "HTTP 500" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"], "no temp file left over"


def test_watcher_keep_on_exit(tmp_path: Path,
                              watcher: Callable[..., subprocess.Popen[str]]) -> None:
    proc = watcher("--keep-on-exit")
    wait_until(lambda: read(tmp_path / "state") == "0", 10, "the watcher to write 0")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=GENEROUS)
    assert read(tmp_path / "state") == "0"


def test_watcher_replaces_the_file_atomically(tmp_path: Path, http_server: tuple[str, Health],
                                              watcher: Callable[..., subprocess.Popen[str]],
                                              ) -> None:
    """A reader never sees an empty or half-written file, only whole values."""
    _, health = http_server
    state = tmp_path / "state"
    watcher("--rise", "1")
    wait_until(lambda: read(state) == "0", 10, "the watcher to write 0")
    seen: set[str | None] = set()
    inodes = set()
    deadline = time.monotonic() + 1
    flip = time.monotonic()
    while time.monotonic() < deadline:
        if time.monotonic() - flip > 0.2:
            health.status = 500 if health.status == 200 else 200
            flip = time.monotonic()
        seen.add(read(state))
        inodes.add(os.stat(state).st_ino)
    assert seen <= {"0", "1"}
    assert len(inodes) > 1, "each change is a new file moved into place"


def test_watcher_survives_a_missing_folder(tmp_path: Path, http_server: tuple[str, Health],
                                           ) -> None:
    """Until the folder exists the watcher says so once and keeps trying; then it writes."""
    url, _ = http_server
    state = tmp_path / "later" / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.check", "--watch", "--track-file", str(state),
         "--interval", "0.05", "--http", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        time.sleep(0.5)
        assert proc.poll() is None
        state.parent.mkdir()
        wait_until(lambda: read(state) == "0", 10, "the watcher to write once it can")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=GENEROUS)
    finally:
        proc.kill()
        proc.wait()
    assert stderr.count("cannot write") == 1
    assert "wrote " in stderr


def test_the_track_file_is_never_written_through_a_planted_link(tmp_path: Path) -> None:
    """The watcher runs as root: a link where a predictable temporary name would be, or as the
    track file itself, must not make it overwrite the file the link points to."""
    track = tmp_path / "gateway.track"
    precious = tmp_path / "precious"
    precious.write_text("keep me\n")
    (tmp_path / f"gateway.track.{os.getpid()}.tmp").symlink_to(precious)  # the old name
    check.write_track_file(str(track), 7)
    assert precious.read_text() == "keep me\n"
    assert track.read_text() == "7\n"
    assert track.stat().st_mode & 0o777 == 0o644
    # the track file a link: replaced by a file, the link's target untouched
    track.unlink()
    track.symlink_to(precious)
    check.write_track_file(str(track), 0)
    assert not track.is_symlink()
    assert track.read_text() == "0\n"
    assert precious.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".tmp") == [
        f"gateway.track.{os.getpid()}.tmp"]  # the planted link only: no temporary file left


# --- the HTTP client: what http.client used to read for the checks -----------------------------


@pytest.fixture
def raw_server() -> Iterator[tuple[int, list[bytes], list[bytes]]]:
    """Answers each connection with the next of `answers` (bytes sent as they are, then the
    connection closed) and records each request."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    answers: list[bytes] = []
    requests: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                requests.append(data)
                with contextlib.suppress(OSError):
                    conn.sendall(answers.pop(0) if answers else b"")

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1], answers, requests
    finally:
        listener.close()


@pytest.mark.parametrize(("answer", "outcome"), [
    (b"HTTP/1.1 204 No Content\r\n\r\n", "OK"),
    (b"HTTP/1.0 200\r\n\r\n", "OK"),  # no reason phrase
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "OK"),
    (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", "OK"),  # bare LF line ends
    (b"HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n", "HTTP 302 Found"),
    (b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     "HTTP 500 Internal Server Error"),
    (b"", "bad HTTP answer (connection closed without an answer)"),
    (b"HTTP/1.1 200 OK\r\nServer: x", "bad HTTP answer (connection closed in the middle of "
                                       "the headers)"),
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "bad HTTP answer (not an HTTP status line: "
                                     "'SSH-2.0-OpenSSH_9.2')"),
    (b"HTTP/1.1 2000 OK\r\n\r\n", "bad HTTP answer (not an HTTP status line"),
])
def test_http_answers(raw_server: tuple[int, list[bytes], list[bytes]], answer: bytes,
                      outcome: str) -> None:
    port, answers, requests = raw_server
    answers.append(answer)
    url = f"http://127.0.0.1:{port}/readyz?x=1"
    result = gateway_check("--http", url)
    if outcome == "OK":
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"OK http {url} (")
    else:
        assert result.returncode == 1
        assert result.stderr.startswith(f"FAIL http {url}: {outcome}")
    request = requests[0].decode()
    assert request.startswith("GET /readyz?x=1 HTTP/1.0\r\n")
    assert f"\r\nHost: 127.0.0.1:{port}\r\n" in request
    assert "\r\nUser-Agent: gateway-check\r\n" in request


@pytest.mark.parametrize(("answer", "body"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello, and more", b"hello"),
    (b"HTTP/1.0 200 OK\r\n\r\nuntil the end", b"until the end"),  # no length: read to EOF
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nTrailer: x\r\n\r\n", b"hello, world"),
])
def test_http_bodies(raw_server: tuple[int, list[bytes], list[bytes]], answer: bytes,
                     body: bytes) -> None:
    port, answers, _ = raw_server
    answers.append(answer)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        status, reason, got = check.http_exchange(sock, "x", "/", time.monotonic() + 5,
                                                  want_body=True)
    assert (status, reason, got) == (200, "OK", body)


@pytest.mark.parametrize(("answer", "error"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", "body cut short: 5 of 10 bytes"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "bad Content-Length 'x'"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
     "connection closed in the middle of a chunked body"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size b'zz'"),
])
def test_http_bodies_refused(raw_server: tuple[int, list[bytes], list[bytes]], answer: bytes,
                             error: str) -> None:
    port, answers, _ = raw_server
    answers.append(answer)
    with socket.create_connection(("127.0.0.1", port)) as sock, \
            pytest.raises(check.BadAnswer, match=error.replace("(", r"\(")):
        check.http_exchange(sock, "x", "/", time.monotonic() + 5, want_body=True)


def test_body_with_a_length_does_not_wait_for_the_connection_to_close() -> None:
    """A Docker engine that keeps the connection open: the length says when the body ends."""
    a, b = socket.socketpair()
    with a, b:
        b.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]")
        status, _, body = check.http_exchange(a, "localhost", "/x", time.monotonic() + 60,
                                              want_body=True)
        assert (status, body) == (200, b"[]")
        assert b.recv(4096).startswith(b"GET /x HTTP/1.0\r\nHost: localhost\r\n")


def test_ipv6_literal_host() -> None:
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers["Host"])
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    class V6Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6

    try:
        server = V6Server(("::1", 0), Handler)
    except OSError as exc:
        pytest.fail(f"no IPv6 loopback to test with: {exc}")
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        port = server.server_address[1]
        result = gateway_check("--http", f"http://[::1]:{port}/healthz",
                               "--tcp", f"[::1]:{port}")
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr
    assert seen == [f"[::1]:{port}"]


def test_https_is_verified(http_server: tuple[str, Health]) -> None:
    """https:// speaks TLS: a plain HTTP server on the other end is a failure, not a pass."""
    url, health = http_server
    result = gateway_check("--http", url.replace("http://", "https://"))
    assert result.returncode == 1
    assert result.stderr.startswith("FAIL http https://127.0.0.1:")
    assert health.requests == 0


def test_unresolvable_name_says_so() -> None:
    result = gateway_check("--tcp", "no-such-host.invalid:80", "--timeout", "5")
    assert result.returncode == 1
    assert "name lookup failed" in result.stderr


@pytest.mark.parametrize("url", ["http://127.0.0.1/a b", "http://127.0.0.1/a\r\nX-Evil: 1",
                                 "http://[::1/", "http://[::1]x/", "http://h:0/",
                                 "http://h:99999/", "http://h:x/", "http:///path",
                                 "http://127.0.0.1/\u00e9"])
def test_urls_that_could_not_be_sent_are_refused(url: str) -> None:
    result = gateway_check("--http", url)
    assert result.returncode == 2
    assert result.stderr.endswith(
        f"gateway-check: error: --http {url!r}: expected http://HOST[:PORT]/PATH or "
        "https://...\n")


@pytest.mark.parametrize(("url", "parts"), [
    ("http://127.0.0.1:8080/readyz", ("http", "127.0.0.1", 8080, "/readyz")),
    ("http://GW.example", ("http", "gw.example", 80, "/")),
    ("https://gw.example/h?x=1#frag", ("https", "gw.example", 443, "/h?x=1")),
    ("http://gw.example?x=1", ("http", "gw.example", 80, "/?x=1")),
    ("http://user:pw@[fe80::1]:81/p", ("http", "fe80::1", 81, "/p")),
])
def test_split_url(url: str, parts: tuple[str, str, int, str]) -> None:
    assert check.split_url(url) == parts


# --- the command line: argparse's behaviour without its import --------------------------------


def test_help() -> None:
    result = gateway_check("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: gateway-check [-h] [--http URL]")
    for option in check.OPTIONS:
        assert f"  {option}" in result.stdout or f", {option}" in result.stdout


@pytest.mark.parametrize(("args", "error"), [
    ([], "give at least one of --http, --tcp, --docker-service"),
    (["--t", "1", "--tcp", "h:1"], "ambiguous option: --t could match --tcp, --timeout, "
                                   "--track-file"),
    (["--tcp"], "argument --tcp: expected one argument"),
    (["--http", "--tcp", "h:1"], "argument --http: expected one argument"),
    (["foo", "--tcp", "h:1", "--bar"], "unrecognized arguments: foo --bar"),
    (["--timeout", "-1", "--tcp", "h:1"], "argument --timeout: '-1' is not a positive number"),
    (["--timeout", "x", "--tcp", "h:1"], "argument --timeout: invalid positive number value: "
                                         "'x'"),
    (["--fail-value", "x", "--tcp", "h:1"], "argument --fail-value: invalid int value: 'x'"),
    (["--fall", "0", "--tcp", "h:1"], "argument --fall: '0' is not a count of at least 1"),
    (["-q=1", "--tcp", "h:1"], "argument -q/--quiet: ignored explicit argument '1'"),
    (["-qx", "--tcp", "h:1"], "argument -q/--quiet: ignored explicit argument 'x'"),
    (["-x", "--tcp", "h:1"], "unrecognized arguments: -x"),
    (["--quiet=1", "--tcp", "h:1"], "argument -q/--quiet: ignored explicit argument '1'"),
    (["--watch", "--tcp", "h:1"], "--watch needs --track-file"),
    (["--watch", "--track-file", "f", "--fail-value", "0", "--tcp", "h:1"],
     "--fail-value must not be 0 (0 means OK to keepalived)"),
    (["--tcp", "h:1", "--", "--quiet"], "unrecognized arguments: -- --quiet"),
])
def test_bad_arguments_say_why(args: list[str], error: str) -> None:
    result = gateway_check(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: gateway-check [-h]")
    assert result.stderr.endswith(f"\ngateway-check: error: {error}\n")


def test_options_as_argparse_read_them() -> None:
    opts = check.parse_args(["--time=0.5", "--http", "http://a/", "--http=http://b/", "-q",
                             "--fail-v", "-3", "--watch", "--track-file", "/t", "--ri", "2",
                             "--keep"])
    assert (opts.timeout, opts.http, opts.quiet, opts.fail_value, opts.watch,
            opts.track_file, opts.rise, opts.keep_on_exit) == (
        0.5, ["http://a/", "http://b/"], True, -3, True, "/t", 2, True)
    defaults = check.parse_args(["--tcp", "h:1"])
    assert check.parse_args(["-qh"]).help
    assert (defaults.timeout, defaults.interval, defaults.fall, defaults.rise,
            defaults.fail_value, defaults.docker_socket, defaults.quiet) == (
        1.0, 0.1, 1, 3, 1, "/var/run/docker.sock", False)


def test_a_run_imports_only_what_it_needs(http_server: tuple[str, Health]) -> None:
    """What keepalived pays for every second: none of the modules this program used to import
    (http.client brings email.* and ssl; argparse; dataclasses brings inspect), nor the `idna`
    codec a host name given as str would load."""
    url, _ = http_server
    port = urlsplit(url).port
    costly = ["argparse", "dataclasses", "http.client", "email", "ssl", "json", "inspect",
              "encodings.idna", "unicodedata", "urllib.parse"]
    code = ("import sys; from agent.check import main; "
            f"code = main(['--http', {url!r}, '--tcp', '127.0.0.1:{port}', '-q']); "
            f"print(code, [m for m in {costly!r} if m in sys.modules])")
    # -S: without site, which in a development environment imports some of these itself
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                            check=True,
                            env={**os.environ, "PYTHONPATH": str(Path(check.__file__).parents[2])})
    assert result.stdout.strip() == "0 []", result.stderr
