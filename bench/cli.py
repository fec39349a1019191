"""`python -m bench`: run the benchmarks, write bench/results/{results.json,REPORT.md,*.png}.

    python -m bench                      everything, full length (about 35 minutes)
    python -m bench --quick              everything, short (a few minutes; for trying it out)
    python -m bench --only datapath,check --duration 5
    python -m bench --report-only        redraw REPORT.md and the plots from results.json
    python -m bench --write-docs ...     also put the latest figures into docs/benchmarks.md
                                         (a full run of every section does so by itself; the
                                         parts that did not run keep their figures there)
    python -m bench --only cluster --write-docs     part 7 alone (make bench-cluster); its
                                         table goes into docs/keepalived.md too

Sections that run replace their own part of results.json; the others are kept (with the time
they ran), unless --fresh. A section that fails is recorded with its error and the rest still
run; the exit status is 1 if any did. Goals are reported as met or not met, never as a failure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench import (
    capacity,
    cluster,
    convergence,
    datapath,
    failover,
    healthcheck,
    reloads,
    report,
    scale,
    tls,
)
from bench.options import Options, quick
from bench.sysinfo import loadavg, machine, machine_busy

SECTIONS: dict[str, Callable[[Options, Path], dict[str, Any]]] = {
    "datapath": datapath.run,
    "convergence": convergence.run,
    "reloads": reloads.run,
    "failover": failover.run,
    "scale": scale.run,
    "check": healthcheck.run,
    "cluster": cluster.run,
    "capacity": capacity.run,
    "tls": tls.run,
}
REPO = Path(__file__).resolve().parent.parent


def _names(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown section {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return names


def _counts(value: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a list of numbers") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("route counts must be positive")
    return counts


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short runs of everything")
    p.add_argument("--only", type=_names, action="extend", metavar="NAME[,NAME]",
                   help=f"run only these sections: {', '.join(SECTIONS)}")
    p.add_argument("--fresh", action="store_true",
                   help="start a new results.json instead of updating the sections that ran")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing; redraw REPORT.md and plots from results.json")
    p.add_argument("--write-docs", action="store_true",
                   help="put the latest figures into docs/benchmarks.md (a full run of every "
                        "section does it by itself)")
    p.add_argument("--keep", action="store_true",
                   help="keep each section's working directory (logs, configurations)")
    p.add_argument("--out", type=Path, help="results directory (bench/results)")
    g = p.add_argument_group("lengths (defaults: full run; --quick shortens them)")
    for flag, dest, kind, text in (
        ("--duration", "duration", float, "seconds of wrk per data-path measurement"),
        ("--warmup", "warmup", float, "seconds of wrk before each measurement"),
        ("--rounds", "rounds", int, "interleaved data-path rounds"),
        ("--threads", "threads", int, "wrk threads (the same for every gateway)"),
        ("--connections", "connections", int, "wrk connections (the same for every gateway)"),
        ("--cost-pairs", "cost_pairs", int,
         "back-to-back data-path pairs, option on and off, per option whose cost is measured"),
        ("--changes", "changes", int, "DNS changes of each kind for agent/HAProxy/Caddy"),
        ("--article-changes", "article_changes", int,
         "DNS changes for the article's nginx (each takes up to 30 s)"),
        ("--reload-changes", "reload_changes", int, "configuration changes under load"),
        ("--failover-trials", "failover_trials", int, "failover trials per check mode"),
        ("--routes", "route_counts", _counts, "route counts for scale, comma-separated"),
        ("--scale-cycles", "scale_cycles", int, "measured cycles with a change per size"),
        ("--idle-seconds", "idle_seconds", float, "idle window for CPU per poll"),
        ("--hosts-per-service", "hosts_per_service", int,
         "scale: routes (a host each) on each service"),
        ("--check-runs", "check_runs", int, "gateway-check runs"),
        ("--cluster-trials", "cluster_trials", int,
         "VIP failover trials per kind of failure on the multi-node cluster"),
        ("--capacity-websockets", "capacity_websockets", int,
         "WebSockets held through each gateway at once"),
        ("--capacity-idle", "capacity_idle", int, "idle kept-alive clients per gateway"),
        ("--capacity-burst", "capacity_burst", int, "new TLS connections per burst"),
    ):
        g.add_argument(flag, dest=dest, type=kind, help=text)
    return p


def options_from(args: argparse.Namespace) -> Options:
    opts = quick(Options()) if args.quick else Options()
    changes = {f: getattr(args, f) for f in (
        "duration", "warmup", "rounds", "threads", "connections", "cost_pairs", "changes",
        "article_changes",
        "reload_changes", "failover_trials", "route_counts", "scale_cycles", "idle_seconds",
        "hosts_per_service",
        "check_runs", "cluster_trials", "capacity_websockets", "capacity_idle",
        "capacity_burst") if getattr(args, f) is not None}
    if args.out is not None:
        changes["out"] = args.out
    changes["keep"] = args.keep
    return replace(opts, **changes)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def run_section(name: str, opts: Options) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    print(f"bench: {name} ... (working in {workdir})", flush=True)
    busy = machine_busy(1.0)  # nothing of ours runs now: this is everyone else's load
    record: dict[str, Any] = {"started": _now(), "machine_busy_before": busy,
                              "loadavg_before": loadavg()}
    t0 = time.monotonic()
    try:
        record |= SECTIONS[name](opts, workdir)
    except Exception as exc:  # one section failing must not lose the others' figures
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc()
        print(f"bench: {name} FAILED: {record['error']}", flush=True)
    record["elapsed_s"] = time.monotonic() - t0
    record["loadavg_after"] = loadavg()
    if opts.keep or "error" in record:
        record["workdir"] = str(workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"bench: {name} done in {record['elapsed_s']:.0f}s", flush=True)
    return record


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    opts = options_from(args)
    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results: dict[str, Any] = {}
    if results_file.exists() and not args.fresh:
        results = json.loads(results_file.read_text())
    failed = False
    if not args.report_only:
        names = args.only or list(SECTIONS)
        results["machine"] = machine(REPO)
        sections = results.setdefault("sections", {})
        options = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}
        options["quick"] = args.quick
        for name in names:
            record = run_section(name, opts)
            record["options"] = options
            record["revision"] = results["machine"].get("revision")
            sections[name] = record
            failed = failed or "error" in record
            results["updated"] = _now()
            results_file.write_text(json.dumps(results, indent=1, default=str) + "\n")
    if not results.get("sections"):
        print(f"bench: no results in {results_file}")
        return 1
    report.write(results, out)
    print(f"bench: wrote {out / 'REPORT.md'}")
    full_run = not (args.report_only or args.quick or args.only) and not failed
    if args.write_docs or full_run:
        report.write_docs(results, REPO / "docs" / "benchmarks.md")
        print("bench: updated docs/benchmarks.md")
    return 1 if failed else 0
