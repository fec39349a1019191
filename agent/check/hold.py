"""The hand-over of a draining gateway's VIP without cutting a connection (`--hold-syn`).

When the VIP moves, a connection the old holder was serving breaks: the client's next packet
reaches the new holder, which knows nothing of it. The gateway's drain already answers every
kept-alive client with `Connection: close`; what is left is a connection opened just before the
VIP moves. So, when the local gateway says it drains and this node holds the VIP, the watcher:

    drops new connections to the VIP's ports here (raw PREROUTING, SYNs only: nothing answers,
    so the client's TCP stack sends its SYN again a second later)
    -> waits --hold-seconds for the connections in flight to finish
    -> writes the failure to the track file: keepalived hands the VIP over
    -> removes the rule once this node no longer holds the VIP (the SYNs sent again reach the
       next holder)

Connections to the node's own address are untouched. Without `iptables` (or without the right to
use it) the hold is skipped, said once in the log, and the VIP moves as before. Standard library
only; subprocess is imported only when a hold is configured.
"""

from __future__ import annotations

import socket
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

COMMENT = "gateway-check hold"
RELEASE_AFTER = 10.0  # seconds: the rule goes at the latest then, VIP or not


def is_local(address: str) -> bool:
    """Whether `address` is one of this host's addresses (a bind to it succeeds)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
    return True


class SynHold:
    def __init__(self, addresses: Sequence[str], ports: Sequence[int], seconds: float,
                 log: Callable[[str], None]) -> None:
        self.addresses = list(addresses)
        self.ports = ",".join(str(p) for p in ports)
        self.seconds = seconds
        self.log = log
        self.held: list[str] = []  # addresses whose rule is in place
        self.since = 0.0
        self.broken: str | None = None  # why iptables cannot be used (said once)

    def _rule(self, action: str, address: str) -> list[str]:
        binary = "ip6tables" if ":" in address else "iptables"
        return [binary, "-w", "-t", "raw", action, "PREROUTING", "-d", address, "-p", "tcp",
                "--syn", "-m", "multiport", "--dports", self.ports, "-m", "comment",
                "--comment", COMMENT, "-j", "DROP"]

    def _run(self, argv: list[str]) -> bool:
        import subprocess  # only when a hold is configured and used

        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self._broken(f"{argv[0]}: {exc}")
            return False
        if done.returncode != 0 and argv[4] == "-I":
            self._broken(f"{' '.join(argv[:5])}: {done.stderr.strip()[:200]}")
        return done.returncode == 0

    def _broken(self, why: str) -> None:
        if self.broken is None:
            self.log(f"hold: cannot drop new connections ({why}); the VIP moves without it")
        self.broken = why

    def clear(self) -> None:
        """At start and at exit: no rule of a previous run left behind."""
        for address in self.addresses:
            while self._run(self._rule("-D", address)):
                pass
        self.held = []

    def start(self) -> None:
        """Drop new connections to the VIPs this node holds, then wait for those in flight."""
        local = [a for a in self.addresses if is_local(a)]
        for address in local:
            if self._run(self._rule("-I", address)):
                self.held.append(address)
        if self.held:
            self.since = time.monotonic()
            self.log(f"hold: new connections to {', '.join(self.held)} ports {self.ports} "
                     f"dropped for the hand-over; waiting {self.seconds:g}s for those in flight")
            time.sleep(self.seconds)

    def release_when_done(self) -> None:
        """Each round: the rule goes once this node no longer holds the VIP."""
        if not self.held:
            return
        late = time.monotonic() - self.since > RELEASE_AFTER
        for address in list(self.held):
            if late or not is_local(address):
                self._run(self._rule("-D", address))
                self.held.remove(address)
                self.log(f"hold: released {address} "
                         f"({'still here' if late else 'the VIP has left'})")
