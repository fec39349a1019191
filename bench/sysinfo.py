"""What /proc says about our processes and the machine: CPU time, memory, load, versions."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuTimes:
    user: float
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    return text[text.rindex(")") + 2:].split()


def process_cpu(pid: int, children: bool = False) -> CpuTimes:
    """utime+stime of one process (plus its waited-for children's with `children`)."""
    f = _stat_fields(pid)
    if f is None:
        return CpuTimes(0.0, 0.0)
    user, system = int(f[11]), int(f[12])
    if children:
        user, system = user + int(f[13]), system + int(f[14])
    return CpuTimes(user / CLK_TCK, system / CLK_TCK)


def descendants(pid: int) -> list[int]:
    """Every live process `pid` started, and what they started in turn, whatever their session
    (the agent starts nginx in a session of its own)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(int(entry))
            if f is not None:
                children.setdefault(int(f[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by `pid` and the live processes it started, in whatever session
    (the agent's nginx, its workers)."""
    return sum(process_cpu(p).total for p in (pid, *descendants(pid)))


def status_kib(pid: int, field: str) -> int | None:
    """A `/proc/PID/status` figure in KiB (VmRSS, VmHWM, ...)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def pss_kib(pid: int) -> int | None:
    """Proportional set size: shared pages divided among the processes sharing them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def loadavg() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def machine_busy(seconds: float) -> float:
    """Share of all CPUs busy over `seconds` (0-1), from /proc/stat."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle

    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return 1.0 - (i1 - i0) / (t1 - t0) if t1 > t0 else 0.0


def _version(argv: list[str], pattern: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    m = re.search(pattern, done.stdout + done.stderr)
    return m.group(1) if m else "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def git_revision(repo: Path) -> str:
    try:
        rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "agent"],
                               capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return rev.stdout.strip() + (" (agent/ has uncommitted changes)" if dirty.stdout else "")


def machine(repo: Path) -> dict[str, Any]:
    mem_kib = mem_total_kib()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1) if mem_kib else None,
        "os": os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": {
            "nginx": _version(["nginx", "-v"], r"nginx/(\S+)"),
            "haproxy": _version(["haproxy", "-v"], r"version (\S+)"),
            "caddy": _version(["caddy", "version"], r"v?(\d\S*)"),
            "wrk": _version(["wrk", "-v"], r"wrk (\S+)"),
            "dnsmasq": _version(["dnsmasq", "--version"], r"version (\S+)"),
            "keepalived": _version(["keepalived", "--version"], r"Keepalived v(\S+)"),
        },
        "revision": git_revision(repo),
    }


def mem_total_kib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None
