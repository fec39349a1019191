"""Memory the agent freed, given back to the system.

A render of thousands of routes builds hundreds of megabytes of short-lived objects (the plan,
the template's pieces) in a worker thread. Python frees them, but glibc keeps the freed heap in
its arenas (one per thread that allocated), so the agent's resident memory stayed at the render's
peak. malloc_trim(0) returns what is free at the top of each arena and unmaps wholly free pages
inside them. musl has no malloc_trim (and returns memory by itself): then nothing is done.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable

_trim: Callable[[int], int] | None = getattr(ctypes.CDLL(None), "malloc_trim", None)


def give_back() -> None:
    """Collect what only cycles hold, then hand free heap pages back to the system."""
    gc.collect()
    if _trim is not None:
        _trim(0)
