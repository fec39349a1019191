"""Measure VIP failover on the namespace cluster: kill the master's nginx, time the hand-over.

    python -m tests.support.failover --mode script --trials 10
    python -m tests.support.failover --mode track_file --trials 10 --json

(run from the repository root, as root). A client in the client namespace starts a request to the
VIP every 10 ms, each on a new connection with its own timeout, so a request stuck on a vanished
address does not hold up the ones behind it. For every trial:

    failover_s  from SIGKILL of the master's nginx group to the first answer from the next node
    lost        requests started after the kill that got no answer (refused, reset, timed out)

Between trials the killed node's nginx comes back and, with preempt, the node takes the VIP
back; the next trial starts once it answers again. `measure()` is what the benchmark calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from tests.support.netns import VIP, Cluster, Namespace


@dataclass(frozen=True)
class Sample:
    sent: float  # time.monotonic()
    done: float
    answer: str | None  # the node that answered, None for no answer


@dataclass(frozen=True)
class Trial:
    failover_s: float
    lost: int
    requests: int


async def _request(host: str, port: int = 80, header: str | None = None,
                   path: str = "/") -> str | None:
    """The body of a 200 answer to one request on a new connection (None: no answer): the node
    that answered, or the upstream task behind a gateway."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {header or host}\r\n\r\n".encode())
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return body.decode().strip() if b" 200 " in head.split(b"\r\n")[0] else None


async def _poll(host: str, stop: threading.Event, samples: list[Sample], interval: float,
                patience: float, port: int = 80, header: str | None = None,
                path: str = "/") -> None:
    async def one() -> None:
        sent = time.monotonic()
        try:
            async with asyncio.timeout(patience):
                answer = await _request(host, port, header, path)
        except (OSError, TimeoutError):
            answer = None
        samples.append(Sample(sent, time.monotonic(), answer))

    tasks: set[asyncio.Task[None]] = set()
    next_start = time.monotonic()
    while not stop.is_set():
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        next_start += interval
        await asyncio.sleep(max(0.0, next_start - time.monotonic()))
    if tasks:
        await asyncio.gather(*tasks)


class Poller:
    """Requests to the VIP every `interval` s from the client namespace, until stopped (`client`:
    the namespace; `host`, `port`, `path`, `header`: where to, and the Host header, default
    `host`)."""

    def __init__(self, cluster: Cluster | None = None, interval: float = 0.01,
                 patience: float = 0.5, *, client: Namespace | None = None, host: str = VIP,
                 port: int = 80, header: str | None = None, path: str = "/") -> None:
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        namespace = client or (cluster.client if cluster is not None else None)
        if namespace is None:
            raise ValueError("a Poller needs a cluster or a client namespace")
        # a thread of its own in the namespace: the poll holds it until stopped, and others
        # may use the namespace's thread meanwhile
        self._namespace = Namespace(namespace.name, namespace.path)
        self._future = self._namespace.submit(
            asyncio.run, _poll(host, self._stop, self.samples, interval, patience, port, header,
                                  path))

    def answered(self, after: float) -> Sample | None:
        """The first answer (from anyone) to a request sent at or after `after`."""
        return min((s for s in list(self.samples) if s.answer is not None and s.sent >= after),
                   key=lambda s: s.done, default=None)

    def first_answer_from(self, name: str, after: float) -> Sample | None:
        return min((s for s in list(self.samples) if s.answer == name and s.sent >= after),
                   key=lambda s: s.done, default=None)

    def stop(self) -> list[Sample]:
        self._stop.set()
        try:
            self._future.result(timeout=10)
        finally:
            self._namespace.close()
        return sorted(self.samples, key=lambda s: s.sent)


def one_trial(cluster: Cluster, timeout: float = 15, jitter: float = 1.0) -> Trial:
    """Kill the master's (node1's) nginx; measure until the next node (node2) answers.

    The kill comes at a random moment within `jitter` seconds: keepalived runs its scripts on a
    fixed one-second beat, and a trial that starts a fixed time after the previous recovery
    would always hit the same phase of it."""
    master, successor = cluster.nodes[0], cluster.nodes[1]
    poller = Poller(cluster)
    try:
        time.sleep(0.2 + random.uniform(0, jitter))  # the client polls before anything happens
        killed_at = time.monotonic()
        cluster.kill_nginx(master)
        deadline = killed_at + timeout
        first = None
        while first is None and time.monotonic() < deadline:
            time.sleep(0.01)
            first = poller.first_answer_from(successor.name, killed_at)
        time.sleep(0.2)  # let requests started around the hand-over finish and be counted
    finally:
        samples = poller.stop()
    if first is None:
        raise AssertionError(f"{successor.name} never answered within {timeout}s\n"
                             + cluster.logs())
    after_kill = [s for s in samples if s.sent >= killed_at]
    lost = sum(1 for s in after_kill if s.answer is None)
    return Trial(first.done - killed_at, lost, len(after_kill))


def measure(mode: str, trials: int = 10, size: int = 3, **overrides: Any) -> list[Trial]:
    """`trials` failovers from node1 to node2 on a fresh cluster; `overrides` go to the cluster
    description (e.g. advert_int=0.1, check={"interval": 1})."""
    results: list[Trial] = []
    with Cluster(size) as cluster:
        cluster.start(cluster.description(mode, **overrides))
        master = cluster.nodes[0]
        cluster.wait_for_answer(master.name, timeout=30)
        for _ in range(trials):
            results.append(one_trial(cluster))
            cluster.start_nginx(master)
            cluster.wait_for_answer(master.name, timeout=30)  # preempt: it takes the VIP back
            time.sleep(0.5)
    return results


def summary(mode: str, results: list[Trial]) -> dict[str, Any]:
    times = [r.failover_s for r in results]
    return {
        "mode": mode,
        "trials": len(results),
        "failover_median_s": round(statistics.median(times), 3),
        "failover_worst_s": round(max(times), 3),
        "failover_best_s": round(min(times), 3),
        "lost_median": statistics.median(r.lost for r in results),
        "lost_worst": max(r.lost for r in results),
        "results": [asdict(r) for r in results],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.failover",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--mode", choices=["script", "track_file"], default="track_file")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--advert-int", type=float, default=1.0)
    parser.add_argument("--weight", type=int, default=0,
                        help="the check's weight (0 = FAULT; negative = lower the priority)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    results = measure(args.mode, args.trials, advert_int=args.advert_int,
                      check={"weight": args.weight})
    report = summary(args.mode, results)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for i, r in enumerate(results, 1):
            print(f"trial {i:2}: failover {r.failover_s * 1000:6.0f} ms, lost {r.lost:3} of "
                  f"{r.requests}")
        print(f"{args.mode}: median {report['failover_median_s'] * 1000:.0f} ms, worst "
              f"{report['failover_worst_s'] * 1000:.0f} ms over {len(results)} trials; lost "
              f"requests median {report['lost_median']}, worst {report['lost_worst']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
