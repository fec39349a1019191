"""Real programs for the integration tests: dnsmasq, HTTP upstreams and the gateway agent.

Everything binds to loopback addresses (127.0.0.0/8) and is stopped by the fixture that made it.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import resource
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support import free_port, require_programs, wait_until


def http_get(port: int, host: str | None = "x", path: str = "/", address: str = "127.0.0.1",
             timeout: float = 5.0, headers: Mapping[str, str] | None = None,
             method: str = "GET", source: str | None = None,
             ) -> tuple[int, str, dict[str, str]]:
    """One request on a fresh connection: (status, body, headers). host=None sends no Host;
    `source` is the local address to connect from (any 127.x: a client the test names)."""
    conn = http.client.HTTPConnection(address, port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    try:
        conn.putrequest(method, path, skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
        return resp.status, body, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def metric_samples(text: str) -> dict[str, float]:
    """Every sample of an exposition, parsed by prometheus_client: {'name{k="v"}': value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


class Dnsmasq:
    """A real DNS server answering from a hosts file; `set()` changes answers, then waits."""

    def __init__(self, workdir: Path, address: str = "127.0.0.53") -> None:
        self.paths = require_programs("dnsmasq")
        self.address = address
        self.port = free_port(address)
        self.hosts_file = workdir / "dns-hosts"
        self.log_file = workdir / "dnsmasq.log"
        self.records: dict[str, list[str]] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.hosts_file.write_text("")

    @property
    def nameserver(self) -> str:
        return f"{self.address}:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.paths["dnsmasq"], "--keep-in-foreground", "--no-resolv", "--no-hosts",
             f"--addn-hosts={self.hosts_file}", f"--listen-address={self.address}",
             f"--port={self.port}", "--bind-interfaces", "--pid-file=", "--local=/#/",
             "--cache-size=0", "--log-facility=-",
             # Docker answers with a TTL of 600 s; so do we, so that any caching shows
             "--local-ttl=600",
             *(["--user=root", "--group=root"] if os.geteuid() == 0 else [])],
            stdout=self.log_file.open("ab"), stderr=subprocess.STDOUT)
        wait_until(lambda: self._answers("dnsmasq-ready.test") == [], 10, "dnsmasq to answer")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)

    def _answers(self, name: str) -> list[str] | None:
        """The A answer for `name` as dnsmasq gives it now (None if it does not answer)."""
        from dnslib import QTYPE, DNSRecord

        try:
            reply = DNSRecord.parse(DNSRecord.question(name, "A").send(
                self.address, self.port, timeout=0.5))
        except (OSError, Exception):
            return None
        return sorted(str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A)

    def set(self, name: str, addresses: Sequence[str]) -> None:
        """Make `name` answer exactly `addresses` (none: NXDOMAIN), and wait until it does."""
        if addresses:
            self.records[name] = list(addresses)
        else:
            self.records.pop(name, None)
        lines = [f"{a} {n}" for n, addrs in sorted(self.records.items()) for a in addrs]
        tmp = self.hosts_file.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.hosts_file)
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        want = sorted(addresses)
        wait_until(lambda: self._answers(name) == want, 5, f"dnsmasq to answer {name} {want}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes; with Nagle's algorithm the body waits for nginx's
    # delayed ACK of the headers on a kept-alive upstream connection: 40 ms per request
    disable_nagle_algorithm = True
    server: _Upstream

    def do_GET(self) -> None:
        if self.path.endswith("/upgrade") and "Upgrade" in self.headers:
            self._switch(self.headers["Upgrade"])
            return
        if self.path.startswith("/slow"):
            with self.server.lock:
                self.server.in_flight += 1
            try:
                time.sleep(float(self.path.partition("=")[2] or 2))
            finally:
                with self.server.lock:
                    self.server.in_flight -= 1
        if self.path.startswith("/headers"):
            body = json.dumps({k.lower(): v for k, v in self.headers.items()})
        else:
            body = self.server.name
        data = body.encode()
        # counted before the answer goes out (a client that has its answer sees the count) and
        # under the lock (two threads' += could lose one)
        with self.server.lock:
            self.server.hits += 1
            self.server.requests.append(
                (self.path, {k.lower(): v for k, v in self.headers.items()}))
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Seen-Path", self.path)  # the request target as the task got it
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        # the body is read whole: left unread, it would be taken for the next request on a
        # kept-alive connection
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.do_GET()

    def _switch(self, protocol: str) -> None:
        """Any protocol asked for (as an h2c server would): 101, then an echo of the bytes that
        follow, prefixed with this upstream's name once."""
        with self.server.lock:
            self.server.hits += 1
        self.send_response(101)
        self.send_header("Upgrade", protocol)
        self.send_header("Connection", "Upgrade")
        self.end_headers()
        self.wfile.flush()
        self.connection.sendall(f"{self.server.name}:".encode())
        while data := self.connection.recv(4096):
            self.connection.sendall(data)
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Upstream(ThreadingHTTPServer):
    daemon_threads = True
    # the default backlog of 5 overflows when nginx opens many connections at once (new
    # workers after a reload, a burst of requests): a connection then waits for the kernel's
    # retry, a delay that belongs to the test's upstream, not to the gateway
    request_queue_size = 128
    name: str
    hits: int
    # the last requests answered: their targets and headers (names lowered)
    requests: collections.deque[tuple[str, dict[str, str]]]
    in_flight: int  # slow requests being answered now
    lock: threading.Lock

    @property
    def paths(self) -> list[str]:
        """The targets of the last requests answered."""
        with self.lock:
            return [path for path, _ in self.requests]


class Upstream:
    """An HTTP server on its own loopback address that answers with its name (over HTTPS with
    `tls`, a server context with its certificate)."""

    def __init__(self, name: str, address: str, port: int,
                 tls: ssl.SSLContext | None = None) -> None:
        self.name, self.address, self.port = name, address, port
        self.server = _Upstream((address, port), _Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.server.name = name
        self.server.hits = 0
        self.server.requests = collections.deque(maxlen=1000)
        self.server.in_flight = 0
        self.server.lock = threading.Lock()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Agent:
    """`gateway-agent run` as a user starts it, with a private nginx under a temporary prefix."""

    def __init__(self, workdir: Path, routes: Path, nameserver: str,
                 extra: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 admin_address: str = "127.0.0.1",
                 task_networks: str | None = "127.0.0.0/8",
                 admin_token: str | None = None,
                 nofile: tuple[int, int] | None = None, stdout: int | None = None) -> None:
        """`task_networks`: the test's tasks are on loopback, which the default
        --task-networks refuses; None runs the agent with its default. `admin_token`: given
        with --admin-token-file, and shown by admin() on every request. `nofile`: the agent's
        (soft, hard) limit of open files, as a container's `ulimits` would give it. `stdout`:
        a descriptor for the agent's standard output (a pipe, as a container's); by default
        it goes to the log file with its stderr."""
        self.nofile = nofile
        self.stdout = stdout
        self.admin_token = admin_token
        if admin_token is not None:
            token_file = workdir / "admin-token"
            token_file.write_text(admin_token + "\n")
            token_file.chmod(0o600)
            extra = ["--admin-token-file", str(token_file), *extra]
        require_programs("nginx")
        self.workdir = workdir
        self.port = free_port()
        self.admin_address = admin_address
        self.admin_port = free_port(admin_address)
        self.status_port = free_port()
        self.resolver_port = free_port()  # the agent's DNS server for nginx (TCP and UDP)
        self.prefix = workdir / "nginx"
        self.log_file = workdir / "agent.log"
        self.args = [sys.executable, "-m", "agent", "run", "--routes", str(routes),
                     "--nameserver", nameserver, "--listen", f"127.0.0.1:{self.port}",
                     "--admin-listen", f"{admin_address}:{self.admin_port}",
                     "--status-listen", f"127.0.0.1:{self.status_port}",
                     "--resolver-listen", f"127.0.0.1:{self.resolver_port}",
                     "--nginx-prefix", str(self.prefix), "--worker-processes", "1",
                     "--log-level", "debug",
                     # stopping drains for 5 s by default (agent/gateway/drain.py): tests of
                     # the drain give their own --drain-delay (a later flag wins)
                     "--drain-delay", "0",
                     *(["--task-networks", task_networks] if task_networks else []), *extra]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True) -> None:
        nofile = self.nofile
        log = self.log_file.open("ab")
        self.proc = subprocess.Popen(self.args, stdout=log if self.stdout is None else self.stdout,
                                     stderr=subprocess.STDOUT if self.stdout is None else log,
                                     env=self.env,
                                     cwd=Path(__file__).resolve().parents[2],
                                     preexec_fn=None if nofile is None else lambda: (
                                         resource.setrlimit(resource.RLIMIT_NOFILE, nofile)))
        if wait_ready:
            wait_until(self.ready, 20, f"the agent to be ready; log:\n{self.log_tail()}")

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.log_tail()}")
        try:
            return self.admin("/readyz")[0] == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def get(self, host: str | None, path: str = "/", **kw: Any) -> tuple[int, str]:
        status, body, _ = http_get(self.port, host, path, **kw)
        return status, body

    def admin(self, path: str, token: str | None = None, method: str = "GET",
              ) -> tuple[int, str]:
        """A request to the admin port, with `token` or the agent's own (if any)."""
        token = token or self.admin_token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        status, body, _ = http_get(self.admin_port, "localhost", path,
                                   address=self.admin_address, headers=headers, method=method)
        return status, body

    def status(self) -> dict[str, Any]:
        code, body = self.admin("/status")
        assert code == 200, body
        return dict(json.loads(body))

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, parsed by prometheus_client: {'name{k="v"}': value}."""
        code, body = self.admin("/metrics")
        assert code == 200, body
        return metric_samples(body)

    def cycles(self) -> float:
        """Reconcile cycles finished so far (ok or not)."""
        m = self.metrics()
        return sum(m[f'gateway_reconcile_cycles_total{{result="{r}"}}'] for r in ("ok", "error"))

    def wait_cycles(self, count: int = 2, timeout: float = 15) -> None:
        """Wait until `count` more cycles have finished: at least count - 1 of them began after
        this call, so whatever was set before it has been discovered and rendered. What a test
        then finds unchanged did not change though the agent looked."""
        start = self.cycles()
        wait_until(lambda: self.cycles() >= start + count, timeout,
                   f"{count} more reconcile cycles", interval=0.05)

    def nginx_master(self) -> int:
        """The pid of nginx's master, from its pid file in the agent's nginx prefix."""
        return int((self.prefix / "nginx.pid").read_text())

    def nginx_master_rss_kib(self) -> int:
        """The resident memory of nginx's master: the configuration it read, and what its
        allocator kept of the ones before (its workers are forked from it)."""
        status = Path(f"/proc/{self.nginx_master()}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("VmRSS:")))

    def logs_nginx_holds(self) -> set[str]:
        """The names of the files ending in `.log` that nginx's master and workers hold open:
        nginx opens every access log when it reads its configuration."""
        master = self.nginx_master()
        pids = [master, *nginx_children(master)]
        assert len(pids) > 1, "nginx's workers"
        names = set()
        for pid in pids:
            with contextlib.suppress(OSError):  # a worker gone meanwhile
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    with contextlib.suppress(OSError):
                        target = os.readlink(fd)
                        if target.endswith(".log"):
                            names.add(Path(target).name)
        return names

    def backends_seen(self, host: str, requests: int = 30) -> set[str]:
        """Which upstream names answer `requests` requests for `host`."""
        seen = set()
        for _ in range(requests):
            status, body = self.get(host)
            if status == 200:
                seen.add(body)
        return seen


def nginx_children(master: int) -> list[int]:
    """The processes nginx's master started (its workers, its cache helpers)."""
    text = Path(f"/proc/{master}/task/{master}/children").read_text()
    return sorted(int(pid) for pid in text.split())


def nginx_wrapper(directory: Path) -> tuple[Path, Path]:
    """An nginx that fails `-t` while a flag file exists; (the wrapper, the flag)."""
    real = require_programs("nginx")["nginx"]
    flag = directory / "fail-t"
    wrapper = directory / "nginx-wrapper"
    wrapper.write_text(
        "#!/bin/sh\n"
        "# nginx as the agent runs it; `-t` fails while the flag file exists\n"
        'for arg in "$@"; do\n'
        f'    if [ "$arg" = -t ] && [ -e "{flag}" ]; then\n'
        '        echo "nginx: [emerg] refused by the test (flag file)" >&2; exit 1\n'
        "    fi\n"
        "done\n"
        f'exec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, flag


@contextlib.contextmanager
def upstreams(names_addresses: Mapping[str, str], port: int) -> Iterator[dict[str, Upstream]]:
    servers = {n: Upstream(n, a, port) for n, a in names_addresses.items()}
    try:
        yield servers
    finally:
        for s in servers.values():
            s.stop()
