"""The managed nginx: start it as a child, validate, apply a configuration safely, stop it.

Applying a configuration:

    write a temporary file -> nginx -t against the full configuration with it -> os.replace into
    place -> SIGHUP the master (after checking the pid is our child and an nginx master) ->
    wait until nginx serves the new configuration's generation -> done

and on any failure after the replace, the previous file goes back and nginx is reloaded with it.
nginx only ever reads a file that passed `nginx -t`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from agent.core import logs
from agent.core.files import write_atomic
from agent.gateway.metrics import StubStatus
from agent.gateway.render import render_main_conf
from agent.gateway.settings import GatewaySettings

log = logging.getLogger("agent.gateway.nginx")

_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


class ApplyError(RuntimeError):
    """Applying a configuration failed at `stage`; what was serving before still serves."""

    def __init__(self, stage: str, message: str) -> None:
        self.stage = stage
        self.detail = message
        super().__init__(f"{stage}: {message}")


class NginxDied(RuntimeError):
    """The nginx master exited while the agent was running (fatal: the task restarts)."""


# `server NAME resolve` in upstreams (1.27.3) and keepalive_min_timeout (1.27.4)
MINIMUM_VERSION = (1, 27, 4)


class NginxTooOld(RuntimeError):
    """The nginx binary is missing or older than MINIMUM_VERSION (fatal, with what was found)."""


def nginx_version(binary: str) -> tuple[int, int, int]:
    """The version `binary -v` reports; NginxTooOld when it is older than the gateway needs."""
    need = ".".join(map(str, MINIMUM_VERSION))
    try:
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10,
                             check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NginxTooOld(f"cannot run {binary}: {exc}; the gateway needs nginx {need} or "
                          "newer") from None
    said = (out.stderr + out.stdout).strip()
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", said)
    if m is None:
        raise NginxTooOld(f"{binary} -v said {said[:120]!r}, not a version; the gateway needs "
                          f"nginx {need} or newer")
    found = (int(m[1]), int(m[2]), int(m[3]))
    if found < MINIMUM_VERSION:
        where = shutil.which(binary) or binary
        raise NginxTooOld(f"{where} is nginx {'.'.join(map(str, found))}; the gateway needs "
                          f"nginx {need} or newer (upstream `server ... resolve` and "
                          "keepalive_min_timeout); scripts/setup.sh installs one, the image "
                          "has one")
    return found


@dataclass(frozen=True)
class Layout:
    """Where nginx's files are, for a private prefix or the system's /etc/nginx."""

    main_conf: Path
    routes_conf: Path
    prefix: Path | None
    # the line of the system nginx.conf that pulls in the routes file; the test config points
    # it at the candidate instead
    include_line: str | None = None

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> Layout:
        if settings.nginx_prefix is not None:
            prefix = settings.nginx_prefix.absolute()
            return cls(prefix / "nginx.conf", prefix / "conf.d" / "gateway.conf", prefix)
        conf_dir = settings.nginx_conf_dir
        return cls(conf_dir / "nginx.conf", conf_dir / "conf.d" / "default.conf", None,
                   include_line=f"include {conf_dir}/conf.d/*.conf;")


def _accepting(workers: set[int]) -> list[int]:
    """Those of `workers` that still run and are not shutting down (their title, in /proc)."""
    busy = []
    for pid in sorted(workers):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # exited
        if b"shutting down" not in title and b"nginx" in title:
            busy.append(pid)
    return busy


class Nginx:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.layout = Layout.from_settings(settings)
        self.binary = settings.nginx_binary
        self.process: asyncio.subprocess.Process | None = None
        self.generation: str | None = None  # what nginx serves now, as verified
        self._status_url = f"http://{settings.status_listen}"
        self._session: aiohttp.ClientSession | None = None
        self._relay: threading.Thread | None = None  # nginx's stderr to the JSON log

    # -- files -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the private prefix (directories, main nginx.conf); nothing for system mode."""
        layout = self.layout
        if layout.prefix is None:
            return
        for sub in ("conf.d", "logs", *(f"temp/{d}" for d in _TEMP_DIRS)):
            (layout.prefix / sub).mkdir(parents=True, exist_ok=True)
        write_atomic(layout.main_conf, render_main_conf(
            prefix=layout.prefix, routes_conf=layout.routes_conf,
            worker_processes=self.settings.worker_processes,
            access_log=self.settings.access_log_metrics))

    def live_text(self) -> str | None:
        try:
            return self.layout.routes_conf.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def _base_args(self) -> list[str]:
        args = [self.binary, "-e", "stderr", "-c", str(self.layout.main_conf)]
        if self.layout.prefix is not None:
            args[1:1] = ["-p", str(self.layout.prefix) + "/"]
        return args

    async def validate(self, text: str) -> None:
        """Run `nginx -t` on the full configuration with `text` as the routes file."""
        layout = self.layout
        directory = layout.routes_conf.parent
        candidate = ""
        try:
            fd, candidate = tempfile.mkstemp(prefix=".candidate.", suffix=".conf.tmp",
                                             dir=directory)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            if candidate:  # created, then the disk was full: leave nothing behind
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(candidate)
            raise ApplyError("write", f"cannot write a candidate in {directory}: {exc}") from exc
        test_conf: str | None = None
        try:
            main = layout.main_conf.read_text(encoding="utf-8")
            if layout.prefix is not None:
                main = main.replace(f"include {layout.routes_conf};", f"include {candidate};")
            else:
                assert layout.include_line is not None
                if layout.include_line not in main:
                    raise ApplyError("validate", f"{layout.main_conf} does not contain "
                                     f"{layout.include_line!r}; cannot test the routes file")
                main = main.replace(layout.include_line, f"include {candidate};")
            fd, test_conf = tempfile.mkstemp(prefix=".test.", suffix=".conf.tmp",
                                             dir=layout.main_conf.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(main)
            args = self._base_args()
            args[args.index("-c") + 1] = test_conf
            try:
                proc = await asyncio.create_subprocess_exec(
                    *args, "-t", "-q", stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT)
            except OSError as exc:
                raise ApplyError("validate", f"cannot run {self.binary}: {exc}") from exc
            out, _ = await proc.communicate()
            if proc.returncode != 0:
                said = out.decode(errors="replace").replace(candidate, str(layout.routes_conf))
                said = " ".join(line.removeprefix("nginx: ").strip()
                                for line in said.splitlines() if line.strip())
                raise ApplyError("validate", f"nginx -t said: {said}")
        except OSError as exc:
            raise ApplyError("write", str(exc)) from exc
        finally:
            for path in (candidate, test_conf):
                if path:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)

    # -- the process -------------------------------------------------------------------------

    async def start(self) -> None:
        # with JSON logs nginx's own lines go through the log too (agent.core.logs.relay_nginx);
        # with text logs nginx writes to the agent's stderr itself, as it always did
        read_end, write_end = os.pipe() if self.settings.log_format == "json" else (-1, -1)
        try:
            # its own process group, so that kill_leftovers() can reach workers it orphans
            self.process = await asyncio.create_subprocess_exec(
                *self._base_args(), "-g", "daemon off; master_process on;",
                start_new_session=True, stderr=write_end if write_end >= 0 else None)
        except OSError as exc:
            if read_end >= 0:
                os.close(read_end)
            raise NginxDied(f"cannot start {self.binary}: {exc}") from exc
        finally:
            if write_end >= 0:
                os.close(write_end)
        if read_end >= 0:
            self._relay = logs.relay_nginx(read_end, log)
        log.info("nginx_started pid=%d", self.process.pid)

    def kill_leftovers(self) -> None:
        """After the master died: nginx leaves its workers running, still holding the ports
        and serving the old configuration. End them with it (they share its process group)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        if self._relay is not None:  # nginx's last words (why it died) into the log
            self._relay.join(1.0)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def _check_master(self) -> int:
        """The pid to signal, after making sure it is our child and an nginx master."""
        proc = self.process
        if proc is None or proc.returncode is not None:
            raise ApplyError("reload", "nginx is not running")
        try:
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        except OSError as exc:
            raise ApplyError("reload", f"cannot read nginx's pid {proc.pid}: {exc}") from exc
        if b"nginx" not in cmdline:
            raise ApplyError("reload", f"pid {proc.pid} is not an nginx master: {cmdline[:80]!r}")
        return proc.pid

    async def wait_serving(self, generation: str, within: float = 10.0) -> None:
        """Until nginx's status listener says `generation`: the new workers serve."""
        deadline = time.monotonic() + within
        last = "no answer"
        while True:
            got = await self._get("/generation")
            if got is not None and got.strip() == generation:
                self.generation = generation
                return
            last = repr(got.strip()) if got is not None else "no answer"
            if not self.running:
                raise ApplyError("verify", "nginx exited")
            if time.monotonic() > deadline:
                raise ApplyError("verify", f"nginx still serves generation {last} after "
                                 f"{within:.0f}s, expected {generation!r}")
            await asyncio.sleep(0.02)

    def _workers(self, master: int) -> set[int]:
        """The master's children (its worker processes), from /proc."""
        try:
            text = Path(f"/proc/{master}/task/{master}/children").read_text()
            return {int(p) for p in text.split()}
        except OSError:
            pass
        children = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rpartition(")")[2].split()[1]) == master:
                    children.add(int(entry.name))
        return children

    async def _old_workers_stop_accepting(self, old: set[int], within: float = 5.0) -> None:
        """Until every worker of the previous configuration is gone or shutting down.

        A worker that got the quit signal renames itself "... is shutting down" and closes its
        listening sockets: from then on only workers of the new configuration accept requests.
        """
        deadline = time.monotonic() + within
        while True:
            busy = _accepting(old)
            if not busy:
                return
            if time.monotonic() > deadline:
                raise ApplyError("verify", f"old nginx workers {busy} still accept requests "
                                 f"{within:.0f}s after the reload")
            await asyncio.sleep(0.005)

    async def reload(self, generation: str) -> None:
        master = self._check_master()
        old = self._workers(master)
        os.kill(master, signal.SIGHUP)
        await self.wait_serving(generation)
        await self._old_workers_stop_accepting(old)

    async def apply(self, text: str, generation: str) -> None:
        """Validate, put in place, reload, verify; on failure restore what was there."""
        await self.validate(text)
        previous = self.live_text()
        previous_generation = self.generation
        try:
            write_atomic(self.layout.routes_conf, text)
        except OSError as exc:
            raise ApplyError("write", f"{self.layout.routes_conf}: {exc}") from exc
        if not self.running:
            return  # first write before start: nginx reads it when it starts
        try:
            await self.reload(generation)
        except ApplyError as exc:
            # what the rollback did goes into the one error the caller logs and counts
            undone = "nothing to roll back to"
            if previous is not None:
                try:
                    write_atomic(self.layout.routes_conf, previous)
                    if self.running and previous_generation is not None:
                        await self.reload(previous_generation)
                    undone = "rolled back to the previous configuration"
                except (ApplyError, OSError) as undo:
                    undone = f"rolling back failed too: {undo}"
            raise ApplyError(exc.stage, f"{exc.detail}; {undone}") from exc

    async def stop(self, grace: float = 30.0) -> int | None:
        """Graceful quit (SIGQUIT: requests in flight finish), then the exit status."""
        proc = self.process
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGQUIT)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                log.warning("nginx_quit_timeout seconds=%.0f killing=true", grace)
                proc.kill()
                await proc.wait()
        if self._relay is not None:  # the lines nginx wrote as it quit
            await asyncio.to_thread(self._relay.join, 2.0)
        if self._session is not None:
            await self._session.close()
        return proc.returncode

    # -- the status listener -----------------------------------------------------------------

    async def _get(self, path: str) -> str | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=1.0),
                connector=aiohttp.TCPConnector(force_close=True))
        try:
            async with self._session.get(self._status_url + path) as resp:
                if resp.status != 200:
                    return None
                return await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def stub_status(self) -> StubStatus | None:
        text = await self._get("/stub_status")
        if text is None:
            return None
        try:
            return StubStatus.parse(text)
        except ValueError:
            return None
