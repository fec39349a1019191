"""The programs a benchmark starts, and the small network helpers it waits with.

Every program runs in a session of its own, so that stopping it (by its own process id and group)
also stops the workers it forked, and nothing else on the machine. Every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class BenchError(RuntimeError):
    """Something a benchmark needs did not happen; the message says what."""


def wait_until(probe: Callable[[], T | None], timeout: float, what: str,
               interval: float = 0.02) -> T:
    """Call `probe` until it returns something truthy; raise BenchError after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = probe()
            if result:
                return result
        except BenchError:  # a program we wait on has died: waiting longer will not help
            raise
        except Exception as exc:  # the probe's own failure is what we report on timeout
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise BenchError(f"timed out after {timeout:.1f}s waiting for {what}{detail}")
        time.sleep(interval)


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def http_get(host: str, port: int, path: str = "/", host_header: str | None = None,
             timeout: float = 2.0) -> tuple[int, str]:
    """One GET on a fresh connection: (status, body)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        headers = {"Host": host_header} if host_header else {}
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[2]) == pgid:
                members.append(int(entry))
    return members


class Proc:
    """One program we started, its output going to a log file; with `read_stdout`, its
    standard output is a pipe that a thread of ours reads and discards, as a container runtime
    reads a container's (the agent's JSON access log goes there)."""

    def __init__(self, name: str, argv: Sequence[str], log: Path,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None,
                 read_stdout: bool = False) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.stdout_bytes = 0
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv, stdout=subprocess.PIPE if read_stdout else out,
                stderr=out if read_stdout else subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **env} if env else None, cwd=cwd, start_new_session=True)
        self.pid = self.popen.pid
        if read_stdout:
            threading.Thread(target=self._discard, name=f"{name}-stdout", daemon=True).start()

    def _discard(self) -> None:
        pipe = self.popen.stdout
        assert pipe is not None
        while data := os.read(pipe.fileno(), 1 << 16):
            self.stdout_bytes += len(data)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Ask the program to stop; after `timeout`, kill what is left of its process group.

        The group id is our program's pid. It stays ours while the program is not reaped (a
        zombie keeps it), so we wait for the exit without reaping, kill the group, then reap.
        """
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                    break
                time.sleep(0.02)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)
        else:
            # Reaped earlier: workers it left (nginx's) still carry its group id, which keeps
            # that id from being reused while they live.
            for pid in _group_members(self.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def check_alive(self) -> bool:
        """True, or BenchError with the end of the program's log if it has exited."""
        if not self.alive():
            raise BenchError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")
        return True


class Procs:
    """The programs of one benchmark section; `close` stops them, last started first."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[tuple[Proc, int]] = []
        self.memory_dirs: list[Path] = []

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
              stop_signal: int = signal.SIGTERM, read_stdout: bool = False) -> Proc:
        proc = Proc(name, argv, self.workdir / f"{name}.log", env=env, cwd=self.workdir,
                    read_stdout=read_stdout)
        self.started.append((proc, stop_signal))
        return proc

    def memory_dir(self, name: str) -> Path:
        """A folder in memory (a tmpfs), as the gateway's stack mounts one for nginx's files;
        removed by close(). The working directory where no tmpfs is at hand."""
        shm = Path("/dev/shm")
        if not shm.is_dir():
            path = self.workdir / name
            path.mkdir(parents=True, exist_ok=True)
            return path
        path = Path(tempfile.mkdtemp(prefix=f"bench-{name}-", dir=shm))
        self.memory_dirs.append(path)
        return path

    def close(self) -> None:
        while self.started:
            proc, sig = self.started.pop()
            proc.stop(sig)
        while self.memory_dirs:
            shutil.rmtree(self.memory_dirs.pop(), ignore_errors=True)

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_quiet(argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a short command to completion, capturing its output."""
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          check=False)
