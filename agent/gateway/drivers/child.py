"""The agent's children die with it: nginx runs in a session of its own (so that its orphaned
workers can be reached as a group), which also keeps the agent's signals from it, and an agent
killed outright (SIGKILL, outside a container) would leave it serving, holding the ports."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def dies_with(parent: int) -> Callable[[], None] | None:
    """What the child runs before exec: the kernel sends it SIGTERM when `parent` dies (a
    SIGKILLed agent would otherwise leave nginx serving, holding the ports: its own session
    keeps it from the agent's signals). SIGTERM is nginx's fast shutdown: the master ends its
    workers, which no signal of the kernel reaches. Linux only; elsewhere None. The function
    only calls prctl and getppid: safe between fork and exec."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:  # the agent died before that: stop at once
            os._exit(1)

    return set_death_signal
