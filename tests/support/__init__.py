"""Helpers every test tier shares: prerequisites, free ports, waiting for a condition.

A test whose prerequisites are missing skips on a developer's machine and FAILS under CI=true:
CI installs everything, so a missing program there is a defect, not a reason to pass.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, TypeVar

import pytest

CI = os.environ.get("CI", "").lower() == "true"

T = TypeVar("T")


def missing(reason: str) -> None:
    """Skip outside CI, fail inside it."""
    if CI:
        pytest.fail(f"prerequisite missing under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def require_programs(*names: str) -> dict[str, str]:
    """Return {name: path} for each program, or skip/fail when one is not installed."""
    found: dict[str, str] = {}
    for name in names:
        path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
        if path is None:
            missing(f"{name} is not installed (scripts/setup.sh test installs it)")
        else:
            found[name] = path
    return found


def require_root() -> None:
    if os.geteuid() != 0:
        missing("needs root (network namespaces, dockerd)")


def require_docker_tier(opt_in: str, what: str) -> None:
    """The prerequisites of a tier that starts dockerd and builds the project's images (swarm,
    cluster): opted into with `opt_in`=1 or CI=true (`what` says what the tier takes), root, the
    programs, and the static busybox the upstream image is made of."""
    if not (CI or os.environ.get(opt_in) == "1"):
        missing(f"{what}: set {opt_in}=1 (CI=true runs them)")
    require_root()
    require_programs("docker", "dockerd", "debootstrap", "openssl")
    if not shutil.which("busybox") and not Path("/bin/busybox").exists():
        missing("busybox-static is not installed (scripts/setup.sh test installs it)")


class Measurements:
    """Figures worth reading after a run (a scale followed in 2 s, a failover's median), which
    the tests of a tier record by calling it; tests/conftest.py prints each tier's under its
    title at the end of the run."""

    every: ClassVar[list[Measurements]] = []

    def __init__(self, title: str) -> None:
        self.title = title
        self.lines: list[str] = []
        Measurements.every.append(self)

    def __call__(self, line: str) -> None:
        self.lines.append(line)


_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A port free now, never one handed out before in this process: the kernel may hand a
    port it gave out (and that was closed since) out again, and two listeners of one test given
    one port make nginx refuse its configuration ("duplicate listen options")."""
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_until(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.02,
) -> T:
    """Call `probe` until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = probe()
            if result:
                return result
        except Exception as exc:  # the probe's own failure is what we report on timeout
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}{detail}")
        time.sleep(interval)


async def until(probe: Callable[[], object], within: float = 5.0) -> None:
    """wait_until for a test running in the event loop: it sleeps with asyncio, so the loop
    (the code under test) runs meanwhile."""
    deadline = time.monotonic() + within
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


class ServerProcess:
    """A server a test started (Pebble, BIND, PowerDNS): the tail of its log, and a stop that
    waits for it. Subclasses set `proc` when they start it and `log_file`."""

    proc: subprocess.Popen[bytes] | None = None
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class DnsServerProcess(ServerProcess):
    """A DNS server a test started (BIND, PowerDNS) on `address`:`port`, named `program` in
    what it says when it has died."""

    program: str
    address: str
    port: int

    def txt(self, name: str) -> list[str] | None:
        """The TXT strings of `name` as the server answers them now; None: no answer."""
        import dns.exception
        import dns.message
        import dns.query
        import dns.rdatatype

        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.program} exited {self.proc.returncode}:\n{self.log()}")
        query = dns.message.make_query(name, dns.rdatatype.TXT)
        try:
            reply = dns.query.udp(query, self.address, timeout=0.5, port=self.port)
        except (OSError, dns.exception.Timeout):
            return None
        return [b"".join(rr.strings).decode() for rrset in reply.answer for rr in rrset]
