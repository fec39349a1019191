"""6. The health check: wall time of one `gateway-check` run, as keepalived would start it, beside
a bare interpreter start on the same machine in the same run.

Each run is a fresh process (fork, exec, interpreter start, imports, the check, exit), timed from
spawn to exit. The goal is relative: a run of `gateway-check` against `python -c pass` of the same
environment (the same interpreter and `site`, which is what a console script starts with), rounds
interleaved so both see the same load. The other rows put the figure in context: the same pair
without `site` (no .pth files, such as an editable install's finder), and curl doing the same HTTP
request. Bytecode is cached as on an installed node (pip compiles on install): the runs do not
inherit PYTHONDONTWRITEBYTECODE, and one untimed round before the others writes it.
"""

from __future__ import annotations

import os
import statistics
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
GOAL_RATIO = 2.5  # gateway-check against a bare interpreter start
REPO = Path(__file__).resolve().parent.parent
CHECK = "gateway-check --http /readyz"
BARE = "python -c pass (same interpreter)"
CHECK_NO_SITE = "the same check, python -S (no site)"
BARE_NO_SITE = "python -S -c pass"


def _time(argv: list[str], env: dict[str, str], limit: float = 10.0) -> tuple[float, int]:
    """Wall time from spawn to exit. The wait blocks in waitpid: a wait with a timeout polls
    with growing sleeps (0.5, 1, 2, ... ms) and would round every figure up to its next step;
    a timer kills a run that hangs instead."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    watchdog = threading.Timer(limit, proc.kill)
    watchdog.start()
    try:
        code = proc.wait()
    finally:
        watchdog.cancel()
    return time.perf_counter() - t0, code


def _ratio(times: dict[str, list[float]], check: str, bare: str) -> dict[str, float]:
    """The check against the bare start: the ratio of the medians, and the median of the
    ratios of each round (a run of each, one right after the other)."""
    return {"of_medians": statistics.median(times[check]) / statistics.median(times[bare]),
            "median_per_round": statistics.median(
                c / b for c, b in zip(times[check], times[bare], strict=True))}


def run(opts: Options, workdir: Path) -> dict[str, Any]:
    check = gateways.venv_program("gateway-check")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with Procs(workdir) as procs:
        dns = Dnsmasq(procs, net.DNS_MAIN)
        dns.set({"tasks.hc": [net.upstream(41)]}, confirm="tasks.hc")
        gateways.start_upstreams(procs, [net.upstream(41)])
        routes = gateways.write_routes(workdir / "routes.yaml", "hc")
        gw = gateways.start_agent(procs, net.DNS_MAIN, routes)
        assert gw.admin is not None
        readyz = f"http://{gw.admin[0]}:{gw.admin[1]}/readyz"
        bare = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
                "from agent.check import main; sys.exit(main())")
        variants = {
            CHECK: [check, "--http", readyz],
            BARE: [sys.executable, "-c", "pass"],
            "gateway-check --tcp": [check, "--tcp", f"{gw.host}:{gw.port}"],
            CHECK_NO_SITE: [sys.executable, "-S", "-c", bare, str(REPO), "--http", readyz],
            BARE_NO_SITE: [sys.executable, "-S", "-c", "pass"],
            "curl -fsS /readyz": ["curl", "-fsS", "-o", "/dev/null", readyz],
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for round_ in range(opts.check_runs + 1):
            for name, argv in variants.items():
                seconds, code = _time(argv, env)
                if code != 0:
                    raise BenchError(f"{' '.join(argv)} exited {code}")
                if round_:  # round 0 writes the bytecode and warms the page cache
                    times[name].append(seconds)
    rows: dict[str, dict[str, Any]] = {name: {**stats.summary(t), "runs_s": t}
                                       for name, t in times.items()}
    ratio = _ratio(times, CHECK, BARE)
    ratio_no_site = _ratio(times, CHECK_NO_SITE, BARE_NO_SITE)
    main, base = rows[CHECK], rows[BARE]
    goals = [
        {"goal": f"gateway-check under {GOAL_RATIO:g}x a bare interpreter start (median over "
                 f"{opts.check_runs} interleaved runs of each)",
         "measured": f"{ratio['of_medians']:.2f}x: median {main['median'] * 1000:.1f} ms "
                     f"against {base['median'] * 1000:.1f} ms for `python -c pass`",
         "met": ratio["of_medians"] < GOAL_RATIO},
        {"goal": "gateway-check under 50 ms (median and p99 over "
                 f"{opts.check_runs} runs)",
         "measured": f"median {main['median'] * 1000:.1f} ms, "
                     f"p99 {main['p99'] * 1000:.1f} ms",
         "met": main["median"] < GOAL_S and main["p99"] < GOAL_S},
    ]
    return {"params": {"runs": opts.check_runs, "python": sys.executable},
            "variants": rows, "ratios": {"with site": ratio, "without site": ratio_no_site},
            "goals": goals}
