"""Small asyncio helpers the loops of both programs share: wait for the first of several
things, and back off after failures."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any


async def first(*waits: Awaitable[Any]) -> None:
    """Wait until one of `waits` is done; cancel the others (and wait for them to end)."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Backoff:
    """The delay before the next try after failures in a row: `initial`, doubling up to
    `maximum`; `reset()` after a success. The one backoff of every loop that retries."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.failures = 0

    @staticmethod
    def after(failures: int, initial: float, maximum: float) -> float:
        """The delay after `failures` failures in a row (0 after none)."""
        if failures <= 0:
            return 0.0
        return min(initial * 2.0 ** min(failures - 1, 64), maximum)

    @property
    def delay(self) -> float:
        return self.after(self.failures, self.initial, self.maximum)

    def failed(self) -> float:
        """Count a failure; the delay to wait now."""
        self.failures += 1
        return self.delay

    def reset(self) -> None:
        self.failures = 0
