"""nginx.conf of a private nginx (--nginx-prefix): what the nginx driver writes once at start
and again to drain (drivers/nginx.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agent import __version__
from agent.gateway.plan.filters import TEMPLATES, environment


def render_main_conf(*, prefix: Path, routes_conf: Path, worker_processes: str,
                     access_log: bool = False, modules: Sequence[Path] = (),
                     stream_conf: Path | None = None, closing: bool = False,
                     open_files: int = 4096, worker_connections: int = 4096) -> str:
    """nginx.conf for a private nginx under `prefix` (--nginx-prefix). With `access_log` the
    routes file sets the http-level access logs (the metrics' lines for the agent, the JSON
    log), else this file turns nginx's default one off: an `access_log off` here would silence
    those of the routes file too, the two being the same http level. `modules`: dynamic
    modules' files (gateway/modules.py); `stream_conf`: the stream context's file (tcp routes);
    `closing`: draining, no kept-alive connections (drain.py); `open_files`,
    `worker_connections`: per worker (drivers/capacity.py)."""
    template = environment(TEMPLATES).get_template("nginx.conf.j2")
    return template.render(version=__version__, prefix=str(prefix), routes_conf=str(routes_conf),
                           worker_processes=worker_processes, access_log=access_log,
                           modules=[str(m) for m in modules], closing=closing,
                           open_files=open_files, worker_connections=worker_connections,
                           stream_conf=str(stream_conf) if stream_conf else None)
