"""A stand-in for nginx's workers appending to an access-log file, for the agent's readers of
those files (drivers/logfile.py): the writing and the holding are real (a file descriptor, a
child process keeping it open), only nginx is not there."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


class NginxWriter:
    """Appends lines to the file like nginx: its own descriptor, held open by a child process
    (nginx's worker, for the reader's "does nginx still hold it" check) until a reopen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reopens = 0
        self.fd = -1
        self.worker: subprocess.Popen[bytes] | None = None
        self._open()

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.worker = subprocess.Popen(["sleep", "60"], pass_fds=[self.fd])

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def pids(self) -> set[int]:
        return {self.worker.pid} if self.worker is not None else set()

    def reopen(self) -> None:
        self.reopens += 1
        self.let_go()
        self._open()

    def let_go(self) -> None:
        os.close(self.fd)
        if self.worker is not None:
            self.worker.kill()
            self.worker.wait()
            self.worker = None
