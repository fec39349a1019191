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
import os
from collections.abc import Callable, Mapping

_libc = ctypes.CDLL(None)
_trim: Callable[[int], int] | None = getattr(_libc, "malloc_trim", None)
_mallopt: Callable[[int, int], int] | None = getattr(_libc, "mallopt", None)
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters
M_TRIM_THRESHOLD = -1
# blocks of this size and more are mapped alone, and unmapped when freed: a /metrics of 10,000
# routes (36 MB) and the buffers that send it, a render's text
MMAP_THRESHOLD = 1 << 20
# glibc's own environment variables for what fixed_thresholds() sets
OWN_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def give_back() -> None:
    """Collect what only cycles hold, then hand free heap pages back to the system."""
    gc.collect()
    if _trim is not None:
        _trim(0)


def fixed_thresholds(environ: Mapping[str, str] = os.environ) -> None:
    """Keep glibc from raising its thresholds as the agent runs. By default, freeing a mapped
    block raises the size below which blocks come from the heap (up to 32 MiB) and the free
    heap kept at its top (up to 64 MiB): after one scrape of a large /metrics, the next ones
    were built on the heap and left it larger (each scrape grew the agent at 10,000 routes by
    up to 50 MiB). Fixed, large blocks are mapped alone and the heap's free top goes back.
    An operator's own setting (glibc's environment variables or tunables) is left as it is."""
    if any(name in environ for name in OWN_SETTINGS) or \
            "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return
    if _mallopt is not None:
        _mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        _mallopt(M_TRIM_THRESHOLD, MMAP_THRESHOLD)
