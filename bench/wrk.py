"""wrk, run with a Lua `done` hook that prints every figure as one JSON line.

Only `done` (and, when counting status codes, `response`) is defined: a Lua `request` function
would slow wrk down and measure wrk instead of the gateway. wrk counts responses with a status
>= 400 and connect/read/write/timeout errors itself; `count_non2xx` adds a per-response hook that
counts anything outside 200-299, at some cost in wrk's own throughput.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DONE_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  local non2xx = -1
  if threads ~= nil then
    non2xx = 0
    for _, t in ipairs(threads) do non2xx = non2xx + t:get("non2xx") end
  end
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "non2xx": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"mean": %.2f, "stdev": %.2f, "max": %d, "p50": %d, "p90": %d, ' ..
    '"p99": %d, "p999": %d}}\\n',
    summary.requests, summary.duration, summary.bytes, non2xx,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
"""

COUNT_LUA = """
threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function(args) non2xx = 0 end
response = function(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end
"""


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    non2xx: int | None
    errors: dict[str, int]
    latency_ms: dict[str, float]
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def socket_errors(self) -> int:
        return sum(v for k, v in self.errors.items() if k != "status")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def script(workdir: Path, count_non2xx: bool) -> Path:
    path = workdir / ("wrk-count.lua" if count_non2xx else "wrk-done.lua")
    if not path.exists():
        path.write_text((COUNT_LUA if count_non2xx else "") + DONE_LUA)
    return path


def command(url: str, host_header: str, duration: float, threads: int, connections: int,
            lua: Path, timeout_s: int = 5, headers: Sequence[str] = ()) -> list[str]:
    extra = [arg for header in headers for arg in ("-H", header)]
    return ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
            f"--timeout={timeout_s}s", "-H", f"Host: {host_header}", *extra, "-s", str(lua),
            url]


def parse(output: str, args: dict[str, Any]) -> WrkResult:
    for line in output.splitlines():
        if line.startswith("WRK_JSON "):
            raw = json.loads(line[len("WRK_JSON "):])
            break
    else:
        raise ValueError(f"no WRK_JSON line in wrk's output:\n{output[-2000:]}")
    duration = raw["duration_us"] / 1e6
    return WrkResult(
        requests=raw["requests"], duration_s=duration,
        rps=raw["requests"] / duration if duration else 0.0,
        non2xx=None if raw["non2xx"] < 0 else raw["non2xx"], errors=raw["errors"],
        latency_ms={k: v / 1000.0 for k, v in raw["latency_us"].items()}, args=args)


def run(url: str, host_header: str, duration: float, threads: int, connections: int,
        workdir: Path, count_non2xx: bool = False) -> WrkResult:
    lua = script(workdir, count_non2xx)
    argv = command(url, host_header, duration, threads, connections, lua)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return parse(done.stdout, {"threads": threads, "connections": connections,
                               "duration_s": duration})


class Background:
    """wrk running until `stop` (SIGINT makes wrk stop and report, as Ctrl-C does)."""

    def __init__(self, url: str, host_header: str, max_duration: float, threads: int,
                 connections: int, workdir: Path, count_non2xx: bool = True,
                 headers: Sequence[str] = ()) -> None:
        lua = script(workdir, count_non2xx)
        self.args = {"threads": threads, "connections": connections, "headers": list(headers)}
        self.max_duration = max_duration
        self.popen = subprocess.Popen(
            command(url, host_header, max_duration, threads, connections, lua,
                    headers=headers),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def stop(self) -> WrkResult:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
        try:
            out, err = self.popen.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.communicate(timeout=5)
            raise RuntimeError("wrk did not stop on SIGINT") from None
        if "WRK_JSON" not in out:
            raise RuntimeError(f"wrk ended without its report: {err.strip()}")
        return parse(out, self.args)
