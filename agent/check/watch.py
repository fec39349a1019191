"""Running the checks under a hard deadline, and the watcher that keeps keepalived's track file
in step with them (`--watch`). Standard library only."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
import time

from agent.check.base import STOP_SIGNALS, Check, Draining, Stopped, Verdict, describe

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing collections.abc or types costs at run time
    from collections.abc import Sequence
    from types import FrameType

    from agent.check.hold import SynHold

def run_checks(checks: Sequence[Check], timeout: float) -> Verdict:
    """Run every check at once; answer when all have finished or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    failures: list[str | None] = [None] * len(checks)
    draining = [False] * len(checks)
    finished = [False] * len(checks)
    cond = threading.Condition()
    started = time.monotonic()
    unanswered = f"no answer within {timeout:g}s"

    def worker(index: int, check: Check) -> None:
        reason = None
        try:
            check.run(deadline)
        except Exception as exc:
            # a probe's sockets time out at the deadline: the same words as a probe still
            # waiting when the deadline passes, whichever of the two notices first
            reason = unanswered if isinstance(exc, TimeoutError) else describe(exc)
            draining[index] = isinstance(exc, Draining)
        with cond:
            failures[index] = reason
            finished[index] = True
            cond.notify()

    for index, check in enumerate(checks):
        threading.Thread(target=worker, args=(index, check), daemon=True).start()
    with cond:
        cond.wait_for(lambda: all(finished), timeout=max(0.0, deadline - time.monotonic()))
        snapshot = [
            failures[i] if finished[i] else unanswered
            for i in range(len(checks))
        ]
    failed = [f"{check.label}: {reason}" for check, reason in zip(checks, snapshot, strict=True)
              if reason is not None]
    elapsed_ms = (time.monotonic() - started) * 1000
    if failed:
        said = [draining[i] for i, reason in enumerate(snapshot) if reason is not None]
        return Verdict(False, "FAIL " + "; ".join(failed), draining=all(said))
    return Verdict(True, f"OK {', '.join(c.label for c in checks)} ({elapsed_ms:.0f} ms)")


def raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


class signals_blocked:  # a class: contextlib's decorator costs an import
    """Hold SIGTERM/SIGINT back while a file is being replaced; they arrive right after."""

    def __enter__(self) -> None:
        self.old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    def __exit__(self, *exc: object) -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, self.old)


def write_track_file(path: str, value: int) -> None:
    """Replace the track file atomically (temp file in the same folder, then os.replace).

    The watcher runs as root beside keepalived: the temporary file gets a name no one can
    guess and is created with O_EXCL (mkstemp), so a link planted in the folder cannot make
    it write anywhere else; os.replace puts a new file in place of whatever `path` was, a link
    included, and never writes through it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=os.path.dirname(path) or ".")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(f"{value}\n")
        os.replace(tmp, path)
    except BaseException:
        try:  # noqa: SIM105 - not contextlib.suppress: one import less
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_track_file(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def log(message: str) -> None:
    print(f"gateway-check: {message}", file=sys.stderr, flush=True)


class Watcher:
    """Probe every `interval` s; write `fail_value` after `fall` failures, 0 after `rise` passes.

    The file is rewritten whenever it does not hold the current state (keepalived's `init_file
    ... overwrite` on restart, or someone deleting it), so the two can never disagree for long.
    """

    def __init__(self, checks: Sequence[Check], track_file: str, interval: float,
                 timeout: float, rise: int, fall: int, fail_value: int,
                 fail_on_exit: bool, hold: SynHold | None = None) -> None:
        self.checks = checks
        self.track_file = track_file
        self.interval = interval
        self.timeout = timeout
        self.rise = rise
        self.fall = fall
        self.fail_value = fail_value
        self.fail_on_exit = fail_on_exit
        self.hold = hold  # a draining gateway's VIP handed over without cutting connections

    def value(self, ok: bool) -> int:
        return 0 if ok else self.fail_value

    def _write(self, value: int, last_error: str | None) -> str | None:
        """Write the file; on failure say so once (not every round) and try again next round.
        Until it works keepalived keeps the value it has (`init_file 1`: FAULT)."""
        try:
            with signals_blocked():
                write_track_file(self.track_file, value)
        except OSError as exc:
            error = f"cannot write {self.track_file}: {exc.strerror or exc}"
            if error != last_error:
                log(f"{error}; trying again every round")
            return error
        if last_error is not None:
            log(f"wrote {self.track_file} again")
        return None

    def run(self) -> int:
        state: bool | None = None
        write_error: str | None = None
        streak = 0
        next_run = time.monotonic()
        try:
            while True:
                verdict = run_checks(self.checks, self.timeout)
                if state is None or verdict.ok == state:
                    streak = 0
                else:
                    streak += 1
                # a gateway that drains gives the VIP up at once (it was told to: no flapping)
                handover = state is True and not verdict.ok and verdict.draining
                if handover or state is None or \
                        streak >= (self.rise if verdict.ok else self.fall):
                    if handover and self.hold is not None:
                        self.hold.start()
                    if state != verdict.ok:
                        log(f"{'OK' if verdict.ok else 'FAIL'} -> {self.track_file}="
                            f"{self.value(verdict.ok)}: {verdict.line}")
                    state, streak = verdict.ok, 0
                wanted = str(self.value(verdict.ok if state is None else state))
                if read_track_file(self.track_file) != wanted:
                    write_error = self._write(int(wanted), write_error)
                if self.hold is not None:
                    self.hold.release_when_done()
                next_run += self.interval
                now = time.monotonic()
                if next_run < now:  # a slow round: start the next one now, keep the cadence after
                    next_run = now
                time.sleep(next_run - now)
        except Stopped as stop:
            if self.hold is not None:
                self.hold.clear()
            if self.fail_on_exit:
                if self._write(self.fail_value, None) is None:
                    log(f"stopped by {stop.signame}: wrote {self.fail_value} to "
                        f"{self.track_file}")
            else:
                log(f"stopped by {stop.signame}: left {self.track_file} as it was")
            return 0

