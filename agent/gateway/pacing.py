"""How fast the gateway acts: the DNS lookup budget (--dns-lookups-per-second), when each name
was looked up, and reloads coalesced (--reload-min-interval) and backed off after a refusal,
with the one Backoff (core/aio.py). Pure bookkeeping on a clock the caller gives: no I/O, no
sleeping."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from agent.core.aio import Backoff

RETRY_FAILED_MAX = 60.0  # seconds at most between tries of a refused configuration


class LookupBudget:
    """The names to look up each cycle: all of them when they fit the budget; else names never
    looked up, then the next ones in turn, so that each is looked up again every
    len(names) / budget cycles. It also says when a name comes round again (cycles_until):
    the agent's resolver gives nginx that much time to live, so that nginx does not ask
    every second for what the agent itself will not know anew before then."""

    def __init__(self, per_second: float, interval: float) -> None:
        self.budget = max(1, int(per_second * interval))
        self._cursor = 0
        self._rest: list[str] = []  # the known names in turn, as of the last due()
        self._index: dict[str, int] = {}

    def due(self, names: Sequence[str], known: Collection[str]) -> list[str]:
        if len(names) <= self.budget:
            self._rest, self._index = [], {}
            return list(names)
        due = [n for n in names if n not in known]  # never looked up: first, whatever the turn
        rest = sorted(n for n in names if n in known)
        take = max(0, self.budget - len(due))
        if rest and take:
            start = self._cursor % len(rest)
            due += (rest[start:] + rest[:start])[:take]
            self._cursor = start + take
        if rest != self._rest:
            self._rest, self._index = rest, {n: i for i, n in enumerate(rest)}
        return due

    def new(self, names: Sequence[str], known: Collection[str]) -> list[str]:
        """The names never looked up, within the budget: all an early cycle (woken before the
        poll) looks up; the turn of due() is left as it was."""
        return [n for n in names if n not in known][:self.budget]

    def cycles_until(self, name: str) -> int:
        """The cycles until `name` is looked up again: 1 when every name is looked up each
        cycle, and for a name never looked up (it is looked up first)."""
        i = self._index.get(name)
        if i is None:
            return 1
        return (i - self._cursor) % len(self._rest) // self.budget + 1


class LookupTimes:
    """When each name was last looked up, by a round of the poll or because nginx asked for it
    (Reconciler.look_again). nginx asks for a name once a second; an answer from a lookup of
    FRESH seconds ago at most is as good as a new one, and a round leaves out the names nginx's
    questions looked up within the last second or so (within its interval, if shorter): nginx
    is asking for those, and their next question looks them up. A name whose questions the
    budget refused is looked up by the next round."""

    FRESH = 0.1  # seconds
    ASKING = 1.0 + FRESH  # nginx asks once a second: a name asked for within this is asked for

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._at: dict[str, float] = {}
        self._asked: dict[str, float] = {}  # looked up because nginx asked

    def looked(self, names: Iterable[str], at: float, asked: bool = False) -> None:
        for name in names:
            self._at[name] = at
            if asked:
                self._asked[name] = at

    def stale(self, name: str, now: float) -> bool:
        """A lookup of `name` now would tell something newer than the last one."""
        at = self._at.get(name)
        return at is None or now - at >= self.FRESH

    def recent(self, names: Iterable[str], now: float) -> set[str]:
        """Those of `names` that nginx's questions looked up within ASKING seconds (or the
        interval, if shorter): a round may leave them out."""
        within = min(self.interval, self.ASKING)
        return {n for n in names if (at := self._asked.get(n)) is not None and now - at < within}

    def keep(self, names: Collection[str]) -> None:
        """Forget the names no longer wanted."""
        for known in (self._at, self._asked):
            for name in [n for n in known if n not in names]:
                del known[name]


class TokenBucket:
    """At most `rate` a second, and at most a second's worth at once. What is spent without
    asking (spend()) is owed: takes wait until it is paid back."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._tokens = rate  # full at first
        self._at: float | None = None  # when last refilled

    def take(self, n: int, now: float) -> bool:
        self._refill(now)
        if self._tokens < n:
            return False
        self._tokens -= n
        return True

    def spend(self, n: int, now: float) -> None:
        self._refill(now)
        self._tokens -= n

    def _refill(self, now: float) -> None:
        if self._at is not None:
            self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
        self._at = now


class ReloadPacer:
    """When a configuration may be applied: after a reload, the next one waits until
    `min_interval` has passed (and then applies the latest state); a configuration nginx
    refused is tried again after a backoff (doubling from max(min_interval, 2 s) to 60 s),
    while a different one is tried at once."""

    def __init__(self, min_interval: float) -> None:
        self.min_interval = min_interval
        self._last_reload: float | None = None
        self._refused: str | None = None  # the generation refused last
        self._backoff = Backoff(max(min_interval, 2.0), RETRY_FAILED_MAX)
        self._retry_at = 0.0

    @property
    def refused(self) -> str | None:
        return self._refused

    def reloaded(self, now: float) -> None:
        self._last_reload = now
        self.cleared()

    def failed(self, generation: str, now: float) -> float:
        """nginx refused `generation`: the delay before it is tried again."""
        if generation != self._refused:
            self._backoff.reset()
        self._refused = generation
        delay = self._backoff.failed()
        self._retry_at = now + delay
        return delay

    def cleared(self) -> None:
        """The refused configuration is no longer wanted (or it was applied)."""
        self._refused = None
        self._backoff.reset()

    def due(self, generation: str, now: float) -> float | None:
        """When a configuration of this generation may be applied (None: now)."""
        if self._refused == generation and self._retry_at > now:
            return self._retry_at
        if self._last_reload is not None:
            due = self._last_reload + self.min_interval
            if due > now:
                return due
        return None
