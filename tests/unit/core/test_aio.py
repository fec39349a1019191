from __future__ import annotations

import asyncio

from agent.core.aio import Backoff, first


def test_the_backoff_doubles_up_to_its_maximum_and_starts_over_after_a_success() -> None:
    backoff = Backoff(1.0, 5.0)
    assert backoff.delay == 0.0
    assert [backoff.failed() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.failed() == 1.0
    # a count kept elsewhere (the ACME retries, saved across restarts) gives the same delays
    assert [Backoff.after(n, 300.0, 6 * 3600.0) for n in (0, 1, 2, 7, 8, 10_000)] == [
        0.0, 300.0, 600.0, 19200.0, 21600.0, 21600.0]


async def test_first_ends_when_one_is_done_and_cancels_the_others() -> None:
    done = asyncio.Event()
    cancelled = []

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    done.set()
    await asyncio.wait_for(first(done.wait(), forever()), 5)
    assert cancelled == [True]
