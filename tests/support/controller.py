"""`gateway-agent controller` as a process on loopback, reading a fake Docker API."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support import free_port, wait_until
from tests.support.fakedocker import FakeDocker
from tests.support.gateway import http_get


class ControllerProcess:
    """`gateway-agent controller` on loopback, reading `docker`."""

    def __init__(self, workdir: Path, docker: FakeDocker, extra: Sequence[str] = (),
                 token: str | None = None) -> None:
        self.token = token  # shown on every request but /healthz (--controller-token-file)
        self.port = free_port()
        self.workdir = workdir
        self.log_file = workdir / "controller.log"
        self.args = [sys.executable, "-m", "agent", "controller", "--docker-url", docker.url,
                     "--controller-listen", f"127.0.0.1:{self.port}", "--log-level", "debug",
                     *extra]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/routes"

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=self.log_file.open("ab"),
                                     stderr=subprocess.STDOUT,
                                     cwd=Path(__file__).resolve().parents[2])
        wait_until(lambda: self.get("/readyz")[0] == 200, 20,
                   f"the controller to be ready; log:\n{self.log()}", interval=0.05)

    def get(self, path: str, token: str | None = None) -> tuple[int, str]:
        """GET with `token`, or this controller's own (the every-zone token)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"controller exited {self.proc.returncode}:\n{self.log()}")
        token = token or self.token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            status, body, _ = http_get(self.port, "localhost", path, headers=headers)
        except OSError:
            return 0, ""
        return status, body

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.get("/status")[1]))

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
