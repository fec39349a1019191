"""What every part of `gateway-check` shares: a check, a verdict, and why a check failed.
Standard library only (agent/check/__init__.py says why)."""

from __future__ import annotations

import signal
import socket
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing collections.abc or types costs at run time
    from collections.abc import Callable

DEFAULT_TIMEOUT = 1.0
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
USER_AGENT = "gateway-check"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
MAX_ANSWER = 16 << 20  # bytes: a larger answer is not one the checks expect


class CheckFailed(Exception):
    """A check's own verdict: the message says why, in a few words."""


class Draining(CheckFailed):
    """The gateway answered that it is draining (told to stop: agent/gateway/drain.py), not
    that it is broken: the watcher hands the VIP over without cutting connections (hold.py)."""


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
    __slots__ = ("draining", "line", "ok")

    def __init__(self, ok: bool, line: str, draining: bool = False) -> None:
        self.ok = ok
        self.line = line
        self.draining = draining  # every failed check said the gateway drains

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Verdict):
            return NotImplemented
        return (self.ok, self.line) == (other.ok, other.line)

    def __hash__(self) -> int:
        return hash((self.ok, self.line))

    def __repr__(self) -> str:
        return f"Verdict(ok={self.ok!r}, line={self.line!r})"


def remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise CheckFailed("no time left before the deadline")
    return left


def describe(exc: BaseException) -> str:
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

