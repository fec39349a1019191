"""6. The health check: wall time of one `gateway-check` run, as keepalived would start it.

Each run is a fresh process (fork, exec, interpreter start, imports, the check, exit), timed from
spawn to exit. The references beside it put the figure in context: the bare interpreter of the
same environment, and curl doing the same HTTP request. Runs are interleaved.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import gateways, net, stats
from bench.dns import Dnsmasq
from bench.options import Options
from bench.procs import BenchError, Procs

GOAL_S = 0.050


def _time(argv: list[str]) -> tuple[float, int]:
    t0 = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          timeout=10, check=False)
    return time.perf_counter() - t0, done.returncode


def run(opts: Options, workdir: Path) -> dict[str, Any]:
    check = gateways.venv_program("gateway-check")
    with Procs(workdir) as procs:
        dns = Dnsmasq(procs, net.DNS_MAIN)
        dns.set({"tasks.hc": [net.upstream(41)]}, confirm="tasks.hc")
        gateways.start_upstreams(procs, [net.upstream(41)])
        routes = gateways.write_routes(workdir / "routes.yaml", "hc")
        gw = gateways.start_agent(procs, net.DNS_MAIN, routes)
        assert gw.admin is not None
        readyz = f"http://{gw.admin[0]}:{gw.admin[1]}/readyz"
        variants = {
            "gateway-check --http /readyz": [check, "--http", readyz],
            "gateway-check --tcp": [check, "--tcp", f"{gw.host}:{gw.port}"],
            "python -c pass (same interpreter)": [sys.executable, "-c", "pass"],
            "curl -fsS /readyz": ["curl", "-fsS", "-o", "/dev/null", readyz],
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(opts.check_runs):
            for name, argv in variants.items():
                seconds, code = _time(argv)
                if code != 0:
                    raise BenchError(f"{' '.join(argv)} exited {code}")
                times[name].append(seconds)
    rows: dict[str, dict[str, Any]] = {name: {**stats.summary(t), "runs_s": t}
                                       for name, t in times.items()}
    main = rows["gateway-check --http /readyz"]
    goals = [{"goal": "gateway-check under 50 ms (median and p99 over "
                      f"{opts.check_runs} runs)",
              "measured": f"median {main['median'] * 1000:.1f} ms, "
                          f"p99 {main['p99'] * 1000:.1f} ms",
              "met": main["median"] < GOAL_S and main["p99"] < GOAL_S}]
    return {"params": {"runs": opts.check_runs, "python": sys.executable},
            "variants": rows, "goals": goals}
