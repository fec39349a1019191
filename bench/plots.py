"""The report's pictures (matplotlib, no display). Each function returns the file it wrote, or
None when its section has no figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {"agent": "#2b7bba", "agent-1w": "#7fb2de", "agent-static": "#7fb2de",
          "article": "#d95f02", "haproxy": "#1b9e77", "caddy": "#7570b3", "direct": "#666666"}


def _color(name: str) -> str:
    return COLORS.get(name, "#999999")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pairs(ax: Any, labels: list[str], series: dict[str, list[float]], ylabel: str,
           title: str, rotation: int = 0) -> None:
    """Bars side by side: one group per label, one bar per series."""
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        offset = (i - (len(series) - 1) / 2) * width
        ax.bar([x + offset for x in range(len(labels))], values, width, label=name)
    ax.set_xticks(list(range(len(labels))), labels, rotation=rotation)
    ax.set(ylabel=ylabel, title=title)
    ax.legend()


def datapath(section: dict[str, Any], out: Path) -> Path | None:
    gws = section.get("gateways")
    if not gws:
        return None
    names = list(gws)
    s = [gws[n]["summary"] for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    med = [x["rps_median"] for x in s]
    err = [[m - x["rps_min"] for m, x in zip(med, s, strict=True)],
           [x["rps_max"] - m for m, x in zip(med, s, strict=True)]]
    ax1.bar(names, med, yerr=err, capsize=4, color=[_color(n) for n in names])
    ax1.set_ylabel("requests/s (median, min-max of rounds)")
    ax1.set_title("Throughput, same wrk load for all")
    ax1.tick_params(axis="x", rotation=30)
    _pairs(ax2, names, {"p50": [x["p50_ms"] for x in s], "p99": [x["p99_ms"] for x in s]},
           "latency, ms (median of rounds, log)", "Latency", rotation=30)
    ax2.set_yscale("log")
    return _save(fig, out / "datapath.png")


def convergence(section: dict[str, Any], out: Path) -> Path | None:
    systems = section.get("systems")
    if not systems:
        return None
    names = list(systems)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, kind, title in ((axes[0], "add_s", "task added: first request reaches it"),
                            (axes[1], "remove_s", "task removed: last request reaches it")):
        data = [systems[n][kind] or [float("nan")] for n in names]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(names) + 1), names)
        for i, values in enumerate(data, start=1):
            ax.scatter([i] * len(values), values, s=10, alpha=0.6, color=_color(names[i - 1]))
        ax.set_yscale("log")
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)
        ax.axhline(1.0, color="red", linewidth=0.8, linestyle="--")
    axes[0].set_ylabel("seconds after the DNS change (log)")
    return _save(fig, out / "convergence.png")


def reloads(section: dict[str, Any], out: Path) -> Path | None:
    rows = [(k, section[k]) for k in ("agent", "agent_close", "article") if k in section]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [f"{k}\n({int(r['reloads'].get('success', 0))} reloads)" for k, r in rows]
    _pairs(ax, labels, {"socket errors": [r["wrk"]["socket_errors"] for _, r in rows],
                        "non-2xx": [r["wrk"]["non2xx"] or 0 for _, r in rows]},
           "count during the run", "Reloads under wrk load")
    return _save(fig, out / "reloads.png")


def scale(section: dict[str, Any], out: Path) -> Path | None:
    sizes = section.get("sizes")
    if not sizes:
        return None
    n = [s["routes"] for s in sizes]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 3.8))
    change = [s["change_cycle_s"]["median"] if s["change_cycle_s"] else None for s in sizes]
    idle = [s.get("idle_cycle_mean_s") for s in sizes]
    ax1.plot(n, change, "o-", label="cycle with a reload")
    ax1.plot(n, idle, "s--", label="idle cycle (mean)")
    ax1.axhline(1.0, color="red", linewidth=0.8, linestyle="--")
    ax1.set(xscale="log", yscale="log", xlabel="routes", ylabel="seconds (median)",
            title="Cycle time")
    ax1.legend()
    ax2.plot(n, [s["agent_rss_mib"] for s in sizes], "o-", label="agent RSS")
    ax2.plot(n, [s["nginx_pss_mib"] for s in sizes], "s--", label="nginx PSS (all processes)")
    ax2.axhline(60 / 1.048576, color="red", linewidth=0.8, linestyle="--")
    ax2.set(xscale="log", xlabel="routes", ylabel="MiB", title="Memory")
    ax2.legend()
    ax3.plot(n, [s["idle"]["cpu_percent_of_core"] for s in sizes], "o-")
    ax3.axhline(2.0, color="red", linewidth=0.8, linestyle="--")
    ax3.set(xscale="log", yscale="log", xlabel="routes", ylabel="% of one core",
            title="Agent CPU at idle, 1 s polling")
    return _save(fig, out / "scale.png")


def failover(section: dict[str, Any], out: Path) -> Path | None:
    modes = section.get("modes")
    if not modes:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, (_mode, m) in enumerate(modes.items(), start=1):
        values = [t["failover_s"] for t in m["trials"] if t["failover_s"] is not None]
        ax.scatter([i] * len(values), values, s=18, alpha=0.7)
    ax.set_xticks(range(1, len(modes) + 1), list(modes))
    ax.axhline(0.5, color="red", linewidth=0.8, linestyle="--")
    ax.set_ylabel("seconds from kill to an answer from the next node")
    ax.set_title("Failover on the VIP")
    return _save(fig, out / "failover.png")


def healthcheck(section: dict[str, Any], out: Path) -> Path | None:
    variants = section.get("variants")
    if not variants:
        return None
    names = list(variants)
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.boxplot([[v * 1000 for v in variants[n]["runs_s"]] for n in names], vert=False)
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.axvline(50, color="red", linewidth=0.8, linestyle="--")
    ax.set_xlabel("wall time of one run, ms")
    ax.set_title("Health check, one process per run")
    return _save(fig, out / "check.png")


ALL = {"datapath": datapath, "convergence": convergence, "reloads": reloads,
       "failover": failover, "scale": scale, "check": healthcheck}
