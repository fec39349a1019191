"""`gateway-check`: can THIS node's gateway serve? Standard library only.

keepalived runs it on every node, either as a `vrrp_script` (one run per second at best) or as a
long-running watcher (`--watch`) that probes several times a second and writes a keepalived
`track_file` the moment the answer changes. Either way it must be cheap to start, so it imports
nothing beyond the standard library (and `agent/__init__.py` imports nothing at all).

Checks, combinable, all must pass:

    --http URL              a 2xx answer (the local gateway's health URL, or the agent's /readyz)
    --tcp HOST:PORT         a TCP connection (a host-mode published port)
    --docker-service NAME   a running, not unhealthy task of that service on THIS node, asked of the
                            local Docker socket

`--timeout` is a hard deadline for the whole run, also when a target hangs or blackholes: every
check runs in its own thread and the answer is given when the deadline passes, whatever the
threads are still doing. The result is one line naming each failed check and why.

Exit status: 0 all checks passed, 1 a check failed (or the run was cut short by SIGTERM/SIGINT),
2 bad arguments.

Track file values (keepalived 2.2 `track_file`): 0 means OK; with `weight 0` on the track_file a
non-zero value puts the VRRP instance in FAULT, which hands the VIP over fastest; with a non-zero
weight keepalived adds value*weight to the priority.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from types import FrameType
from urllib.parse import quote, urlsplit

DEFAULT_TIMEOUT = 1.0
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
USER_AGENT = "gateway-check"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class CheckFailed(Exception):
    """A check's own verdict: the message says why, in a few words."""


class Stopped(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT so a run ends promptly."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signame = signal.Signals(signum).name


@dataclass(frozen=True)
class Check:
    """One probe: `run(deadline)` returns on success and raises CheckFailed (or OSError) if not."""

    label: str
    run: Callable[[float], None]


@dataclass(frozen=True)
class Verdict:
    ok: bool
    line: str


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise CheckFailed("no time left before the deadline")
    return left


def _describe(exc: BaseException) -> str:
    """A short reason for an exception raised by a probe."""
    if isinstance(exc, CheckFailed):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, socket.gaierror):
        return f"name lookup failed: {exc.strerror}"
    if isinstance(exc, http.client.HTTPException):
        return f"bad HTTP answer ({type(exc).__name__}: {exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return f"{type(exc).__name__}: {exc}"


# --- the probes ------------------------------------------------------------------------------


def http_check(url: str) -> Check:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--http {url!r}: expected http://HOST[:PORT]/PATH or https://...")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def run(deadline: float) -> None:
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            import ssl  # only when asked for: it costs more to import than everything else here

            conn = http.client.HTTPSConnection(
                host, port, timeout=_remaining(deadline), context=ssl.create_default_context()
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=_remaining(deadline))
        try:
            conn.request(
                "GET", target, headers={"User-Agent": USER_AGENT, "Connection": "close"}
            )
            response = conn.getresponse()
            if not 200 <= response.status < 300:
                raise CheckFailed(f"HTTP {response.status} {response.reason}".rstrip())
        finally:
            conn.close()

    return Check(f"http {url}", run)


def parse_host_port(value: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT`."""
    host, sep, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"--tcp {value!r}: expected HOST:PORT")
    return host, int(port_text)


def tcp_check(value: str) -> Check:
    host, port = parse_host_port(value)

    def run(deadline: float) -> None:
        with socket.create_connection((host, port), timeout=_remaining(deadline)):
            pass

    return Check(f"tcp {value}", run)


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over the Docker daemon's unix socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _docker_get(socket_path: str, path: str, deadline: float) -> object:
    conn = _UnixHTTPConnection(socket_path, timeout=_remaining(deadline))
    try:
        try:
            conn.request("GET", path, headers={"User-Agent": USER_AGENT})
        except FileNotFoundError:
            raise CheckFailed(f"no Docker socket at {socket_path}") from None
        except PermissionError:
            raise CheckFailed(
                f"permission denied on {socket_path} (is the check's user in the docker group?)"
            ) from None
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise CheckFailed(f"Docker answered {path.split('?')[0]} with HTTP {response.status}")
        return json.loads(body)
    finally:
        conn.close()


def _task_problem(container: dict[str, object]) -> str | None:
    """Why a running container of the service cannot count as serving, or None if it can."""
    status = str(container.get("Status", ""))
    if "(unhealthy)" in status:
        return "unhealthy"
    if "(health: starting)" in status:
        return "health check still starting"
    return None


def docker_service_check(service: str, socket_path: str) -> Check:
    def run(deadline: float) -> None:
        info = _docker_get(socket_path, "/info", deadline)
        swarm = info.get("Swarm", {}) if isinstance(info, dict) else {}
        node_id = swarm.get("NodeID") if isinstance(swarm, dict) else None
        if not node_id or swarm.get("LocalNodeState") != "active":
            state = swarm.get("LocalNodeState", "unknown") if isinstance(swarm, dict) else "?"
            raise CheckFailed(f"this Docker engine is not an active swarm node (state {state})")
        # The local engine lists only local containers; the node label makes "on THIS node"
        # explicit and works on workers, where the /tasks endpoint is refused.
        filters = json.dumps(
            {
                "label": [
                    f"com.docker.swarm.service.name={service}",
                    f"com.docker.swarm.node.id={node_id}",
                ],
                "status": ["running"],
            }
        )
        containers = _docker_get(
            socket_path, f"/containers/json?filters={quote(filters)}", deadline
        )
        if not isinstance(containers, list) or not containers:
            raise CheckFailed(f"no running task on this node ({node_id[:12]})")
        problems = [_task_problem(c) for c in containers if isinstance(c, dict)]
        if all(problems):
            reasons = ", ".join(map(str, problems))
            raise CheckFailed(f"its tasks on this node are not ready: {reasons}")

    return Check(f"docker service {service}", run)


# --- running them ----------------------------------------------------------------------------


def run_checks(checks: Sequence[Check], timeout: float) -> Verdict:
    """Run every check at once; answer when all have finished or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    failures: list[str | None] = [None] * len(checks)
    finished = [False] * len(checks)
    cond = threading.Condition()
    started = time.monotonic()

    def worker(index: int, check: Check) -> None:
        reason = None
        try:
            check.run(deadline)
        except Exception as exc:
            reason = _describe(exc)
        with cond:
            failures[index] = reason
            finished[index] = True
            cond.notify()

    for index, check in enumerate(checks):
        threading.Thread(target=worker, args=(index, check), daemon=True).start()
    with cond:
        cond.wait_for(lambda: all(finished), timeout=max(0.0, deadline - time.monotonic()))
        snapshot = [
            failures[i] if finished[i] else f"no answer within {timeout:g}s"
            for i in range(len(checks))
        ]
    failed = [f"{check.label}: {reason}" for check, reason in zip(checks, snapshot, strict=True)
              if reason is not None]
    elapsed_ms = (time.monotonic() - started) * 1000
    if failed:
        return Verdict(False, "FAIL " + "; ".join(failed))
    return Verdict(True, f"OK {', '.join(c.label for c in checks)} ({elapsed_ms:.0f} ms)")


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


@contextmanager
def signals_blocked() -> Iterator[None]:
    """Hold SIGTERM/SIGINT back while a file is being replaced; they arrive right after."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def write_track_file(path: str, value: int) -> None:
    """Replace the track file atomically (temp file in the same folder, then os.replace).

    The watcher runs as root beside keepalived: the temporary file gets a name no one can
    guess and is created with O_EXCL (mkstemp), so a link planted in the folder cannot make
    it write anywhere else; os.replace puts a new file in place of whatever `path` was, a link
    included, and never writes through it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=os.path.dirname(path) or ".")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(f"{value}\n")
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_track_file(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def log(message: str) -> None:
    print(f"gateway-check: {message}", file=sys.stderr, flush=True)


@dataclass
class Watcher:
    """Probe every `interval` s; write `fail_value` after `fall` failures, 0 after `rise` passes.

    The file is rewritten whenever it does not hold the current state (keepalived's `init_file
    ... overwrite` on restart, or someone deleting it), so the two can never disagree for long.
    """

    checks: Sequence[Check]
    track_file: str
    interval: float
    timeout: float
    rise: int
    fall: int
    fail_value: int
    fail_on_exit: bool

    def value(self, ok: bool) -> int:
        return 0 if ok else self.fail_value

    def _write(self, value: int, last_error: str | None) -> str | None:
        """Write the file; on failure say so once (not every round) and try again next round.
        Until it works keepalived keeps the value it has (`init_file 1`: FAULT)."""
        try:
            with signals_blocked():
                write_track_file(self.track_file, value)
        except OSError as exc:
            error = f"cannot write {self.track_file}: {exc.strerror or exc}"
            if error != last_error:
                log(f"{error}; trying again every round")
            return error
        if last_error is not None:
            log(f"wrote {self.track_file} again")
        return None

    def run(self) -> int:
        state: bool | None = None
        write_error: str | None = None
        streak = 0
        next_run = time.monotonic()
        try:
            while True:
                verdict = run_checks(self.checks, self.timeout)
                if state is None or verdict.ok == state:
                    streak = 0
                else:
                    streak += 1
                if state is None or streak >= (self.rise if verdict.ok else self.fall):
                    if state != verdict.ok:
                        log(f"{'OK' if verdict.ok else 'FAIL'} -> {self.track_file}="
                            f"{self.value(verdict.ok)}: {verdict.line}")
                    state, streak = verdict.ok, 0
                wanted = str(self.value(verdict.ok if state is None else state))
                if read_track_file(self.track_file) != wanted:
                    write_error = self._write(int(wanted), write_error)
                next_run += self.interval
                now = time.monotonic()
                if next_run < now:  # a slow round: start the next one now, keep the cadence after
                    next_run = now
                time.sleep(next_run - now)
        except Stopped as stop:
            if self.fail_on_exit:
                if self._write(self.fail_value, None) is None:
                    log(f"stopped by {stop.signame}: wrote {self.fail_value} to "
                        f"{self.track_file}")
            else:
                log(f"stopped by {stop.signame}: left {self.track_file} as it was")
            return 0


# --- command line ----------------------------------------------------------------------------


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count of at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway-check",
        description="Check that THIS node's gateway can serve (for keepalived). Exit 0 if every "
        "check passes, 1 if not, with one line saying which check failed and why.",
    )
    parser.add_argument("--http", action="append", default=[], metavar="URL",
                        help="expect a 2xx answer from URL (repeatable)")
    parser.add_argument("--tcp", action="append", default=[], metavar="HOST:PORT",
                        help="expect a TCP connection to succeed (repeatable)")
    parser.add_argument("--docker-service", action="append", default=[], metavar="NAME",
                        help="expect a running, not unhealthy task of service NAME on this node "
                        "(repeatable)")
    parser.add_argument("--docker-socket", default=DEFAULT_DOCKER_SOCKET, metavar="PATH",
                        help="the local Docker engine's socket (default %(default)s)")
    parser.add_argument("--timeout", type=_positive, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="hard deadline for one run of all checks (default %(default)s)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    watch = parser.add_argument_group(
        "watcher", "run forever and keep a keepalived track_file up to date")
    watch.add_argument("--watch", action="store_true", help="run as a watcher")
    watch.add_argument("--track-file", metavar="PATH", help="the track_file keepalived watches")
    watch.add_argument("--interval", type=_positive, default=0.1, metavar="SECONDS",
                       help="time between the starts of two rounds (default %(default)s)")
    watch.add_argument("--fall", type=_count, default=1, metavar="N",
                       help="consecutive failed rounds before writing the failure (default 1)")
    watch.add_argument("--rise", type=_count, default=3, metavar="N",
                       help="consecutive good rounds before writing 0 again (default 3)")
    watch.add_argument("--fail-value", type=int, default=1, metavar="N",
                       help="value written on failure; with track_file weight 0 any non-zero "
                       "value means FAULT (default 1)")
    watch.add_argument("--keep-on-exit", action="store_true",
                       help="on SIGTERM leave the file as it is instead of writing the failure "
                       "value (a planned restart of the watcher then does not move the VIP)")
    return parser


def parse_checks(args: argparse.Namespace) -> list[Check]:
    checks = [http_check(url) for url in args.http]
    checks += [tcp_check(value) for value in args.tcp]
    checks += [docker_service_check(name, args.docker_socket) for name in args.docker_service]
    return checks


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        checks = parse_checks(args)
    except ValueError as exc:
        parser.error(str(exc))
    if not checks:
        parser.error("give at least one of --http, --tcp, --docker-service")
    if args.watch and not args.track_file:
        parser.error("--watch needs --track-file")
    if args.watch and args.fail_value == 0:
        parser.error("--fail-value must not be 0 (0 means OK to keepalived)")

    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_stopped)
    if args.watch:
        log(f"watching every {args.interval:g}s, writing {args.track_file}: "
            + ", ".join(c.label for c in checks))
        return Watcher(checks, args.track_file, args.interval, args.timeout, args.rise,
                       args.fall, args.fail_value, not args.keep_on_exit).run()
    try:
        verdict = run_checks(checks, args.timeout)
    except Stopped as stop:
        print(f"FAIL stopped by {stop.signame} before the checks finished", file=sys.stderr,
              flush=True)
        return 1
    if not verdict.ok:
        print(verdict.line, file=sys.stderr, flush=True)
        return 1
    if not args.quiet:
        print(verdict.line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
