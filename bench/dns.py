"""A real DNS server for the benchmarks: dnsmasq on a loopback address, port 53.

Records live in a hosts file that dnsmasq rereads on SIGHUP. `set` writes the file atomically,
signals dnsmasq and returns the moment the server answers with the new records, so that a
measurement can start from "DNS has changed" rather than from "we asked it to change".
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable, Mapping

import dnslib

from bench.procs import BenchError, Proc, Procs, wait_until

Records = Mapping[str, Iterable[str]]


def query_a(server: str, name: str, port: int = 53, timeout: float = 0.5) -> list[str]:
    """The A records `server` answers for `name`, sorted; [] for NXDOMAIN or no data."""
    reply = dnslib.DNSRecord.parse(
        dnslib.DNSRecord.question(name, "A").send(server, port, timeout=timeout))
    return sorted(str(rr.rdata) for rr in reply.rr if rr.rtype == dnslib.QTYPE.A)


class Dnsmasq:
    def __init__(self, procs: Procs, address: str, name: str = "dnsmasq") -> None:
        self.address = address
        self.hosts = procs.workdir / f"{name}.hosts"
        self.records: dict[str, list[str]] = {}
        self._write()
        self.proc: Proc = procs.start(name, [
            "dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--bind-interfaces",
            # answer every name from the hosts file alone, as Docker's DNS does for tasks.*:
            # NOERROR with no data for AAAA, NXDOMAIN for unknown names (never REFUSED)
            "--local=/#/",
            f"--listen-address={address}", "--port=53", f"--addn-hosts={self.hosts}",
            f"--pid-file={procs.workdir / (name + '.pid')}", "--cache-size=0",
        ])
        wait_until(lambda: self._answers_something(), 10, f"dnsmasq on {address}:53")

    def _answers_something(self) -> bool:
        self.proc.check_alive()
        query_a(self.address, "bench-probe.invalid", timeout=0.2)
        return True

    def _write(self) -> None:
        lines = [f"{ip} {name}" for name, ips in sorted(self.records.items()) for ip in ips]
        tmp = self.hosts.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.hosts)

    def set(self, records: Records, confirm: str | None = None, timeout: float = 5.0) -> float:
        """Replace every record; return time.monotonic() when `confirm` answers its new set."""
        self.records = {name: sorted(ips) for name, ips in records.items()}
        self._write()
        self.proc.check_alive()
        self.proc.send(signal.SIGHUP)
        if confirm is None:
            return time.monotonic()
        want = self.records.get(confirm, [])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if query_a(self.address, confirm, timeout=0.2) == want:
                    return time.monotonic()
            except (OSError, dnslib.DNSError):
                pass
            time.sleep(0.001)
        raise BenchError(f"dnsmasq on {self.address} did not start answering {confirm} -> {want}")

    def update(self, changes: Records, confirm: str | None = None) -> float:
        merged: dict[str, Iterable[str]] = dict(self.records)
        merged.update(changes)
        return self.set(merged, confirm=confirm)
