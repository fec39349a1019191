"""The loopback addresses the benchmarks use (all inside 127.0.0.0/8, apart from the tests' own).

Gateways listen on GATEWAY, the DNS servers answer on DNS_* port 53 (nginx's `resolver` in the
article's configuration uses port 53), and upstream "tasks" are real nginx servers on 127.77.1.x.
The scale benchmark's tasks only need to exist in DNS: they come from 127.78.0.0/16.
"""

from __future__ import annotations

GATEWAY = "127.77.0.1"
DNS_MAIN = "127.77.0.53"
DNS_ARTICLE = "127.77.0.54"
UPSTREAM_PORT = 8888
HOST_HEADER = "bench.example"


def upstream(i: int) -> str:
    """The address of upstream task number i (1-based)."""
    if not 1 <= i <= 250:
        raise ValueError(f"upstream {i} out of range")
    return f"127.77.1.{i}"


def scale_task(k: int) -> str:
    """The k-th address of the scale benchmark's pool (0-based, up to 62,500 addresses)."""
    if not 0 <= k < 250 * 250:
        raise ValueError(f"task {k} out of range")
    return f"127.78.{k // 250}.{k % 250 + 1}"
