"""6. The health check: wall time of one `gateway-check` run, as keepalived would start it.

Each run is a fresh process (fork, exec, interpreter start, imports, the check, exit), timed from
spawn to exit. The references beside it put the figure in context: the bare interpreter of the
same environment, and curl doing the same HTTP request. Runs are interleaved.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench import gateways, net, stats
from bench.dns import Dnsmasq
from bench.options import Options
from bench.procs import BenchError, Procs

GOAL_S = 0.050
REPO = Path(__file__).resolve().parent.parent


def _time(argv: list[str], limit: float = 10.0) -> tuple[float, int]:
    """Wall time from spawn to exit. The wait blocks in waitpid: a wait with a timeout polls
    with growing sleeps (0.5, 1, 2, ... ms) and would round every figure up to its next step;
    a timer kills a run that hangs instead."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watchdog = threading.Timer(limit, proc.kill)
    watchdog.start()
    try:
        code = proc.wait()
    finally:
        watchdog.cancel()
    return time.perf_counter() - t0, code


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
        # the same check without `site` (no .pth files, such as an editable install's finder):
        # how much of a run is the environment rather than the check
        bare = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
                "from agent.check import main; sys.exit(main())")
        variants = {
            "gateway-check --http /readyz": [check, "--http", readyz],
            "gateway-check --tcp": [check, "--tcp", f"{gw.host}:{gw.port}"],
            "the same check, python -S (no site)": [sys.executable, "-S", "-c", bare,
                                                    str(REPO), "--http", readyz],
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
