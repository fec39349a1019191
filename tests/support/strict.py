"""Strict clients on an address, as a user's programs would be: kept-alive GETs, a kept-alive
POST client, and clients opening a new connection per request. A deadline of 5 s like a
standard client's, nothing retried at the HTTP level (the kernel's own SYN retransmission is
what any TCP client has). Every request is counted; each failure keeps its time and words.

Each client is a thread of its own inside the given network namespace (the cluster's client
container), so its sockets belong to that namespace.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from tests.support.netns import Namespace

DEADLINE = 5.0
PAUSE = 0.005  # between two requests of one client: about 150 requests/s each at most


@dataclass(frozen=True)
class Failure:
    at: float  # time.monotonic() the request was sent
    client: str  # its kind and number: get1, post1, new2...
    what: str

    @property
    def kind(self) -> str:
        return self.client.rstrip("0123456789")


@dataclass
class Tally:
    ok: int = 0
    failures: list[Failure] = field(default_factory=list)
    longest: float = 0.0  # the slowest answer: what a user waited at worst
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def requests(self) -> int:
        return self.ok + len(self.failures)


def _client(name: str, address: str, port: int, host: str, stop: threading.Event,
            tally: Tally) -> None:
    kind = name.rstrip("0123456789")
    conn: http.client.HTTPConnection | None = None
    n = 0
    while not stop.is_set():
        if conn is None or kind == "new":
            if conn is not None:
                conn.close()
            conn = http.client.HTTPConnection(address, port, timeout=DEADLINE)
        n += 1
        sent = time.monotonic()
        try:
            if kind == "post":  # busybox httpd takes a POST to a CGI script only
                conn.request("POST", "/cgi-bin/peer", body=b"x" * (1 + n % 2048),
                             headers={"Host": host, "Content-Type": "text/plain"})
            else:
                conn.request("GET", "/", headers={"Host": host})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise http.client.HTTPException(f"status {resp.status}")
            took = time.monotonic() - sent
            with tally.lock:
                tally.ok += 1
                tally.longest = max(tally.longest, took)
        except (OSError, http.client.HTTPException) as exc:
            with tally.lock:
                tally.failures.append(Failure(sent, name, f"{type(exc).__name__}: {exc}"))
            conn.close()
            conn = None
        time.sleep(PAUSE)
    if conn is not None:
        conn.close()


class StrictLoad:
    """Three kept-alive GET clients, one kept-alive POST client and three new-connection
    clients on `address`:`port` with Host `host`, from `namespace`, until stop()."""

    KINDS = ("get", "get", "get", "post", "new", "new", "new")

    def __init__(self, namespace: Namespace, address: str, port: int, host: str) -> None:
        self.tally = Tally()
        self._stop = threading.Event()
        self._threads = [Namespace(namespace.name, namespace.path) for _ in self.KINDS]
        names = [f"{kind}{self.KINDS[:i + 1].count(kind)}" for i, kind in enumerate(self.KINDS)]
        self._futures = [t.submit(_client, name, address, port, host, self._stop, self.tally)
                         for t, name in zip(self._threads, names, strict=True)]

    def stop(self) -> Tally:
        self._stop.set()
        try:
            for future in self._futures:
                future.result(timeout=DEADLINE + 10)
        finally:
            for t in self._threads:
                t.close()
        return self.tally

    def summary(self, what: str) -> str:
        t = self.tally
        kinds = Counter(f"{f.kind}: {f.what}" for f in t.failures)
        words = [f"{n} x {what}" for what, n in kinds.most_common(6)]
        return (f"{what}: {len(t.failures)} failed of {t.requests} (strict clients on the VIP), "
                f"longest answer {t.longest:.3f} s" + (f"; {words}" if words else ""))
