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

# What is imported here is paid by every run, so: no argparse (a small parser below), no
# dataclasses, no http.client (which brings email.* and ssl), no urllib. json, ssl and quote are
# imported where a rarely used path needs them. `python3 -X importtime -m agent.check ...` shows
# what a run costs.
import os
import signal
import socket
import sys
import tempfile
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing collections.abc or types costs at run time
    from collections.abc import Callable, Sequence
    from types import FrameType

DEFAULT_TIMEOUT = 1.0
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
USER_AGENT = "gateway-check"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
MAX_ANSWER = 16 << 20  # bytes: a larger answer is not one the checks expect


class CheckFailed(Exception):
    """A check's own verdict: the message says why, in a few words."""


class BadAnswer(Exception):
    """What came back is not the HTTP answer a check can read."""


class Stopped(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT so a run ends promptly."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signame = signal.Signals(signum).name


class Check:
    """One probe: `run(deadline)` returns on success and raises CheckFailed (or OSError) if not."""

    __slots__ = ("label", "run")

    def __init__(self, label: str, run: Callable[[float], None]) -> None:
        self.label = label
        self.run = run

    def __repr__(self) -> str:
        return f"Check({self.label!r})"


class Verdict:
    __slots__ = ("line", "ok")

    def __init__(self, ok: bool, line: str) -> None:
        self.ok = ok
        self.line = line

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Verdict):
            return NotImplemented
        return (self.ok, self.line) == (other.ok, other.line)

    def __hash__(self) -> int:
        return hash((self.ok, self.line))

    def __repr__(self) -> str:
        return f"Verdict(ok={self.ok!r}, line={self.line!r})"


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
    if isinstance(exc, BadAnswer):
        return f"bad HTTP answer ({exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return f"{type(exc).__name__}: {exc}"


# --- a minimal HTTP/1.0 client ---------------------------------------------------------------


def connect(host: str, port: int, deadline: float) -> socket.socket:
    """socket.create_connection, but an ASCII host goes to getaddrinfo() as bytes: a str is
    encoded with the `idna` codec, whose import (stringprep, unicodedata) would cost more than
    the rest of a run. Each address in turn, like create_connection."""
    addresses = socket.getaddrinfo(host.encode("ascii") if host.isascii() else host, port,
                                   0, socket.SOCK_STREAM)
    error: OSError | None = None
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(_remaining(deadline))
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
        except BaseException:
            sock.close()
            raise
    raise error if error is not None else OSError(f"no address for {host}")


def _dechunk(body: bytes) -> bytes | None:
    """A chunked body decoded, or None while it is incomplete. Raises BadAnswer if malformed."""
    out: list[bytes] = []
    pos = 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_text = body[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BadAnswer(f"bad chunk size {size_text[:20]!r}") from None
        if size < 0:
            raise BadAnswer(f"bad chunk size {size_text[:20]!r}")
        if size == 0:
            return b"".join(out)  # trailers, if any, are not needed
        start = eol + 2
        if len(body) < start + size + 2:
            return None
        out.append(body[start:start + size])
        if body[start + size:start + size + 2] != b"\r\n":
            raise BadAnswer("chunk not followed by CRLF")
        pos = start + size + 2


def _split_head(data: bytes) -> tuple[bytes, bytes] | None:
    """(head, rest) once the blank line after the headers has arrived."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        index = data.find(sep)
        if index >= 0:
            return data[:index], data[index + len(sep):]
    return None


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    lines = head.decode("iso-8859-1").splitlines()
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or len(code) != 3 or not code.isdigit():
        raise BadAnswer(f"not an HTTP status line: {lines[0][:60]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(code), reason.strip(), headers


def _body(headers: dict[str, str], rest: bytes, closed: bool) -> bytes | None:
    """The body once all of it is in (None: read on)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(rest)
        if body is None and closed:
            raise BadAnswer("connection closed in the middle of a chunked body")
        return body
    length_text = headers.get("content-length")
    if length_text is not None:
        if not length_text.isdigit():
            raise BadAnswer(f"bad Content-Length {length_text[:20]!r}")
        length = int(length_text)
        if len(rest) >= length:
            return rest[:length]
        if closed:
            raise BadAnswer(f"body cut short: {len(rest)} of {length} bytes")
        return None
    return rest if closed else None  # HTTP/1.0: the body ends with the connection


def http_exchange(sock: socket.socket, host_header: str, target: str, deadline: float,
                  want_body: bool = False) -> tuple[int, str, bytes]:
    """GET `target` on a connected socket; (status, reason, body). The body is read only with
    `want_body`: a health check needs the status line alone. Every read has the time left
    before `deadline` as its timeout, so a server dripping bytes cannot outlast it."""
    request = (f"GET {target} HTTP/1.0\r\nHost: {host_header}\r\nUser-Agent: {USER_AGENT}\r\n"
               "Connection: close\r\nAccept: */*\r\n\r\n")
    sock.settimeout(_remaining(deadline))
    sock.sendall(request.encode("ascii"))
    data = b""
    closed = False
    while True:
        if not closed:
            sock.settimeout(_remaining(deadline))
            chunk = sock.recv(65536)
            closed = not chunk
            data += chunk
            if len(data) > MAX_ANSWER:
                raise BadAnswer(f"answer larger than {MAX_ANSWER >> 20} MiB")
        parts = _split_head(data)
        while parts is not None:
            status, reason, headers = _parse_head(parts[0])
            if not 100 <= status < 200:  # skip an interim answer (100 Continue)
                break
            data = parts[1]
            parts = _split_head(data)
        if parts is None:
            if closed:
                raise BadAnswer("connection closed without an answer" if not data
                                else "connection closed in the middle of the headers")
            continue
        if not want_body:
            return status, reason, b""
        body = _body(headers, parts[1], closed)
        if body is not None:
            return status, reason, body
        if closed:  # pragma: no cover - _body raises for every incomplete body once closed
            raise BadAnswer("answer cut short")


# --- the probes ------------------------------------------------------------------------------


def split_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, target) of `http://HOST[:PORT]/PATH?QUERY` or https; IPv6
    literals in brackets. Raises ValueError with the message the command line shows."""
    error = ValueError(f"--http {url!r}: expected http://HOST[:PORT]/PATH or https://...")
    if not url.isascii() or any(c <= " " or c == "\x7f" for c in url):
        raise error  # nothing that could split the request line or a header
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https"):
        raise error
    rest = rest.partition("#")[0]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, target = rest[:cut], rest[cut:]
    if target.startswith("?"):
        target = "/" + target
    hostport = netloc.rpartition("@")[2]
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        if not bracket or ":" not in host or (after and not after.startswith(":")):
            raise error
        port_text = after[1:]
    else:
        host, _, port_text = hostport.partition(":")
        if ":" in port_text:
            raise error
    default = 443 if scheme == "https" else 80
    if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65536):
        raise error
    if not host:
        raise error
    return scheme, host.lower(), int(port_text) if port_text else default, target or "/"


def http_check(url: str) -> Check:
    scheme, host, port, target = split_url(url)
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == (443 if scheme == "https" else 80) else f"{shown}:{port}"

    def run(deadline: float) -> None:
        sock = connect(host, port, deadline)
        try:
            if scheme == "https":
                import ssl  # only when asked for: it costs more to import than all the rest

                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            status, reason, _ = http_exchange(sock, host_header, target, deadline)
        finally:
            sock.close()
        if not 200 <= status < 300:
            raise CheckFailed(f"HTTP {status} {reason}".rstrip())

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
        connect(host, port, deadline).close()

    return Check(f"tcp {value}", run)


def _docker_get(socket_path: str, path: str, deadline: float) -> object:
    import json

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(_remaining(deadline))
        try:
            sock.connect(socket_path)
        except FileNotFoundError:
            raise CheckFailed(f"no Docker socket at {socket_path}") from None
        except PermissionError:
            raise CheckFailed(
                f"permission denied on {socket_path} (is the check's user in the docker group?)"
            ) from None
        status, _, body = http_exchange(sock, "localhost", path, deadline, want_body=True)
    finally:
        sock.close()
    if status != 200:
        raise CheckFailed(f"Docker answered {path.split('?')[0]} with HTTP {status}")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise BadAnswer(f"Docker's answer to {path.split('?')[0]} is not JSON: {exc}") from None


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
        import json
        from urllib.parse import quote

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


class signals_blocked:  # a class: contextlib's decorator costs an import
    """Hold SIGTERM/SIGINT back while a file is being replaced; they arrive right after."""

    def __enter__(self) -> None:
        self.old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    def __exit__(self, *exc: object) -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, self.old)


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
        try:  # noqa: SIM105 - not contextlib.suppress: one import less
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_track_file(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def log(message: str) -> None:
    print(f"gateway-check: {message}", file=sys.stderr, flush=True)


class Watcher:
    """Probe every `interval` s; write `fail_value` after `fall` failures, 0 after `rise` passes.

    The file is rewritten whenever it does not hold the current state (keepalived's `init_file
    ... overwrite` on restart, or someone deleting it), so the two can never disagree for long.
    """

    def __init__(self, checks: Sequence[Check], track_file: str, interval: float,
                 timeout: float, rise: int, fall: int, fail_value: int,
                 fail_on_exit: bool) -> None:
        self.checks = checks
        self.track_file = track_file
        self.interval = interval
        self.timeout = timeout
        self.rise = rise
        self.fall = fall
        self.fail_value = fail_value
        self.fail_on_exit = fail_on_exit

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
# A small parser instead of argparse (several milliseconds to import, every run): the same
# options, help, abbreviations (`--time` for `--timeout`) and error messages, exit status 2.

USAGE = """\
usage: gateway-check [-h] [--http URL] [--tcp HOST:PORT]
                     [--docker-service NAME] [--docker-socket PATH]
                     [--timeout SECONDS] [-q] [--watch] [--track-file PATH]
                     [--interval SECONDS] [--fall N] [--rise N]
                     [--fail-value N] [--keep-on-exit]
"""

HELP = USAGE + f"""
Check that THIS node's gateway can serve (for keepalived). Exit 0 if every
check passes, 1 if not, with one line saying which check failed and why.

options:
  -h, --help            show this help message and exit
  --http URL            expect a 2xx answer from URL (repeatable)
  --tcp HOST:PORT       expect a TCP connection to succeed (repeatable)
  --docker-service NAME
                        expect a running, not unhealthy task of service NAME
                        on this node (repeatable)
  --docker-socket PATH  the local Docker engine's socket (default
                        {DEFAULT_DOCKER_SOCKET})
  --timeout SECONDS     hard deadline for one run of all checks (default {DEFAULT_TIMEOUT})
  -q, --quiet           print nothing on success

watcher:
  run forever and keep a keepalived track_file up to date

  --watch               run as a watcher
  --track-file PATH     the track_file keepalived watches
  --interval SECONDS    time between the starts of two rounds (default 0.1)
  --fall N              consecutive failed rounds before writing the failure
                        (default 1)
  --rise N              consecutive good rounds before writing 0 again
                        (default 3)
  --fail-value N        value written on failure; with track_file weight 0 any
                        non-zero value means FAULT (default 1)
  --keep-on-exit        on SIGTERM leave the file as it is instead of writing
                        the failure value (a planned restart of the watcher
                        then does not move the VIP)
"""


class UsageError(Exception):
    """Bad arguments: the message follows `gateway-check: error: `."""


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"invalid positive number value: {text!r}") from None
    if not value > 0:
        raise UsageError(f"{text!r} is not a positive number")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise UsageError(f"{text!r} is not a count of at least 1")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"invalid int value: {text!r}") from None


def _str(text: str) -> str:
    return text


class Options:
    """The parsed command line, with the defaults of every option."""

    def __init__(self) -> None:
        self.help = False
        self.http: list[str] = []
        self.tcp: list[str] = []
        self.docker_service: list[str] = []
        self.docker_socket = DEFAULT_DOCKER_SOCKET
        self.timeout = DEFAULT_TIMEOUT
        self.quiet = False
        self.watch = False
        self.track_file: str | None = None
        self.interval = 0.1
        self.fall = 1
        self.rise = 3
        self.fail_value = 1
        self.keep_on_exit = False


# long option -> (short option, how to read its value or None for a flag, repeatable)
OPTIONS: dict[str, tuple[str | None, Callable[[str], object] | None, bool]] = {
    "--help": ("-h", None, False),
    "--http": (None, _str, True),
    "--tcp": (None, _str, True),
    "--docker-service": (None, _str, True),
    "--docker-socket": (None, _str, False),
    "--timeout": (None, _positive, False),
    "--quiet": ("-q", None, False),
    "--watch": (None, None, False),
    "--track-file": (None, _str, False),
    "--interval": (None, _positive, False),
    "--fall": (None, _count, False),
    "--rise": (None, _count, False),
    "--fail-value": (None, _int, False),
    "--keep-on-exit": (None, None, False),
}
SHORT = {short: name for name, (short, _, _) in OPTIONS.items() if short}


def _looks_negative(text: str) -> bool:
    """argparse's rule: `-1` or `-.5` is a value, not an option."""
    whole, dot, fraction = text[1:].partition(".")
    return text.startswith("-") and (
        (whole.isdigit() and not dot) or ((not whole or whole.isdigit()) and fraction.isdigit()))


def _option(arg: str) -> tuple[str, str | None]:
    """The long option an argument names (an exact name, `-q`, or an unambiguous prefix) and
    the value given with `=`, if any."""
    if arg in SHORT:
        return SHORT[arg], None
    name, eq, value = arg.partition("=")
    if name in OPTIONS:
        return name, value if eq else None
    matches = [n for n in OPTIONS if n.startswith(name)] if name.startswith("--") else []
    if len(matches) == 1:
        return matches[0], value if eq else None
    if len(matches) > 1:
        raise UsageError(f"ambiguous option: {name} could match {', '.join(matches)}")
    raise LookupError(arg)


def parse_args(argv: Sequence[str]) -> Options:
    opts = Options()
    unknown: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            unknown += args[i - 1:]
            break
        if len(arg) > 2 and arg[1] != "-" and arg[:2] in SHORT:  # -q=1, -qh: as argparse
            rest = arg[2:]
            name = SHORT[arg[:2]]
            if rest.startswith("=") or not all(f"-{c}" in SHORT for c in rest):
                short = OPTIONS[name][0]
                raise UsageError(f"argument {short}/{name}: ignored explicit argument "
                                 f"{rest.removeprefix('=')!r}")
            args[i:i] = [f"-{c}" for c in rest]
            arg = arg[:2]
        if not arg.startswith("-") or arg == "-" or _looks_negative(arg):
            unknown.append(arg)
            continue
        try:
            name, value = _option(arg)
        except LookupError:
            unknown.append(arg)
            continue
        short, convert, repeat = OPTIONS[name]
        shown = f"{short}/{name}" if short else name
        if convert is None:
            if value is not None:
                raise UsageError(f"argument {shown}: ignored explicit argument {value!r}")
            setattr(opts, name[2:].replace("-", "_"), True)
            if name == "--help":
                return opts
            continue
        if value is None:
            if i >= len(args) or (args[i].startswith("-") and not _looks_negative(args[i])):
                raise UsageError(f"argument {shown}: expected one argument")
            value = args[i]
            i += 1
        try:
            converted = convert(value)
        except UsageError as exc:
            raise UsageError(f"argument {shown}: {exc}") from None
        dest = name[2:].replace("-", "_")
        if repeat:
            getattr(opts, dest).append(converted)
        else:
            setattr(opts, dest, converted)
    if unknown:
        raise UsageError(f"unrecognized arguments: {' '.join(unknown)}")
    return opts


def parse_checks(opts: Options) -> list[Check]:
    checks = [http_check(url) for url in opts.http]
    checks += [tcp_check(value) for value in opts.tcp]
    checks += [docker_service_check(name, opts.docker_socket) for name in opts.docker_service]
    return checks


def _checked(argv: Sequence[str]) -> tuple[Options, list[Check]]:
    """The options and checks of a command line, or UsageError saying what is wrong."""
    opts = parse_args(argv)
    if opts.help:
        return opts, []
    try:
        checks = parse_checks(opts)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not checks:
        raise UsageError("give at least one of --http, --tcp, --docker-service")
    if opts.watch and not opts.track_file:
        raise UsageError("--watch needs --track-file")
    if opts.watch and opts.fail_value == 0:
        raise UsageError("--fail-value must not be 0 (0 means OK to keepalived)")
    return opts, checks


def main(argv: Sequence[str] | None = None) -> int:
    try:
        opts, checks = _checked(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        sys.stderr.write(f"{USAGE}gateway-check: error: {exc}\n")
        return 2
    if opts.help:
        sys.stdout.write(HELP)
        return 0

    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_stopped)
    if opts.watch:
        assert opts.track_file is not None
        log(f"watching every {opts.interval:g}s, writing {opts.track_file}: "
            + ", ".join(c.label for c in checks))
        return Watcher(checks, opts.track_file, opts.interval, opts.timeout, opts.rise,
                       opts.fall, opts.fail_value, not opts.keep_on_exit).run()
    try:
        verdict = run_checks(checks, opts.timeout)
    except Stopped as stop:
        print(f"FAIL stopped by {stop.signame} before the checks finished", file=sys.stderr,
              flush=True)
        return 1
    if not verdict.ok:
        print(verdict.line, file=sys.stderr, flush=True)
        return 1
    if not opts.quiet:
        print(verdict.line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
